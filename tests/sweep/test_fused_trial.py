"""A fused group's report to Ray Tune when members had finished before a restart.

A driver that dies after a member's run ended FINISHED but before Ray's last snapshot
of the sweep restarts the whole group: that member is frozen (not trained again), and
the group reports its run's final metrics for it.
"""

from __future__ import annotations

import pytest
import torch

from bopsweep.bnn.fused import member_state_dict
from bopsweep.config import make_train_config
from bopsweep.data import load_dataset
from bopsweep.sweep.fused_trial import COMPLETED, _ReportGroupToTune
from bopsweep.sweep.ray_backend import MEMBER_ERROR_KEY, MEMBER_STATUS_KEY
from bopsweep.sweep.trainable import CheckpointPolicy
from bopsweep.train_fused import FusedCallback, FusedTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

SWEEP = {"metric": "val_accuracy", "mode": "max"}
INDICES = [3, 4]  # the members' trial indices in the sweep
# What the finished member's MLflow run holds (its last epoch).
FINAL = {"epoch": 1, "val_accuracy": 0.999, "train_loss": 0.01}


class _Metrics(FusedCallback):
    def on_epoch_end(self, trainer: FusedTrainer, metrics: list) -> None:
        self.metrics = metrics


def _trainer() -> FusedTrainer:
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
    return FusedTrainer(configs, load_dataset("digits"), device=torch.device("cpu"))


def _report(completed: dict[int, dict]) -> _ReportGroupToTune:
    policy = CheckpointPolicy(None, None)
    timings = {"train_s": 0.0, "drain_s": 0.0}
    return _ReportGroupToTune({}, INDICES, policy, timings, SWEEP, None, [], completed)


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

    result = _report({0: FINAL})._result(trainer, seen.metrics)
    assert result["members"]["3"] == FINAL
    assert result["members"]["4"]["val_accuracy"] == seen.metrics[1]["val_accuracy"]
    assert MEMBER_STATUS_KEY not in result["members"]["4"]
    assert result["val_accuracy"] == FINAL["val_accuracy"]  # the group's best member


def test_a_completed_member_restored_from_a_checkpoint_is_finished_not_failed():
    trainer = _trainer()
    trainer.stop(0, COMPLETED)
    restored = _trainer()
    restored.load_state_dict(trainer.state_dict())
    assert restored.stopped == {0: COMPLETED}

    result = _report({})._result(restored, [None, None])
    assert result["members"]["3"][MEMBER_STATUS_KEY] == "FINISHED"
    assert MEMBER_ERROR_KEY not in result["members"]["3"]
