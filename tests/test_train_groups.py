"""A group of K > 1 members (one stacked model) against K runs of one member each.

* A fused member gets the metrics its own run gets: the same keys, and in the first
  epoch the same values within float tolerance (the fused BatchNorm and matmuls
  round differently in the last bits; at threshold 0 Bop flips on the sign of m, so
  there any rounding can change a flip: those members are compared over the grid).
* Over 3 seeds, the section 5.1 grid on digits ends with the same accuracies and the
  same flip-ratio trends fused as unfused.
* A member that diverges is frozen and the others go on; a group resumes from its
  state dict to exactly the histories of an uninterrupted run.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from bopsweep.bnn.fused import member_state_dict
from bopsweep.config import make_train_config
from bopsweep.data import load_dataset
from bopsweep.errors import UserError
from bopsweep.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
THRESHOLDS = (0.0, 1e-6, 1e-5)
GAMMAS = (1e-2, 1e-3, 1e-4)
TIMING_KEYS = {"epoch_time_s", "samples_per_s"}


def _config(threshold: float, gamma: float, epochs: int, seed: int = 0, **hparams):
    return make_train_config(
        model="mlp",
        dataset="digits",
        hparams_set="bop",
        hparams={"threshold": threshold, "gamma": gamma, **hparams},
        epochs=epochs,
        seed=seed,
        device="cpu",
    )


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _assert_close(actual, expected, key: str) -> None:
    """A metric of a member against its own run's: a number, or a per-step series
    (the same steps, the values within tolerance)."""
    if isinstance(expected, list):
        assert [step for step, _ in actual] == [step for step, _ in expected], key
        actual, expected = [v for _, v in actual], [v for _, v in expected]
    assert actual == pytest.approx(expected, rel=1e-4, abs=1e-6), key


def _grid(epochs: int, seeds=(0,)):
    return [_config(t, g, epochs, s) for s in seeds for t in THRESHOLDS for g in GAMMAS]


def test_first_epoch_of_each_member_is_its_own_run(digits):
    configs = _grid(1)
    fused = Trainer(configs, digits, device=CPU)
    histories = fused.fit()
    for config, history in zip(configs, histories, strict=True):
        own = Trainer(config, digits, device=CPU).fit()[0][0]
        assert set(history[0]) == set(own)
        threshold = config.resolved_hparams().threshold
        for key, value in own.items():
            if key in TIMING_KEYS or (threshold == 0.0 and key != "epoch"):
                continue
            _assert_close(history[0][key], value, key)


def test_the_grid_agrees_fused_and_unfused_over_three_seeds(digits):
    seeds, epochs = (0, 1, 2), 4
    configs = _grid(epochs, seeds)
    # All 27 runs in one group: members with different seeds draw their own batches.
    fused = Trainer(configs, digits, device=CPU).fit()
    alone = [Trainer(c, digits, device=CPU).fit()[0] for c in configs]

    def per_config(histories, key):
        values: dict[tuple, list[float]] = {}
        for config, history in zip(configs, histories, strict=True):
            hp = config.resolved_hparams()
            values.setdefault((hp.threshold, hp.gamma), []).append(
                statistics.fmean(m[key] for m in history)
                if key == "flip_ratio"
                else history[-1][key]
            )
        return {k: statistics.fmean(v) for k, v in values.items()}

    accuracy = per_config(fused, "val_accuracy"), per_config(alone, "val_accuracy")
    for key in accuracy[1]:
        assert accuracy[0][key] == pytest.approx(accuracy[1][key], abs=0.04), key
    flips = per_config(fused, "flip_ratio"), per_config(alone, "flip_ratio")
    for flip in flips:
        # Section 5.1's trends: more flips with a larger gamma, fewer with a larger threshold.
        for t in THRESHOLDS:
            assert flip[(t, 1e-2)] > flip[(t, 1e-3)] > flip[(t, 1e-4)]
        for g in GAMMAS:
            assert flip[(0.0, g)] > flip[(1e-5, g)]
    for key in flips[1]:
        assert math.log(flips[0][key]) == pytest.approx(math.log(flips[1][key]), abs=0.5), key


def test_a_diverging_member_is_frozen_and_the_others_go_on(digits):
    configs = [
        _config(1e-6, 1e-3, 2, fp_optimizer="sgd", lr=0.01),
        _config(1e-6, 1e-3, 2, fp_optimizer="sgd", lr=1e38),
    ]
    trainer = Trainer(configs, digits, device=CPU)
    histories = trainer.fit()
    assert "diverged" in trainer.stopped[1]
    assert len(histories[0]) == 2 and histories[1] == []
    own = Trainer(configs[0], digits, device=CPU).fit()[0]
    assert histories[0][-1]["val_accuracy"] == pytest.approx(own[-1]["val_accuracy"], abs=0.05)
    frozen = {k: v.clone() for k, v in member_state_dict(trainer.model, 1).items()}
    trainer.epochs = 3
    trainer.fit()
    for key, value in member_state_dict(trainer.model, 1).items():
        if value.dim() > 0:  # num_batches_tracked is one count for the whole group
            assert torch.equal(value, frozen[key]), key


def test_a_group_resumes_from_its_state_dict_exactly(digits):
    configs = [_config(1e-6, 1e-3, 3, seed=0), _config(1e-5, 1e-2, 3, seed=1, lr=0.02)]
    whole = Trainer(configs, digits, device=CPU)
    expected = whole.fit()
    first = Trainer([c.model_copy(update={}) for c in configs], digits, device=CPU)
    first.epochs = 1
    first.fit()
    state = first.state_dict()
    resumed = Trainer(configs, digits, device=CPU)
    resumed.load_state_dict(state)
    histories = resumed.fit()
    for got, want in zip(histories, expected, strict=True):
        assert [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in got] == [
            {k: v for k, v in m.items() if k not in TIMING_KEYS} for m in want
        ]


def test_configs_that_differ_beyond_member_values_do_not_fuse(digits):
    configs = [_config(1e-6, 1e-3, 2), _config(1e-6, 1e-3, 2, batch_size=64)]
    with pytest.raises(UserError, match="may differ only in"):
        Trainer(configs, digits, device=CPU)


def test_a_member_as_a_plain_model_computes_its_part_of_the_group(digits):
    configs = [_config(1e-6, 1e-3, 1, seed=0), _config(1e-5, 1e-2, 1, seed=1)]
    trainer = Trainer(configs, digits, device=CPU)
    trainer.fit()
    x, _ = next(iter(trainer.batches.val()))
    with torch.no_grad():
        fused = trainer.model.eval()(x, shared=True)
        for k in range(2):
            alone = trainer.member_model(k)(x)
            torch.testing.assert_close(alone, fused[k], rtol=1e-5, atol=1e-5)


def test_members_with_their_own_adam_epsilon_fuse_and_train_as_their_own_runs(digits):
    epsilons = (1e-8, 1e-7, 1e-2)
    configs = [_config(1e-6, 1e-3, 1, adam_epsilon=eps) for eps in epsilons]
    histories = Trainer(configs, digits, device=CPU).fit()
    for config, history, eps in zip(configs, histories, epsilons, strict=True):
        own = Trainer(config, digits, device=CPU)
        assert {group["eps"] for group in own.optimizer.fp.param_groups} == {eps}
        for key, value in own.fit()[0][0].items():
            if key not in TIMING_KEYS:
                _assert_close(history[0][key], value, key)
    # A large epsilon damps Adam's steps: the members did train differently.
    assert histories[0][0]["train_loss"] != histories[2][0]["train_loss"]
