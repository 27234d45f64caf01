"""Sweep reports read back from a real MLflow store (sqlite), filled with synthetic runs
shaped like the ones ``bopsweep run`` writes; every number in the report is checked
against what MlflowClient returns for the runs."""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from typer.testing import CliRunner

from bopsweep.cli import app
from bopsweep.errors import UserError
from bopsweep.sweep import report
from bopsweep.sweep.report import write_report

THRESHOLDS = [0.0, 1e-6, 1e-5]
GAMMAS = [1e-2, 1e-3, 1e-4]
SEEDS = [0, 1]
EPOCHS = 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(threshold: float, gamma: float, seed: int, epochs: int) -> list[dict[str, float]]:
    """Distinct, plausible curves: more flips with higher gamma and lower threshold."""
    flips = gamma * 10 / (1 + threshold * 1e6) * (1 + 0.1 * seed)
    out = []
    for epoch in range(epochs):
        val = 0.6 + 0.3 * (1 - math.exp(-epoch)) - 5 * gamma - 3e3 * threshold + 0.01 * seed
        ratio = flips / (1 + epoch)
        out.append(
            {
                "train_accuracy": val + 0.02,
                "val_accuracy": val + 0.001 * (epoch % 2),
                "flip_ratio": ratio,
                "log_flip_ratio": math.log(ratio + math.exp(-9)),
                "epoch": float(epoch),
            }
        )
    return out


class Store:
    """A sqlite MLflow store and helpers to write sweeps into it as the runner does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)

    def experiment(self, name: str) -> str:
        existing = self.client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        location = (self.root / "artifacts" / name).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def parent(self, experiment: str, name: str, *, start_time: int | None = None, **params):
        run = self.client.create_run(
            self.experiment(experiment),
            run_name=name,
            start_time=start_time,
            tags={"bopsweep.sweep": name, "bopsweep.role": "sweep"},
        )
        values = {"name": name, "metric.name": "val_accuracy", "metric.mode": "max", **params}
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in values.items()])
        return run

    def child(self, parent, index: int, swept: dict, epochs: list[dict], status="FINISHED"):
        values = " ".join(f"{k.removeprefix('hparams.')}={v:g}" for k, v in swept.items())
        run = self.client.create_run(
            parent.info.experiment_id,
            run_name=f"trial_{index:03d} {values}",
            tags={
                "mlflow.parentRunId": parent.info.run_id,
                "bopsweep.trial_key": f"{parent.info.run_id}:{index}",
                "bopsweep.role": "trial",
                **{f"swept.{k}": str(v) for k, v in swept.items()},
            },
        )
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, value, now, step)
            for step, row in enumerate(epochs)
            for key, value in row.items()
        ]
        self.client.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=[Param(k.removeprefix("swept."), str(v)) for k, v in swept.items()],
            tags=[RunTag("bopsweep.hostname", "test")],
        )
        if status != "RUNNING":
            self.client.set_terminated(run.info.run_id, status)
        return run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """Sweeps of every shape the report handles, in one store (created once: slow)."""
    store = Store(tmp_path_factory.mktemp("mlflow"))
    # The 3x3 grid with two seeds, in the runner's order (threshold slowest, seed last).
    grid = store.parent("grid", "grid")
    index = 0
    for threshold in THRESHOLDS:
        for gamma in GAMMAS:
            for seed in SEEDS:
                swept = {"hparams.threshold": threshold, "hparams.gamma": gamma, "seed": seed}
                store.child(grid, index, swept, _metrics(threshold, gamma, seed, EPOCHS))
                index += 1
    # The same name twice in one experiment: the latest parent run is the sweep.
    old = store.parent("dup", "dup", start_time=1_000)
    store.child(old, 0, {"hparams.gamma": 1e-2}, _metrics(0, 1e-2, 0, 2))
    new = store.parent("dup", "dup", start_time=2_000_000)
    for i, gamma in enumerate([1e-3, 1e-4]):
        store.child(new, i, {"hparams.gamma": gamma}, _metrics(1e-6, gamma, 0, 3))
    # A sweep whose experiment is not named like it, one trial still running, one
    # failed before its first epoch, and a minimised metric.
    other = store.parent(
        "elsewhere", "partial", **{"metric.name": "val_loss", "metric.mode": "min"}
    )
    for i, gamma in enumerate([1e-2, 1e-3, 1e-4]):
        epochs = [{**m, "val_loss": 1 - m["val_accuracy"]} for m in _metrics(1e-6, gamma, 0, 3)]
        status = ["FINISHED", "RUNNING", "FAILED"][i]
        store.child(other, i, {"hparams.gamma": gamma}, epochs if i < 2 else [], status)
    # Random search: scattered points, no grid.
    scattered = store.parent("random", "random")
    for i, (threshold, gamma) in enumerate([(3e-7, 2e-3), (4e-6, 7e-4), (1e-8, 5e-3)]):
        swept = {"hparams.threshold": threshold, "hparams.gamma": gamma}
        store.child(scattered, i, swept, _metrics(threshold, gamma, 0, 3))
    return store


@pytest.fixture(scope="module")
def grid_report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "grid"
    return write_report(store.uri, "grid", out)


def _children(store: Store, parent_run_id: str) -> list:
    experiments = [e.experiment_id for e in store.client.search_experiments()]
    return store.client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def _history(store: Store, run_id: str, key: str) -> list[float]:
    metrics = store.client.get_metric_history(run_id, key)
    return [m.value for m in sorted(metrics, key=lambda m: m.step)]


# ------------------------------------------------------------------ leaderboard
def test_leaderboard_rows_match_mlflow(store, grid_report):
    result = grid_report
    runs = {r.info.run_id: r for r in _children(store, result.parent_run_id)}
    assert len(result.rows) == len(runs) == 18
    assert result.metric == "val_accuracy" and result.mode == "max"
    assert result.swept_keys == ["hparams.threshold", "hparams.gamma", "seed"]
    for row in result.rows:
        run = runs[row.run_id]
        values = _history(store, row.run_id, "val_accuracy")
        flips = _history(store, row.run_id, "flip_ratio")
        assert row.final == values[-1]
        assert row.best == max(values)
        assert row.epochs == len(values) == EPOCHS
        assert row.mean_flip_ratio == pytest.approx(statistics.fmean(flips), rel=1e-12)
        assert row.status == run.info.status == "FINISHED"
        assert row.run_name == run.info.run_name
        assert row.trial == int(run.data.tags["bopsweep.trial_key"].rpartition(":")[2])
        for key, value in row.swept.items():
            assert str(value) == run.data.tags[f"swept.{key}"]
        assert row.link == row.run_id  # a local store has no web page
    bests = [row.best for row in result.rows]
    assert bests == sorted(bests, reverse=True)
    assert [row.rank for row in result.rows] == list(range(1, 19))


def test_leaderboard_files(grid_report):
    out = grid_report.out_dir
    with (out / "leaderboard.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == len(grid_report.rows)
    for line, row in zip(lines, grid_report.rows, strict=True):
        assert line["run"] == row.run_id
        assert float(line["best_val_accuracy"]) == row.best
        assert float(line["final_val_accuracy"]) == row.final
        assert float(line["hparams.gamma"]) == row.swept["hparams.gamma"]
        assert line["status"] == "FINISHED"
    markdown = (out / "leaderboard.md").read_text()
    assert "| rank | trial | threshold | gamma | seed |" in markdown
    assert markdown.count("| FINISHED |") == 18
    table = json.loads((out / "leaderboard.json").read_text())
    assert table["columns"][:5] == ["rank", "trial", "hparams.threshold", "hparams.gamma", "seed"]
    assert [r[-1] for r in table["data"]] == [row.run_id for row in grid_report.rows]


def test_run_links_point_at_the_mlflow_ui():
    assert (
        report.run_link("http://host:5000/", "3", "abc")
        == "http://host:5000/#/experiments/3/runs/abc"
    )
    assert report.run_link("https://mlflow.example", "1", "r") == (
        "https://mlflow.example/#/experiments/1/runs/r"
    )
    assert report.run_link("sqlite:////tmp/x.db", "1", "abc") == "abc"


# --------------------------------------------------------------------- heatmaps
@pytest.mark.parametrize("name", ["final_val_accuracy", "mean_flip_ratio"])
def test_heatmap_cells_are_the_runs_metrics(store, grid_report, name):
    heatmap = grid_report.heatmaps[name]
    assert heatmap.row_key == "hparams.threshold" and heatmap.col_key == "hparams.gamma"
    assert heatmap.row_values == sorted(THRESHOLDS)
    assert heatmap.col_values == sorted(GAMMAS)
    assert heatmap.log_scale == (name == "mean_flip_ratio")
    runs = _children(store, grid_report.parent_run_id)
    for i, threshold in enumerate(heatmap.row_values):
        for j, gamma in enumerate(heatmap.col_values):
            cell = [
                r
                for r in runs
                if float(r.data.tags["swept.hparams.threshold"]) == threshold
                and float(r.data.tags["swept.hparams.gamma"]) == gamma
            ]
            assert len(cell) == len(SEEDS) == heatmap.count[i][j]
            if name == "mean_flip_ratio":
                values = [
                    statistics.fmean(_history(store, r.info.run_id, "flip_ratio")) for r in cell
                ]
            else:
                values = [_history(store, r.info.run_id, "val_accuracy")[-1] for r in cell]
            assert heatmap.mean[i][j] == pytest.approx(statistics.fmean(values), rel=1e-12)
            assert heatmap.std[i][j] == pytest.approx(statistics.stdev(values), rel=1e-9)


def test_no_heatmaps_without_a_grid(store, tmp_path):
    one_parameter = write_report(store.uri, "dup", tmp_path / "dup", log_to_parent=False)
    assert one_parameter.heatmaps == {}
    scattered = write_report(store.uri, "random", tmp_path / "random", log_to_parent=False)
    assert scattered.heatmaps == {}
    assert not (tmp_path / "random" / "heatmaps.png").exists()
    # Curves are still drawn: the best settings together.
    _assert_png(tmp_path / "random" / "curves.png")


# ---------------------------------------------------------------------- figures
def _assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > 10_000, path
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = imread(path).shape[:2]
    assert width >= 600 and height >= 400, (width, height)


def _assert_svg(path: Path) -> None:
    text = path.read_text()
    assert path.stat().st_size > 10_000, path
    assert text.startswith("<?xml") and "<svg" in text and text.rstrip().endswith("</svg>")


def test_figures_exist(grid_report):
    out = grid_report.out_dir
    for stem in ("curves", "heatmaps"):
        _assert_png(out / f"{stem}.png")
        _assert_svg(out / f"{stem}.svg")
    names = {p.name for p in grid_report.files}
    assert names == {
        "leaderboard.csv",
        "leaderboard.md",
        "leaderboard.json",
        "curves.png",
        "curves.svg",
        "heatmaps.png",
        "heatmaps.svg",
    }
    svg = (out / "heatmaps.svg").read_text()
    # Annotated cells: mean and std over the seeds, the log colour scale labelled.
    assert "±" in svg or "&#177;" in svg
    assert "log scale" in svg


def test_curve_panels_hold_the_paper_values_fixed(store, grid_report):
    from bopsweep.sweep.report import curve_panels, load_trials

    trials = load_trials(
        store.client, grid_report.experiment_id, grid_report.parent_run_id, "val_accuracy"
    )
    panels = curve_panels(trials, grid_report.swept_keys, "val_accuracy", "max")
    assert [(p.key, p.fixed) for p in panels] == [
        ("hparams.threshold", {"hparams.gamma": 1e-3}),
        ("hparams.gamma", {"hparams.threshold": 1e-6}),
    ]
    assert [label for label, _ in panels[0].settings] == ["0", "1e-6", "1e-5"]
    assert [label for label, _ in panels[1].settings] == ["1e-4", "1e-3", "1e-2"]
    # Each setting is the mean over its seeds' runs.
    assert all(len(runs) == len(SEEDS) for p in panels for _, runs in p.settings)


def test_reference_value_is_the_papers_else_the_middle():
    assert report.reference_value("hparams.gamma", [1e-2, 1e-4, 1e-3]) == 1e-3
    assert report.reference_value("hparams.threshold", [1e-5, 0.0, 1e-6]) == 1e-6
    assert report.reference_value("hparams.gamma", [0.5, 0.1, 0.3]) == 0.3
    assert report.reference_value("hparams.lr", [0.1, 0.01]) == 0.01


# ------------------------------------------------------------- the parent run
def test_report_is_logged_to_the_parent_run(store, grid_report, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)  # load_table searches with it
    client, parent_id = store.client, grid_report.parent_run_id
    assert grid_report.logged_to_parent
    logged = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {f"report/{p.name}" for p in grid_report.files} == logged
    parent = client.get_run(parent_id)
    assert {"path": "report/leaderboard.json", "type": "table"} in json.loads(
        parent.data.tags["mlflow.loggedArtifacts"]
    )
    table = client.load_table(parent.info.experiment_id, "report/leaderboard.json", [parent_id])
    assert list(table["run"]) == [row.run_id for row in grid_report.rows]
    best = grid_report.best
    assert parent.data.metrics["best_val_accuracy"] == best.best
    assert parent.data.metrics["best_final_val_accuracy"] == best.final
    assert parent.data.metrics["best_mean_flip_ratio"] == best.mean_flip_ratio
    assert parent.data.tags["bopsweep.best_run_id"] == best.run_id
    # The names the sweep runner uses, and no others.
    assert {k for k in parent.data.metrics if k.startswith("best")} == {
        "best_val_accuracy",
        "best_final_val_accuracy",
        "best_mean_flip_ratio",
    }


def test_reporting_again_adds_no_duplicate_metrics_or_tables(
    store, grid_report, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    again = write_report(store.uri, "grid", tmp_path / "again")
    assert [r.run_id for r in again.rows] == [r.run_id for r in grid_report.rows]
    client, parent_id = store.client, grid_report.parent_run_id
    for key in ("best_val_accuracy", "best_final_val_accuracy", "best_mean_flip_ratio"):
        assert len(client.get_metric_history(parent_id, key)) == 1
    tag = json.loads(client.get_run(parent_id).data.tags["mlflow.loggedArtifacts"])
    assert tag.count({"path": "report/leaderboard.json", "type": "table"}) == 1
    table = client.load_table(again.experiment_id, "report/leaderboard.json", [parent_id])
    assert len(table) == len(again.rows)


# ------------------------------------------------------------- finding sweeps
def test_latest_parent_run_of_a_name(store, tmp_path):
    result = write_report(store.uri, "dup", tmp_path / "dup", log_to_parent=False)
    assert sorted(r.swept["hparams.gamma"] for r in result.rows) == [1e-4, 1e-3]
    assert not result.logged_to_parent
    assert store.client.list_artifacts(result.parent_run_id, "report") == []


def test_parent_run_given_outright(store, tmp_path):
    experiment = store.client.get_experiment_by_name("dup")
    old = store.client.search_runs([experiment.experiment_id], "attributes.start_time = 1000")[0]
    result = write_report(
        store.uri, "dup", tmp_path, log_to_parent=False, parent_run_id=old.info.run_id
    )
    assert result.parent_run_id == old.info.run_id
    assert [r.swept["hparams.gamma"] for r in result.rows] == [1e-2]


def test_sweep_in_another_experiment_partial_and_minimised(store, tmp_path):
    result = write_report(store.uri, "partial", tmp_path / "partial")
    assert result.metric == "val_loss" and result.mode == "min"
    by_status = {row.status: row for row in result.rows}
    assert set(by_status) == {"FINISHED", "RUNNING", "FAILED"}
    failed = by_status["FAILED"]
    assert math.isnan(failed.best) and failed.epochs == 0 and failed.rank == 3
    losses = [row.best for row in result.rows[:2]]
    assert losses == sorted(losses)  # lower is better
    assert store.client.get_run(result.parent_run_id).data.metrics["best_val_loss"] == losses[0]


def test_unknown_name_lists_the_sweeps(store, tmp_path):
    with pytest.raises(UserError) as info:
        write_report(store.uri, "nope", tmp_path)
    message = str(info.value)
    assert "'nope'" in message
    assert "dup, grid, partial, random" in message


def test_a_missing_local_store_is_an_error_not_a_new_store(tmp_path):
    missing = tmp_path / "mlflow.db"
    with pytest.raises(UserError, match="no MLflow store at"):
        write_report(f"sqlite:///{missing}", "grid", tmp_path / "out")
    assert not missing.exists()


def test_only_the_reports_files_are_logged(store, tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("not part of the report")
    result = write_report(store.uri, "random", out)
    logged = {a.path for a in store.client.list_artifacts(result.parent_run_id, "report")}
    assert logged == {f"report/{p.name}" for p in result.files}
    assert "report/notes.txt" not in logged


def test_figure_labels():
    assert [report.plot_value(v) for v in (1e-3, 0.01, 1e-06, 2.5e-4, 0.0, 0.5, 3, "bop")] == [
        "1e-3",
        "1e-2",
        "1e-6",
        "0.00025",
        "0",
        "0.5",
        "3",
        "bop",
    ]


def test_spec_path_gives_name_experiment_and_uri(store, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = tmp_path / "partial.yaml"
    spec.write_text(
        "name: partial\n"
        "train: {model: mlp, dataset: digits, hparams_set: bop}\n"
        "parameters: {hparams.gamma: {values: [1e-2, 1e-3, 1e-4]}}\n"
        f"tracking: {{experiment: elsewhere, uri: '{store.uri}'}}\n"
    )
    assert report.tracking_uri_for(spec, None) == store.uri
    assert report.tracking_uri_for(str(spec), "http://other:5000") == "http://other:5000"
    assert report.tracking_uri_for("partial", None).endswith("/mlflow.db")
    result = write_report(report.tracking_uri_for(spec, None), spec, tmp_path / "out")
    assert result.sweep == "partial" and len(result.rows) == 3


# -------------------------------------------------------------------------- CLI
def test_cli_report(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["report", "dup", "--tracking-uri", store.uri, "--no-log-to-parent"]
    )
    assert result.exit_code == 0, result.output
    assert "dup: leaderboard by val_accuracy (max)" in result.output
    assert "bopsweep_reports/dup" in result.output
    _assert_png(tmp_path / "bopsweep_reports" / "dup" / "curves.png")


def test_cli_unknown_sweep_exits_2(store, tmp_path, monkeypatch, capsys):
    import sys

    from bopsweep import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["bopsweep", "report", "nope", "--tracking-uri", store.uri])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    assert "sweeps there: dup, grid, partial, random" in capsys.readouterr().err.replace("\n", "")
