"""The one model of a sweep's result: ranking, summary figures and links mean the
same in the runner, the report, sync, the CLI and the live table."""

from __future__ import annotations

import math

from bopsweep.sweep.outcome import SweepOutcome, TrialOutcome


def _trial(index: int, accuracies: list[float], flips: list[float], status="FINISHED"):
    trial = TrialOutcome(index, {"hparams.gamma": 10.0**-index}, status)
    for step, (acc, flip) in enumerate(zip(accuracies, flips, strict=True)):
        trial.record("val_accuracy", step, acc)
        trial.record("flip_ratio", step, flip)
    return trial


def _outcome(mode: str = "max", uri: str = "sqlite:///x.db") -> SweepOutcome:
    outcome = SweepOutcome("s", "val_accuracy", mode, uri, "7", "parent")
    outcome.trials = [
        _trial(0, [0.5, 0.9, 0.7], [0.1, 0.2, 0.3]),
        _trial(1, [0.6, 0.8], [0.0, 0.0]),
        _trial(2, [], [], status="FAILED"),
        _trial(3, [0.9, 0.6], [0.4, 0.2]),
    ]
    return outcome


def test_trials_rank_by_their_best_value_nan_last_ties_by_final_value_then_index():
    outcome = _outcome()
    assert [t.index for t in outcome.ranked()] == [0, 3, 1, 2]  # 0.9 (final 0.7), 0.9 (0.6)
    assert outcome.best.index == 0
    # min: 0.5; then 0.6 twice: trial 3 ends at 0.6, trial 1 at 0.8
    assert [t.index for t in _outcome("min").ranked()] == [0, 3, 1, 2]
    outcome.trials.append(_trial(4, [0.9, 0.7], [0.1, 0.1]))  # trial 0's best and final
    assert [t.index for t in outcome.ranked()] == [0, 4, 3, 1, 2]


def test_summary_figures_of_a_trial_and_of_the_sweep():
    outcome = _outcome()
    first = outcome.trials[0]
    assert first.final("val_accuracy") == 0.7 and first.best("val_accuracy", "max") == 0.9
    assert math.isclose(first.mean_flip_ratio, 0.2) and first.epochs("val_accuracy") == 3
    assert math.isnan(outcome.trials[2].final("val_accuracy"))
    assert outcome.summary_metrics() == {
        "best_val_accuracy": 0.9,
        "best_final_val_accuracy": 0.7,
        "best_mean_flip_ratio": first.mean_flip_ratio,
    }
    assert outcome.counts() == {"FINISHED": 3, "FAILED": 1, "KILLED": 0}
    assert [t.index for t in outcome.failed] == [2]


def test_a_step_recorded_again_replaces_the_old_value_in_step_order():
    trial = TrialOutcome(0, {})
    for step, value in ((0, 0.1), (1, 0.2), (2, 0.3), (1, 0.25)):
        trial.record("val_accuracy", step, value)
    assert trial.history["val_accuracy"] == [(0, 0.1), (1, 0.25), (2, 0.3)]


def test_links_point_at_the_ui_for_a_server_and_are_run_ids_for_a_local_store():
    local = _outcome()
    assert local.run_link("abc") == "abc" and local.experiment_url() is None
    server = _outcome(uri="http://127.0.0.1:5000/")
    assert server.run_link("abc") == "http://127.0.0.1:5000/#/experiments/7/runs/abc"
    assert server.experiment_url() == (
        "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    )
    assert server.parent_link.endswith("/runs/parent")
