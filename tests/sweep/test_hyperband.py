"""W&B's hyperband stopping as a Ray Tune scheduler stops the runs W&B's engine stops.

The cases are wandb/sweeps' own (tests/test_hyperband_stopping.py): each run's
history is reported epoch by epoch, then every running run is asked whether it
stops, as W&B's controller asks when it looks.
"""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from bopsweep.sweep.hyperband import WandbHyperBand
from bopsweep.sweep.spec import wandb_cut_points


def stopped(histories: dict[str, list[float]], running: set[str], mode="min", **terminate):
    eta = terminate.get("eta", 3)
    cut_points = wandb_cut_points(
        terminate.get("min_iter"), terminate.get("max_iter"), terminate.get("s"), eta
    )
    scheduler = WandbHyperBand(cut_points, eta, terminate.get("strict", True))
    scheduler.set_search_properties("loss", mode)
    for name, history in histories.items():
        trial = SimpleNamespace(trial_id=name)
        scheduler.on_trial_add(None, trial)
        for epoch, value in enumerate(history, start=1):
            scheduler.on_trial_result(None, trial, {"loss": value, "training_iteration": epoch})
    return sorted(name for name in running if scheduler.stops(name))


FIVE_RUNS = {
    "a": [10, 9],  # finished
    "b": [10, 10],
    "c": [10, 8, 8],
    "d": [10, 7, 7],
    "e": [10, 6, 6],  # finished
}


def test_5runs_band1_stop_2():
    # bands 1, 2; thresholds 10 (band 1) and 8 (band 2): b's 10 at band 2 is behind
    assert stopped(FIVE_RUNS, {"b", "c", "d"}, max_iter=5, eta=2, s=2) == ["b"]


def test_5runs_band1_stop_2_1stnoband():
    histories = {**FIVE_RUNS, "a": [10], "b": [11]}
    # strict (W&B's default): c's 8 at band 2 is behind the threshold 7
    assert stopped(histories, {"b", "c", "d"}, max_iter=5, eta=2, s=2) == ["b", "c"]


def test_eta_3():
    histories = {
        "a": [9, 8],
        "b": [11, 11],
        "c": [10, 8, 3],  # fails the first threshold but its best passes the second
        "d": [10, 7, 4],
        "e": [10, 6, 6],  # passes band 1, not band 3
    }
    running = {"b", "c", "d", "e"}
    assert stopped(histories, running, max_iter=9, eta=3, s=2, strict=False) == ["b", "e"]


def test_eta_3_max():
    histories = {
        "a": [-10, -9],
        "b": [-11, -11],
        "c": [-10, -8, -5, -3],
        "d": [-10, -6, -2],
        "e": [-10, -6, -6, -6],
    }
    running = {"b", "c", "d", "e"}
    assert stopped(histories, running, "max", max_iter=9, eta=3, s=2, strict=False) == ["b", "e"]


def test_min_iter_bands_stop_the_flat_run():
    histories = {"run": [10] * 4, "run2": [10 - i for i in range(10)]}
    assert stopped(histories, {"run", "run2"}, min_iter=3, eta=3) == ["run"]
    maximized = {"run": [10] * 4, "run2": [10 + i for i in range(10)]}
    assert stopped(maximized, {"run", "run2"}, "max", min_iter=3, eta=3) == ["run"]


def test_a_single_run_is_never_stopped():
    histories = {"run": [10 - i for i in range(10)]}
    assert stopped(histories, {"run"}, max_iter=18, eta=3, s=2, strict=False) == []


def test_the_report_that_passes_a_cut_point_behind_stops_the_trial():
    scheduler = WandbHyperBand([2], 2, strict=True)
    scheduler.set_search_properties("val_accuracy", "max")
    trials = {name: SimpleNamespace(trial_id=name) for name in ("best", "good", "bad")}
    curves = {"best": [0.5, 0.7, 0.8], "good": [0.5, 0.6, 0.7], "bad": [0.4, 0.45, 0.5]}

    def report(name, epoch):
        result = {"val_accuracy": curves[name][epoch - 1], "training_iteration": epoch}
        return scheduler.on_trial_result(None, trials[name], result)

    for name in ("best", "good"):
        assert [report(name, epoch) for epoch in (1, 2, 3)] == [TrialScheduler.CONTINUE] * 3
    # At cut point 2 the threshold is the second best of three: 0.6; bad's 0.45 is behind.
    assert report("bad", 1) == TrialScheduler.CONTINUE
    assert report("bad", 2) == TrialScheduler.STOP
