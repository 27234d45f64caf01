"""A trial's checkpoint policy, and a group's report to Ray Tune when members had
finished before a restart.

A driver that dies after a member's run ended FINISHED but before Ray's last snapshot
of the sweep restarts the whole group: that member is frozen (not trained again), and
the group reports its run's final metrics for it.
"""

from __future__ import annotations

import time

import pytest
import torch

from bopsweep.bnn.fused import member_state_dict
from bopsweep.config import make_train_config
from bopsweep.data import load_dataset
from bopsweep.sweep.contract import (
    MEMBER_ERROR_KEY,
    MEMBER_STATUS_KEY,
    Member,
    SweepContext,
    TrialGroup,
    member_results,
)
from bopsweep.sweep.trainable import COMPLETED, CheckpointPolicy, ReportToTune
from bopsweep.train import Callback, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SWEEP = SweepContext("sqlite:///unused.db", "0", "parent")
# The members' trial indices in the sweep are 3 and 4.
GROUP = TrialGroup(3, "fused_003", "fused_003", (Member(3, "a", {}, {}), Member(4, "b", {}, {})))
# What the finished member's MLflow run holds (its last epoch).
FINAL = {"epoch": 1, "val_accuracy": 0.999, "train_loss": 0.01}


class _Metrics(Callback):
    def on_epoch_end(self, trainer: Trainer, metrics: list) -> None:
        self.metrics = metrics


def _trainer() -> Trainer:
    configs = [
        make_train_config(
            model="mlp",
            dataset="digits",
            hparams_set="bop",
            hparams={"gamma": gamma},
            epochs=2,
            device="cpu",
        )
        for gamma in (1e-3, 1e-4)
    ]
    return Trainer(configs, load_dataset("digits"), device=torch.device("cpu"))


def _report(completed: dict[int, dict]) -> ReportToTune:
    timings = {"train_s": 0.0, "drain_s": 0.0}
    return ReportToTune({}, GROUP, SWEEP, timings, completed)


def test_a_member_finished_before_a_restart_is_frozen_and_reported_as_its_run_ended():
    trainer = _trainer()
    trainer.stop(0, COMPLETED)
    # Its weights, BatchNorm statistics and biases (the group's one step counter,
    # num_batches_tracked, is shared by every member).
    before = {k: v.clone() for k, v in member_state_dict(trainer.model, 0).items() if v.dim()}
    seen = _Metrics()
    trainer.epochs = 1
    trainer.fit([seen])

    after = member_state_dict(trainer.model, 0)
    assert all(torch.equal(before[k], after[k]) for k in before), "member 0 was trained"
    assert seen.metrics[0] is None and seen.metrics[1] is not None

    result = _report({0: FINAL}).result(trainer, seen.metrics)
    parts = member_results(GROUP.as_config(), result)
    assert parts[3] == FINAL
    assert parts[4]["val_accuracy"] == seen.metrics[1]["val_accuracy"]
    assert MEMBER_STATUS_KEY not in parts[4]
    assert result["val_accuracy"] == FINAL["val_accuracy"]  # the group's best member


def test_a_completed_member_restored_from_a_checkpoint_is_finished_not_failed():
    trainer = _trainer()
    trainer.stop(0, COMPLETED)
    restored = _trainer()
    restored.load_state_dict(trainer.state_dict())
    assert restored.stopped == {0: COMPLETED}

    result = _report({}).result(restored, [None, None])
    parts = member_results(GROUP.as_config(), result)
    assert parts[3][MEMBER_STATUS_KEY] == "FINISHED"
    assert MEMBER_ERROR_KEY not in parts[3]


def test_only_the_last_epoch_when_epochs_are_quick():
    policy = CheckpointPolicy(every=None, every_s=60.0)
    assert [policy.due(e, e == 5) for e in range(1, 6)] == [False] * 4 + [True]


def test_elapsed_time_and_epoch_count_trigger_checkpoints():
    policy = CheckpointPolicy(every=None, every_s=0.05)
    assert not policy.due(1, False)
    time.sleep(0.06)
    assert policy.due(2, False)
    policy.taken()
    assert not policy.due(3, False)
    every_two = CheckpointPolicy(every=2, every_s=None)
    assert [every_two.due(e, False) for e in range(1, 5)] == [False, True, False, True]


def test_ray_tune_sees_the_groups_top_values_only():
    """Ray Tune keeps statistics of every numeric value of a result (nested ones
    flattened) and writes them into every snapshot of the sweep: the members' parts
    reach it as one text, read back whole by member_results, floats bit for bit."""
    from ray.tune.utils import flatten_dict

    from bopsweep.sweep.contract import group_result

    parts = {3: {"val_accuracy": 0.1 + 0.2, "series": [[0, -5.25]]}, 4: {"val_accuracy": 0.5}}
    result = group_result(parts, 0, list(parts.values()), "val_accuracy", "max")
    numeric = {k for k, v in flatten_dict(result).items() if isinstance(v, (int, float))}
    assert numeric == {"epoch", "val_accuracy"}
    assert member_results(GROUP.as_config(), result) == parts
    # A result saved before (the parts as a nested dict) reads the same.
    nested = {**result, "members": {"3": parts[3], "4": parts[4]}}
    assert member_results(GROUP.as_config(), nested) == parts
