"""The leaderboard's renderings: rows checked against what MlflowClient returns for
the runs of a real store, and the terminal table of a sweep that has just ended."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest
from rich.console import Console

from bopsweep.sweep.outcome import SweepOutcome, TrialOutcome
from bopsweep.sweep.report import tables

SERVER = "http://host:5000/"
RUN_ID = "a" * 32


def _ended_sweep(uri: str = SERVER) -> SweepOutcome:
    """A sweep as the runner settles it: one trial finished, one failed before it
    reached MLflow (no run id) after one of its two epochs."""
    finished = TrialOutcome(
        index=0,
        swept={"hparams.gamma": 1e-3, "seed": 0},
        status="FINISHED",
        history={"val_accuracy": [(0, 0.5), (1, 0.7)], "flip_ratio": [(0, 2e-3), (1, 1e-3)]},
        run_id=RUN_ID,
        epochs_total=2,
    )
    failed = TrialOutcome(
        index=1,
        swept={"hparams.gamma": 1e-4, "seed": 0},
        status="FAILED",
        history={"val_accuracy": [(0, 0.6)]},
        epochs_total=2,
        error="out of memory",
    )
    return SweepOutcome(
        name="quick",
        metric="val_accuracy",
        mode="max",
        tracking_uri=uri,
        experiment_id="3",
        parent_run_id="p" * 32,
        trials=[failed, finished],
    )


def _text(table, *, terminal: bool = False) -> str:
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=250,
        force_terminal=terminal,
        color_system="standard" if terminal else None,
    )
    console.print(table)
    return buffer.getvalue()


# ---------------------------------------------------- rows, against the store
def test_leaderboard_rows_match_mlflow(store, grid_report):
    outcome = grid_report.outcome
    runs = {r.info.run_id: r for r in store.children(outcome.parent_run_id)}
    ranked = outcome.ranked()
    assert len(ranked) == len(runs) == 18
    assert outcome.metric == "val_accuracy" and outcome.mode == "max"
    assert grid_report.swept_keys == ["hparams.threshold", "hparams.gamma", "seed"]
    for trial in ranked:
        run = runs[trial.run_id]
        values = store.history(trial.run_id, "val_accuracy")
        flips = store.history(trial.run_id, "flip_ratio")
        assert trial.final("val_accuracy") == values[-1]
        assert trial.best("val_accuracy", "max") == max(values)
        assert trial.epochs("val_accuracy") == len(values) == store.epochs
        assert trial.mean_flip_ratio == pytest.approx(statistics.fmean(flips), rel=1e-12)
        assert trial.status == run.info.status == "FINISHED"
        assert trial.name == run.info.run_name
        assert trial.index == int(run.data.tags["bopsweep.trial_key"].rpartition(":")[2])
        for key, value in trial.swept.items():
            assert str(value) == run.data.tags[f"swept.{key}"]
        assert outcome.run_link(trial.run_id) == trial.run_id  # a local store has no web page
    bests = [trial.best("val_accuracy", "max") for trial in ranked]
    assert bests == sorted(bests, reverse=True)


def test_leaderboard_files(grid_report):
    out, ranked = grid_report.out_dir, grid_report.outcome.ranked()
    with (out / "leaderboard.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == len(ranked)
    for rank, (line, trial) in enumerate(zip(lines, ranked, strict=True), 1):
        assert int(line["rank"]) == rank
        assert line["run"] == trial.run_id
        assert float(line["best_val_accuracy"]) == trial.best("val_accuracy", "max")
        assert float(line["final_val_accuracy"]) == trial.final("val_accuracy")
        assert float(line["hparams.gamma"]) == trial.swept["hparams.gamma"]
        assert line["status"] == "FINISHED"
    markdown = (out / "leaderboard.md").read_text()
    assert markdown.startswith("# Sweep grid: leaderboard by val_accuracy (max)")
    assert "| rank | trial | threshold | gamma | seed |" in markdown
    assert markdown.count("| FINISHED |") == 18
    table = json.loads((out / "leaderboard.json").read_text())
    assert table["columns"][:5] == ["rank", "trial", "hparams.threshold", "hparams.gamma", "seed"]
    assert [r[-1] for r in table["data"]] == [trial.run_id for trial in ranked]


# ------------------------------------------------------- a sweep just ended
def test_run_links_point_at_the_mlflow_ui():
    outcome = _ended_sweep()
    link = f"http://host:5000/#/experiments/3/runs/{RUN_ID}"
    rows = list(csv.DictReader(io.StringIO(tables.leaderboard_csv(outcome))))
    assert [row["run"] for row in rows] == [link, ""]
    data = tables.leaderboard_table_json(outcome)["data"]
    assert [row[-1] for row in data] == [link, None]
    markdown = tables.leaderboard_markdown(outcome)
    assert f"[{RUN_ID[:8]}]({link})" in markdown
    assert f"Parent run: http://host:5000/#/experiments/3/runs/{'p' * 32}" in markdown
    # OSC 8: the run id is a hyperlink in terminals that support them.
    linked = _text(tables.leaderboard_table(outcome), terminal=True)
    assert "\x1b]8;id=" in linked and f";{link}\x1b\\{RUN_ID}" in linked
    assert link not in _text(tables.leaderboard_table(outcome, links=False), terminal=True)
    local = _ended_sweep("sqlite:////tmp/mlflow.db")
    assert [r["run"] for r in csv.DictReader(io.StringIO(tables.leaderboard_csv(local)))] == [
        RUN_ID,
        "",
    ]
    assert f"`{RUN_ID}`" in tables.leaderboard_markdown(local)


def test_terminal_table_of_a_sweep_just_ended():
    outcome = _ended_sweep()
    table = tables.leaderboard_table(outcome)
    assert table.title == "quick: leaderboard by val_accuracy (max)"
    assert [c.header for c in table.columns] == [
        "rank",
        "trial",
        "gamma",
        "seed",
        "final val_accuracy",
        "best val_accuracy",
        "mean flip_ratio",
        "epochs",
        "status",
        "run",
    ]
    lines = [line.split("│")[1:-1] for line in _text(table).splitlines() if "│" in line]
    cells = [[cell.strip() for cell in line] for line in lines]  # the header row uses ┃
    assert cells == [
        ["1", "000", "0.001", "0", "0.7000", "0.7000", "1.50e-03", "2", "FINISHED", RUN_ID],
        ["2", "001", "0.0001", "0", "0.6000", "0.6000", "-", "1/2", "FAILED", "-"],
    ]
    # The columns follow the keys given, in their order.
    reordered = tables.leaderboard_table(outcome, ["seed", "hparams.gamma"])
    assert [c.header for c in reordered.columns][2:4] == ["seed", "gamma"]


def test_nan_is_empty_in_csv_and_null_in_json():
    outcome = _ended_sweep()
    rows = list(csv.DictReader(io.StringIO(tables.leaderboard_csv(outcome))))
    assert rows[1]["mean_flip_ratio"] == ""
    assert rows[1]["epochs"] == "1"
    table = tables.leaderboard_table_json(outcome)
    flips = table["columns"].index("mean_flip_ratio")
    assert table["data"][1][flips] is None
    json.dumps(table, allow_nan=False)  # valid JSON, which has no NaN


def test_top5_and_test_set_columns_when_the_trials_logged_them():
    outcome = _ended_sweep()
    finished = next(t for t in outcome.trials if t.index == 0)
    finished.history["val_top5_accuracy"] = [(0, 0.8), (1, 0.95)]
    finished.history["test_accuracy"] = [(0, 0.4), (1, 0.65)]
    headers = [c.header for c in tables.leaderboard_table(outcome).columns]
    assert headers[4:8] == [
        "final val_accuracy",
        "best val_accuracy",
        "final val_top5_accuracy",
        "final test_accuracy",
    ]
    rows = list(csv.DictReader(io.StringIO(tables.leaderboard_csv(outcome))))
    assert (rows[0]["final_val_top5_accuracy"], rows[0]["final_test_accuracy"]) == ("0.95", "0.65")
    assert rows[1]["final_test_accuracy"] == ""  # the failed trial has none
    assert "test_top5_accuracy" not in rows[0]
    markdown = tables.leaderboard_markdown(outcome)
    assert "| final val_top5_accuracy | final test_accuracy |" in markdown
    assert "| 0.9500 | 0.6500 |" in markdown
    json_table = tables.leaderboard_table_json(outcome)
    assert json_table["columns"][6:8] == ["final_val_top5_accuracy", "final_test_accuracy"]
    # A sweep ranked by test accuracy does not repeat it as an extra column.
    outcome.metric = "test_accuracy"
    assert tables.extra_metrics(outcome) == ["val_top5_accuracy"]


def test_outcome_as_json_for_scripts():
    outcome = _ended_sweep()
    data = json.loads(json.dumps(tables.outcome_json(outcome)))
    assert data["sweep"] == outcome.name and data["parent_run_id"] == outcome.parent_run_id
    assert data["counts"] == {"FINISHED": 1, "FAILED": 1, "KILLED": 0}
    first, second = data["leaderboard"]
    assert first["rank"] == 1 and first["trial"] == 0 and first["status"] == "FINISHED"
    assert first["swept"] == {"hparams.gamma": 1e-3, "seed": 0}
    assert first["best_val_accuracy"] == 0.7 and first["run_id"] == RUN_ID
    assert second["run_id"] is None and second["mean_flip_ratio"] is None


def test_a_value_not_proposed_yet_shows_as_a_dash():
    outcome = _ended_sweep()
    outcome.trials.append(TrialOutcome(index=2, swept={}, epochs_total=2))
    console = Console(width=200, record=True)
    console.print(tables.live_table(outcome))
    row = next(line for line in console.export_text().splitlines() if "002" in line)
    assert "None" not in row and " - " in row


def _big_sweep(n: int = 1000) -> SweepOutcome:
    """``n`` trials as the live table sees them mid-sweep: the first 600 ended (every
    100th failed), two running, the rest waiting."""
    trials = []
    for index in range(n):
        trial = TrialOutcome(index=index, swept={"seed": index}, epochs_total=1)
        if index < 600:
            trial.status = "FAILED" if index % 100 == 7 else "FINISHED"
            if trial.status == "FINISHED":  # the failed ones before their first epoch
                trial.history = {"val_accuracy": [(0, (index * 37 % 1000) / 1000)]}
        elif index < 602:
            trial.status = "RUNNING"
        trials.append(trial)
    return SweepOutcome(
        name="big",
        metric="val_accuracy",
        mode="max",
        tracking_uri="sqlite:///x.db",
        experiment_id="1",
        parent_run_id="p" * 32,
        trials=trials,
    )


def test_live_table_shows_what_fits_running_first_then_the_best():
    outcome = _big_sweep()
    shown = tables.live_rows(outcome, 20)
    assert len(shown) == 20
    assert [t.index for t in shown] == sorted(t.index for t in shown)
    indices = {t.index for t in shown}
    assert {600, 601} <= indices  # the running trials
    best = [t.index for t in outcome.ranked() if t.status == "FINISHED"][:18]
    assert indices == {600, 601, *best}
    text = _text(tables.live_table(outcome, max_rows=20))
    assert "big: 600/1000 trials done" in text
    assert "... 980 more trials: 6 failed, 576 finished, 398 pending" in text
    assert len(text.splitlines()) < 30
    # A sweep that fits is shown whole, with no caption.
    assert len(tables.live_rows(outcome, 1000)) == 1000
    assert "more trials" not in _text(tables.live_table(_big_sweep(8), max_rows=20))


def test_live_table_fills_with_the_next_trials_before_any_ended():
    outcome = _big_sweep(1000)
    for trial in outcome.trials:
        trial.status, trial.history = "PENDING", {}
    assert [t.index for t in tables.live_rows(outcome, 5)] == [0, 1, 2, 3, 4]


def test_leaderboard_limit_keeps_the_best_and_says_where_the_rest_is():
    outcome = _big_sweep(100)
    text = _text(tables.leaderboard_table(outcome, limit=10, elsewhere="see report"))
    ranks = [
        line.split()[1]
        for line in text.splitlines()
        if line[:2] == "│ " and line.split()[1].isdigit()
    ]
    assert ranks == [str(rank) for rank in range(1, 11)]
    assert "... and 90 more trials (see report)" in text
    assert "more trials" not in _text(tables.leaderboard_table(outcome, limit=100))
