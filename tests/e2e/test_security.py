"""Authentication against a real ``mlflow server --app-name basic-auth``, and
credentials that never leave the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import bopsweep, sweep_file

pytestmark = pytest.mark.e2e


def _grep(folder: Path, needle: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_right_credentials_work_and_never_get_stored(auth_server, workdir, tmp_path, monkeypatch):
    server, password = auth_server
    env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        "--set",
        "parameters.hparams.threshold.values=[1e-6]",
        "--set",
        "parameters.hparams.gamma.values=[1e-3,1e-4]",
        "--set",
        "train.epochs=2",
        "--set",
        "tracking.experiment=e2e-auth",
        "--tracking-uri",
        server.uri,
        cwd=workdir,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert password not in result.stdout + result.stderr

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("e2e-auth")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3
    downloads = tmp_path / "artifacts"
    for run in runs:
        stored = {**run.data.params, **run.data.tags}
        assert not [k for k, v in stored.items() if password in v], "password in params/tags"
        client.download_artifacts(run.info.run_id, "", str(downloads / run.info.run_id))
    assert any(downloads.rglob("*.yaml")), "the parent run's spec artifacts were downloaded"
    assert _grep(downloads, password.encode()) == []
    # Ray's stored trial configs, results and checkpoints.
    results = workdir / "bopsweep_results"
    assert any(results.rglob("params.json"))
    assert _grep(results, password.encode()) == []


def test_wrong_password_fails_at_start(auth_server, workdir):
    server, password = auth_server
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        "--tracking-uri",
        server.uri,
        cwd=workdir,
        env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong-" + password},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "refused the credentials" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "bopsweep_results").exists(), "nothing may start"


def test_a_trial_without_credentials_stops_retrying(auth_server, monkeypatch):
    from bopsweep.sweep.tracking import TrialTracker

    server, _ = auth_server
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.mlflow/credentials either
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = TrialTracker(server.uri, "0", "parent", 0, "t0", backoff_s=0.01)
    tracker.log_epoch({"epoch": 0.0, "val_accuracy": 0.5}, step=0)
    # Refused, not unreachable: one attempt, then nothing more is tried.
    assert not tracker.finish("FINISHED")
    assert tracker.refused and "401" in tracker.refused
    assert tracker.failures == 1
    assert len(tracker.pending) == 1  # still queued: the local results have it for sync
