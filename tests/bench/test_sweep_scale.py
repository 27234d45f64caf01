"""Bench section ``sweep_scale``: grids of one-epoch trials, their cost per trial
beyond the training."""

from __future__ import annotations

import pytest
import yaml

from bopsweep.bench import sweep_scale
from bopsweep.bench.common import FULL, QUICK
from bopsweep.sweep.spec import expand, load_spec

from .conftest import assert_numbers


@pytest.mark.parametrize("trials", FULL.scale_trials)
def test_each_grid_has_its_trial_count_of_one_epoch_digits_trials(tmp_path, trials):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(sweep_scale.grid_spec(trials)))
    expanded = expand(load_spec(path))
    assert len(expanded) == trials
    assert {(t.train.model, t.train.dataset, t.train.epochs) for t in expanded} == {
        ("mlp", "digits", 1)
    }
    # Every trial differs from the others.
    assert len({tuple(sorted(t.swept.items())) for t in expanded}) == trials


def test_a_count_that_is_no_grid_of_these_values_is_refused():
    with pytest.raises(ValueError, match="15 trials"):
        sweep_scale.grid_spec(15)


def test_a_sweeps_figures_come_from_its_timeline():
    timeline = {"trials.train_s": 20.0, "trials.setup_s": 4.0, "trials.drain_s": 2.0}
    figures = sweep_scale.point({**timeline, "driver_cpu_s": 5.0}, 30.0, 100, 7, 2, 40)
    assert figures["train_wall_s"] == 10.0  # summed over the Ray trials, on 2 slots
    assert figures["wall_vs_training"] == 3.0
    assert figures["per_trial"] == {
        "wall_ms": 300.0,
        "setup_ms": 40.0,
        "drain_ms": 20.0,
        "driver_cpu_ms": 50.0,
    }


def test_the_smoke_run_reads_sweep_overheads_run(quick_bench):
    result, results = quick_bench
    section = results["sections"]["sweep_scale"]
    assert section["run_by"] == "sweep_overhead"
    assert "targets" not in section  # a two-trial smoke run says nothing of 1,000 trials
    (sweep,) = section["sweeps"]
    assert sweep["trials"] == QUICK.sweep_trials
    assert_numbers(
        sweep,
        ["wall_s", "train_wall_s", "wall_vs_training", "per_trial.setup_ms", "terminal_lines"],
    )
    assert sweep["wall_s"] == results["sections"]["sweep_overhead"]["wall_s"]
    assert "sweep_scale" in result.stdout
