"""Making a report: finding the sweep in a real MLflow store (sqlite), writing the
files, logging them to the parent run, and drawing one from an outcome in memory."""

from __future__ import annotations

import json
import math
import sys

import pytest
from typer.testing import CliRunner

from bopsweep.cli import app
from bopsweep.errors import UserError
from bopsweep.sweep.outcome import SweepOutcome, TrialOutcome
from bopsweep.sweep.report import (
    HISTORY_METRICS,
    render,
    tracking_uri_for,
    write_report,
)
from bopsweep.sweep.report.tables import EXTRA_METRICS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = {
    "leaderboard.csv",
    "leaderboard.md",
    "leaderboard.json",
    "curves.png",
    "curves.svg",
}


# ------------------------------------------------------------- the parent run
def test_report_is_logged_to_the_parent_run(store, grid_report, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)  # load_table searches with it
    client, outcome = store.client, grid_report.outcome
    parent_id = outcome.parent_run_id
    assert grid_report.logged_to_parent
    logged = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {f"report/{p.name}" for p in grid_report.files} == logged
    parent = client.get_run(parent_id)
    assert {"path": "report/leaderboard.json", "type": "table"} in json.loads(
        parent.data.tags["mlflow.loggedArtifacts"]
    )
    table = client.load_table(parent.info.experiment_id, "report/leaderboard.json", [parent_id])
    assert list(table["run"]) == [trial.run_id for trial in outcome.ranked()]
    best = outcome.best
    assert parent.data.metrics["best_val_accuracy"] == best.best("val_accuracy", "max")
    assert parent.data.metrics["best_final_val_accuracy"] == best.final("val_accuracy")
    assert parent.data.metrics["best_mean_flip_ratio"] == best.mean_flip_ratio
    assert parent.data.tags["bopsweep.best_run_id"] == best.run_id
    assert parent.data.tags["bopsweep.best_trial"] == best.name
    # The names the sweep runner logs (SweepOutcome.summary_metrics), and no others.
    assert {k for k in parent.data.metrics if k.startswith("best")} == set(
        outcome.summary_metrics()
    )


def test_reporting_again_adds_no_duplicate_metrics_or_tables(
    store, grid_report, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    again = write_report(store.uri, "grid", tmp_path / "again")
    ranked = [trial.run_id for trial in again.outcome.ranked()]
    assert ranked == [trial.run_id for trial in grid_report.outcome.ranked()]
    client, parent_id = store.client, grid_report.outcome.parent_run_id
    for key in ("best_val_accuracy", "best_final_val_accuracy", "best_mean_flip_ratio"):
        assert len(client.get_metric_history(parent_id, key)) == 1
    tag = json.loads(client.get_run(parent_id).data.tags["mlflow.loggedArtifacts"])
    assert tag.count({"path": "report/leaderboard.json", "type": "table"}) == 1
    table = client.load_table(again.outcome.experiment_id, "report/leaderboard.json", [parent_id])
    assert len(table) == len(ranked)


def test_only_the_reports_files_are_logged(store, tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("not part of the report")
    result = write_report(store.uri, "random", out)
    parent_id = result.outcome.parent_run_id
    logged = {a.path for a in store.client.list_artifacts(parent_id, "report")}
    assert logged == {f"report/{p.name}" for p in result.files}
    assert "report/notes.txt" not in logged


# ------------------------------------------------------------- finding sweeps
def test_the_outcome_holds_the_histories_the_report_needs(grid_report):
    for trial in grid_report.outcome.trials:
        # The extra metrics (top-5, test set) are read only where a trial logged them.
        expected = {"val_accuracy", *HISTORY_METRICS} - set(EXTRA_METRICS)
        # The per-step flip series is read for the trials the curves draw only.
        assert set(trial.history) - {"log_flip_ratio_last"} == expected
        assert [step for step, _ in trial.history["val_accuracy"]] == [0, 1, 2, 3]


def test_latest_parent_run_of_a_name(store, tmp_path):
    result = write_report(store.uri, "dup", tmp_path / "dup", log_to_parent=False)
    assert sorted(t.swept["hparams.gamma"] for t in result.outcome.trials) == [1e-4, 1e-3]
    assert not result.logged_to_parent
    assert store.client.list_artifacts(result.outcome.parent_run_id, "report") == []


def test_parent_run_given_outright(store, tmp_path):
    experiment = store.client.get_experiment_by_name("dup")
    old = store.client.search_runs([experiment.experiment_id], "attributes.start_time = 1000")[0]
    result = write_report(
        store.uri, "dup", tmp_path, log_to_parent=False, parent_run_id=old.info.run_id
    )
    assert result.outcome.parent_run_id == old.info.run_id
    assert [t.swept["hparams.gamma"] for t in result.outcome.trials] == [1e-2]


def test_sweep_in_another_experiment_partial_and_minimised(store, tmp_path):
    result = write_report(store.uri, "partial", tmp_path / "partial")
    outcome = result.outcome
    assert outcome.metric == "val_loss" and outcome.mode == "min"
    ranked = outcome.ranked()
    by_status = {trial.status: trial for trial in ranked}
    assert set(by_status) == {"FINISHED", "RUNNING", "FAILED"}
    failed = by_status["FAILED"]
    assert math.isnan(failed.best("val_loss", "min")) and failed.epochs("val_loss") == 0
    assert ranked[-1] is failed
    losses = [trial.best("val_loss", "min") for trial in ranked[:2]]
    assert losses == sorted(losses)  # lower is better
    parent = store.client.get_run(outcome.parent_run_id)
    assert parent.data.metrics["best_val_loss"] == losses[0]


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


def test_spec_path_gives_name_experiment_and_uri(store, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = tmp_path / "partial.yaml"
    spec.write_text(
        "name: partial\n"
        "train: {model: mlp, dataset: digits, hparams_set: bop}\n"
        "parameters: {hparams.gamma: {values: [1e-2, 1e-3, 1e-4]}}\n"
        f"tracking: {{experiment: elsewhere, uri: '{store.uri}'}}\n"
    )
    assert tracking_uri_for(spec, None) == store.uri
    assert tracking_uri_for(str(spec), "http://other:5000") == "http://other:5000"
    assert tracking_uri_for("partial", None).endswith("/mlflow.db")
    result = write_report(tracking_uri_for(spec, None), spec, tmp_path / "out")
    assert result.outcome.name == "partial" and len(result.outcome.trials) == 3


# ------------------------------------------------------- an outcome in memory
def _in_memory(tracking_uri: str) -> SweepOutcome:
    """A just-settled sweep: nothing of it needs to be read back from MLflow."""
    trials = []
    for index, gamma in enumerate([1e-3, 1e-4]):
        history = {
            "train_accuracy": [(0, 0.5 + gamma * 100), (1, 0.6 + gamma * 100)],
            "val_accuracy": [(0, 0.4 + gamma * 100), (1, 0.55 + gamma * 100)],
            "flip_ratio": [(0, gamma), (1, gamma / 2)],
            "log_flip_ratio": [(0, math.log(gamma + math.exp(-9))), (1, -8.0)],
        }
        trials.append(
            TrialOutcome(
                index=index, swept={"hparams.gamma": gamma}, status="FINISHED", history=history
            )
        )
    return SweepOutcome(
        name="memory",
        metric="val_accuracy",
        mode="max",
        tracking_uri=tracking_uri,
        experiment_id="0",
        parent_run_id="none",
        trials=trials,
    )


def test_render_an_outcome_in_memory(tmp_path):
    # The store does not exist: render reads nothing from MLflow.
    outcome = _in_memory(f"sqlite:///{tmp_path / 'absent.db'}")
    result = render(outcome, tmp_path / "out", log_to_parent=False)
    assert result.outcome is outcome and result.swept_keys == ["hparams.gamma"]
    assert {p.name for p in result.files} == REPORT_FILES
    assert all(p.parent == tmp_path / "out" for p in result.files)
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == PNG_MAGIC
    markdown = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| 1 | 000 | 0.001 | 0.6500 | 0.6500 |" in markdown
    assert not (tmp_path / "absent.db").exists()


def test_render_refuses_a_sweep_without_trials(tmp_path):
    outcome = _in_memory("sqlite:///unused.db")
    outcome.trials = []
    with pytest.raises(UserError, match="no trial runs yet"):
        render(outcome, tmp_path, log_to_parent=False)


# -------------------------------------------------------------------------- CLI
def test_cli_report(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["report", "dup", "--tracking-uri", store.uri, "--no-log-to-parent"]
    )
    assert result.exit_code == 0, result.output
    assert "dup: leaderboard by val_accuracy (max)" in result.output
    assert "bopsweep_reports/dup" in result.output
    assert "browse it with `bopsweep ui`" in result.output
    folder = tmp_path / "bopsweep_reports" / "dup"
    assert {p.name for p in folder.iterdir()} == REPORT_FILES
    assert (folder / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_unknown_sweep_exits_2(store, tmp_path, monkeypatch, capsys):
    from bopsweep import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["bopsweep", "report", "nope", "--tracking-uri", store.uri])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    assert "sweeps there: dup, grid, partial, random" in capsys.readouterr().err.replace("\n", "")
