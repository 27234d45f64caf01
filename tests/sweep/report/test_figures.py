"""The report's figures: heatmap cells and curve panels checked number by number
against the runs of a real MLflow store, and the image files they are drawn into."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from bopsweep.sweep.report import figures, grid, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


# --------------------------------------------------------------------- heatmaps
@pytest.mark.parametrize("name", ["final_val_accuracy", "mean_flip_ratio"])
def test_heatmap_cells_are_the_runs_metrics(store, grid_report, name):
    heatmap = grid_report.heatmaps[name]
    assert heatmap.row_key == "hparams.threshold" and heatmap.col_key == "hparams.gamma"
    assert heatmap.row_values == sorted(store.thresholds)
    assert heatmap.col_values == sorted(store.gammas)
    assert heatmap.log_scale == (name == "mean_flip_ratio")
    runs = store.children(grid_report.outcome.parent_run_id)
    for i, threshold in enumerate(heatmap.row_values):
        for j, gamma in enumerate(heatmap.col_values):
            cell = [
                r
                for r in runs
                if float(r.data.tags["swept.hparams.threshold"]) == threshold
                and float(r.data.tags["swept.hparams.gamma"]) == gamma
            ]
            assert len(cell) == len(store.seeds) == heatmap.count[i][j]
            if name == "mean_flip_ratio":
                values = [
                    statistics.fmean(store.history(r.info.run_id, "flip_ratio")) for r in cell
                ]
            else:
                values = [store.history(r.info.run_id, "val_accuracy")[-1] for r in cell]
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
    panels = figures.curve_panels(scattered.outcome, scattered.swept_keys)
    assert [p.key for p in panels] == [None]
    best_first = [runs[0].best("val_accuracy", "max") for _, runs in panels[0].settings]
    assert best_first == sorted(best_first, reverse=True)


# ---------------------------------------------------------------------- figures
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
        # A threshold x gamma grid: the paper's section 5.1 findings checked.
        "claims.json",
    }
    svg = (out / "heatmaps.svg").read_text()
    # Annotated cells: mean and std over the seeds, the log colour scale labelled.
    assert "±" in svg or "&#177;" in svg
    assert "log scale" in svg


def test_the_flip_curves_are_the_last_layer_per_step(store, grid_report):
    """The report reads the per-step series of the runs it draws (and only those):
    the paper's Figure 1 quantity, x in epochs."""
    drawn = {
        id(run)
        for panel in figures.curve_panels(grid_report.outcome, grid_report.swept_keys)
        for _, runs in panel.settings
        for run in runs
    }
    for trial in grid_report.outcome.trials:
        series = trial.history.get(figures.STEP_FLIP_METRIC)
        if id(trial) not in drawn:
            assert series is None
            continue
        logged = store.client.get_metric_history(trial.run_id, figures.STEP_FLIP_METRIC)
        assert series == sorted((m.step, m.value) for m in logged)
        assert len(series) == store.epochs * 5
    panel = figures.curve_panels(grid_report.outcome, grid_report.swept_keys)[0]
    _, runs = panel.settings[0]
    x, mean, _ = figures._step_series(runs)
    assert x[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and x[-1] == store.epochs
    first = [dict(run.history[figures.STEP_FLIP_METRIC])[0] for run in runs]
    assert mean[0] == pytest.approx(statistics.fmean(first))
    assert "last layer, per step" in (grid_report.out_dir / "curves.svg").read_text()


def test_curve_panels_hold_the_paper_values_fixed(store, grid_report):
    panels = figures.curve_panels(grid_report.outcome, grid_report.swept_keys)
    assert [(p.key, p.fixed) for p in panels] == [
        ("hparams.threshold", {"hparams.gamma": 1e-3}),
        ("hparams.gamma", {"hparams.threshold": 1e-6}),
    ]
    assert [label for label, _ in panels[0].settings] == ["0", "1e-6", "1e-5"]
    assert [label for label, _ in panels[1].settings] == ["1e-4", "1e-3", "1e-2"]
    # Each setting is the mean over its seeds' runs.
    assert all(len(runs) == len(store.seeds) for p in panels for _, runs in p.settings)
    assert grid.seed_count(grid_report.outcome.trials, grid_report.swept_keys) == 2


def test_reference_value_is_the_papers_else_the_middle():
    assert grid.reference_value("hparams.gamma", [1e-2, 1e-4, 1e-3]) == 1e-3
    assert grid.reference_value("hparams.threshold", [1e-5, 0.0, 1e-6]) == 1e-6
    assert grid.reference_value("hparams.gamma", [0.5, 0.1, 0.3]) == 0.3
    assert grid.reference_value("hparams.lr", [0.1, 0.01]) == 0.01


def test_figure_labels():
    assert [figures.plot_value(v) for v in (1e-3, 0.01, 1e-06, 2.5e-4, 0.0, 0.5, 3, "bop")] == [
        "1e-3",
        "1e-2",
        "1e-6",
        "0.00025",
        "0",
        "0.5",
        "3",
        "bop",
    ]


def test_importing_the_report_imports_nothing_heavy():
    import subprocess
    import sys

    # `bopsweep report --help` and spec errors must not pay for these.
    heavy = ("matplotlib", "mlflow", "rich", "torch", "ray")
    code = f"import sys, bopsweep.sweep.report; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
