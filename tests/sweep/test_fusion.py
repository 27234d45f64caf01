"""Which trials train fused: the spec's ``fuse`` key, the groups, the in-group halving."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bopsweep.errors import UserError
from bopsweep.sweep.fusion import plan_groups, record_gains
from bopsweep.sweep.spec import expand, load_spec
from bopsweep.sweep.trainable import SuccessiveHalving

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]

SPEC = """\
name: t
train:
  model: {model}
  dataset: digits
  hparams_set: bop
  device: cpu
parameters:
  hparams.threshold:
    values: [0, 1e-6, 1e-5]
  hparams.gamma:
    values: [1e-2, 1e-3, 1e-4]
{extra}
"""


@pytest.fixture(autouse=True)
def shipped_gains(tmp_path, monkeypatch):
    """No measurement of this machine: the shipped figures decide."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def groups(tmp_path: Path, overrides=(), model="mlp", extra="", cpus=2, gpus=None):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(model=model, extra=extra))
    loaded = load_spec(path, list(overrides))
    return plan_groups(loaded.spec, expand(loaded), cpus=cpus, gpus=gpus)


def sizes(planned) -> list[int]:
    return [len(g.trials) for g in planned]


def test_auto_fuses_the_mlp_on_cpu_into_one_group_per_cpu_slot(tmp_path):
    planned = groups(tmp_path)
    assert sizes(planned) == [5, 4]
    assert [g.dirname for g in planned] == ["fused_000", "fused_005"]
    assert [t.index for t in planned[1].trials] == [5, 6, 7, 8]
    assert sizes(groups(tmp_path, cpus=1)) == [9]
    assert sizes(groups(tmp_path, ["max_concurrent_trials=3"], cpus=8)) == [3, 3, 3]


def test_auto_keeps_models_that_fusion_does_not_speed_up_on_cpu_apart(tmp_path):
    planned = groups(tmp_path, ["train.dataset=synthetic"], model="binarynet")
    assert sizes(planned) == [1] * 9
    assert planned[0].dirname == "trial_000"


def test_auto_follows_this_machines_own_measurement(tmp_path):
    record_gains("cpu", {"binarynet": 2.5, "mlp": 1.0})
    assert sizes(groups(tmp_path, ["train.dataset=synthetic"], model="binarynet")) == [5, 4]
    assert sizes(groups(tmp_path)) == [1] * 9
    record_gains("cuda", {"mlp": 3.0})
    assert sizes(groups(tmp_path)) == [1] * 9  # a CUDA figure says nothing of the CPU


GPU_TRIALS = ["train.device=auto", "resources.cpu=1"]


def test_gpu_trials_are_grouped_by_gpu_shares_not_cpus(tmp_path):
    record_gains("cuda", {"mlp": 3.0})
    # Four trials of a quarter GPU run at once on one GPU, whatever the CPUs.
    quarter = [*GPU_TRIALS, "resources.gpu=0.25"]
    assert sizes(groups(tmp_path, quarter, cpus=32, gpus=1)) == [3, 2, 2, 2]
    assert sizes(groups(tmp_path, quarter, cpus=2, gpus=1)) == [5, 4]  # CPUs bound too
    assert sizes(groups(tmp_path, quarter, cpus=32, gpus=2)) == [2, 1, 1, 1, 1, 1, 1, 1]
    # Whole GPUs: one group per GPU; ten trials of 0.1 fit on one GPU.
    whole = [*GPU_TRIALS, "resources.gpu=1"]
    assert sizes(groups(tmp_path, whole, cpus=32, gpus=1)) == [9]
    assert sizes(groups(tmp_path, whole, cpus=32, gpus=3)) == [3, 3, 3]
    tenth = [*GPU_TRIALS, "resources.gpu=0.1"]
    assert sizes(groups(tmp_path, tenth, cpus=32, gpus=1)) == [1] * 9
    # A driver without GPUs (planning for a cluster) falls back on its CPUs.
    assert sizes(groups(tmp_path, quarter, cpus=3, gpus=0)) == [3, 3, 3]


def test_the_gpu_slots_are_counted_in_fixed_point():
    from bopsweep.sweep.fusion import concurrent_slots
    from bopsweep.sweep.spec import SweepSpec

    def slots(gpu: float, gpus: int, cpus: int = 64) -> int:
        spec = SweepSpec.model_validate(
            {"name": "t", "train": {"model": "mlp"}, "resources": {"cpu": 1, "gpu": gpu}}
        )
        return concurrent_slots(spec, cpus=cpus, gpus=gpus)

    assert [slots(0.1, 1), slots(0.3, 1), slots(1 / 3, 1), slots(0.25, 3)] == [10, 3, 3, 12]
    assert slots(0.5, 8, cpus=4) == 4


def test_gpu_trials_stay_unfused_under_auto_until_measured_on_a_gpu(tmp_path):
    quarter = [*GPU_TRIALS, "resources.gpu=0.25"]
    assert sizes(groups(tmp_path, quarter, cpus=32, gpus=1)) == [1] * 9
    assert sizes(groups(tmp_path, [*quarter, "fuse=3"], cpus=32, gpus=1)) == [3, 3, 3]


def test_an_explicit_size_and_off(tmp_path):
    assert sizes(groups(tmp_path, ["fuse=4"])) == [3, 3, 3]
    assert sizes(groups(tmp_path, ["fuse=9"])) == [9]
    assert sizes(groups(tmp_path, ["fuse=off"])) == [1] * 9
    assert sizes(groups(tmp_path, ["fuse=1"])) == [1] * 9
    # YAML reads a bare `off` as false.
    assert sizes(groups(tmp_path, extra="fuse: off")) == [1] * 9
    assert sizes(groups(tmp_path, ["fuse=9", "train.dataset=synthetic"], model="binarynet")) == [9]


def test_only_trials_that_differ_in_member_values_share_a_group(tmp_path):
    overrides = ["fuse=100", "seeds=[0,1]", "parameters.hparams.batch_size.values=[32,64]"]
    planned = groups(tmp_path, overrides)
    for group in planned:
        batch = {t.train.resolved_hparams().batch_size for t in group.trials}
        assert len(batch) == 1
    assert sizes(planned) == [18, 18]
    assert {t.train.seed for t in planned[0].trials} == {0, 1}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        # HyperBand pauses trials, median stopping compares them.
        (["scheduler={type: hyperband}"], "scheduler: hyperband pauses and compares"),
        (["scheduler={type: median}"], "scheduler: median compares single trials"),
        (["early_terminate={type: hyperband, min_iter: 1}"], "W&B's hyperband) compares"),
        (["train.hparams.optimizer=bop2_unbiased", "fuse=9"], "bop2_unbiased has no fused"),
        (["train.compile=true", "fuse=9"], "compile: true compiles one model per trial"),
    ],
)
def test_what_needs_single_trials_runs_alone_and_says_why(tmp_path, overrides, reason):
    planned = groups(tmp_path, overrides)
    assert sizes(planned) == [1] * 9
    assert all(reason in g.alone for g in planned)


def test_what_works_inside_a_group_keeps_groups(tmp_path):
    # ASHA's rungs run inside a group; each member's models are its own.
    assert sizes(groups(tmp_path, ["scheduler={type: asha}"])) == [5, 4]
    assert sizes(groups(tmp_path, ["tracking.models=[final, best]"])) == [5, 4]
    assert all(g.alone is None for g in groups(tmp_path, ["fuse=off"]))


def test_a_bad_fuse_value_is_one_line_naming_the_choices(tmp_path):
    with pytest.raises(UserError, match=r"fuse: fuse takes auto, off or a group size.*got 0"):
        groups(tmp_path, ["fuse=0"])


def test_plan_shows_the_groups(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(model="mlp", extra="fuse: 5"))
    result = subprocess.run(
        [str(BIN / "bopsweep"), "plan", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "fused_000" in result.stdout and "fused_005" in result.stdout
    assert "9 trials in 2 Ray trials" in result.stdout


def test_successive_halving_keeps_the_best_at_each_rung():
    halving = SuccessiveHalving(grace_period=1, reduction_factor=2, max_t=8, mode="max")
    assert halving.rungs == {1, 2, 4}
    values = {0: 0.5, 1: 0.9, 2: float("nan"), 3: 0.7}
    assert halving.losers(1, values) == [0, 2]
    assert halving.losers(3, values) == []  # not a rung
    assert halving.losers(2, {1: 0.9, 3: 0.7}) == [3]
    assert halving.losers(4, {1: 0.9}) == []
    minimize = SuccessiveHalving(1, 3, 9, "min")
    assert minimize.losers(1, {0: 0.1, 1: 0.3, 2: 0.2}) == [1, 2]
