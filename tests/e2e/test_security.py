"""Authentication against a real ``mlflow server --app-name basic-auth``, and
credentials that never leave the environment."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import bopsweep, start_mlflow_server, sweep_file

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    password = "pw-" + secrets.token_hex(12)
    config = root / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = start_mlflow_server(
        root,
        extra_args=("--app-name", "basic-auth"),
        env={
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        },
    )
    yield server, password
    server.stop()


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
