"""What bopsweep writes to MLflow outside a trial's own run, against a real store:
the experiment's kind, source tags, the settings remote trials get, and the status
and tags every child run is settled with."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest

from bopsweep.sweep import mlflow_client, mlflow_runs
from bopsweep.sweep.outcome import SweepOutcome, TrialOutcome
from bopsweep.sweep.tracking import TrialTracker


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    # One store for the module: creating MLflow's schema takes seconds.
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def test_experiments_open_on_the_training_runs_view(store):
    client = mlflow_client.client(store)
    created = mlflow_runs.experiment_id(client, "new")
    assert client.get_experiment(created).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    # An existing experiment without a kind gets it; a kind the user chose stays.
    older = client.create_experiment("older")
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "finetuning"})
    mlflow_runs.experiment_id(client, "older")
    mlflow_runs.experiment_id(client, "chosen")
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "finetuning"


def test_every_mlflow_and_artifact_store_setting_is_forwarded(monkeypatch, tmp_path):
    for key in mlflow_client.FORWARDED_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials
    settings = {
        "MLFLOW_TRACKING_INSECURE_TLS": "true",
        "MLFLOW_TRACKING_SERVER_CERT_PATH": "/etc/ca.pem",
        "MLFLOW_TRACKING_CLIENT_CERT_PATH": "/etc/client.pem",
        "MLFLOW_TRACKING_AUTH": "my_auth_plugin",
        "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000",
        "MLFLOW_S3_IGNORE_TLS": "true",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "session",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("UNRELATED_SECRET", "never forwarded")
    assert mlflow_client.credential_env() == settings
    assert mlflow_client.forwarded_names().split(",") == list(settings)


def test_source_tags_name_the_spec_its_user_and_its_commit(tmp_path):
    spec = tmp_path / "repo" / "sweep.yaml"
    spec.parent.mkdir()
    spec.write_text("name: s\n")
    assert "mlflow.source.git.commit" not in mlflow_client.source_tags(spec)
    git = ["git", "-C", str(spec.parent), "-c", "user.name=u", "-c", "user.email=u@x"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "sweep.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "spec"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    tags = mlflow_client.source_tags(spec)
    assert tags["mlflow.source.name"] == str(spec)
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == head
    assert tags["mlflow.user"]


def test_settling_tags_trials_the_scheduler_stopped(store):
    exp_id, parent = mlflow_runs.start_parent_run(
        store, "settle", "sweep", tags={}, params={}, artifacts={}
    )
    for index, epochs in ((0, 4), (1, 1)):
        tracker = TrialTracker(store, exp_id, parent, index, f"trial_{index:03d}")
        for step in range(epochs):
            tracker.log_epoch({"val_accuracy": 0.5, "epoch": step}, step=step)
        assert tracker.flush(timeout_s=30)
        tracker.close()  # left RUNNING, as a trial Ray stopped
    outcome = SweepOutcome("sweep", "val_accuracy", "max", store, exp_id, parent)
    outcome.trials = [TrialOutcome(0, {}, epochs_total=4), TrialOutcome(1, {}, epochs_total=4)]
    wanted = {0: "FINISHED", 1: "FINISHED"}
    mlflow_runs.settle_runs(outcome, wanted, {}, ["val_accuracy"], stopped_early={1})
    runs = {t.index: mlflow_client.client(store).get_run(t.run_id) for t in outcome.trials}
    assert {i: r.info.status for i, r in runs.items()} == {0: "FINISHED", 1: "FINISHED"}
    assert mlflow_runs.STOPPED_EARLY_TAG not in runs[0].data.tags
    assert runs[1].data.tags[mlflow_runs.STOPPED_EARLY_TAG] == "true"


def _experiments(path) -> list[tuple]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        query = "SELECT experiment_id, name, artifact_location FROM experiments"
        return db.execute(query).fetchall()


def test_new_stores_start_from_an_empty_template(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = tmp_path / "cache" / "bopsweep" / f"mlflow-{mlflow.__version__}-empty.db"
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        client = mlflow_client.client(uri)
        run = client.create_run(mlflow_runs.experiment_id(client, "sweep"))
        client.log_metric(run.info.run_id, "loss", 0.5)
        # MLflow's Default experiment, made when the copy was opened: its artifacts
        # go where a store built here would put them.
        assert _experiments(folder / "mlflow.db")[0][:2] == (0, "Default")
        assert _experiments(folder / "mlflow.db")[0][2] == str(folder / "mlruns" / "0")
        assert client.get_metric_history(run.info.run_id, "loss")[0].value == 0.5
        # The template holds MLflow's schema and nothing of any store made from it.
        assert template.is_file() and _experiments(template) == []


def test_an_existing_store_is_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client.client(uri)
    exp = mlflow_runs.experiment_id(client, "kept")
    mlflow_client.seed_sqlite_store(uri)
    assert mlflow_client.client(uri).get_experiment(exp).name == "kept"


def test_a_store_is_built_by_mlflow_when_the_cache_cannot_be_written(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client.client(uri)
    assert client.get_experiment(mlflow_runs.experiment_id(client, "x")).name == "x"


def test_servers_start_without_the_job_executor_unless_asked(monkeypatch):
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    assert mlflow_client.server_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert mlflow_client.server_env({"A": "1"})["A"] == "1"
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    assert mlflow_client.server_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"


def _pragmas(client) -> tuple[str, int]:
    """The journal mode and synchronous level of a connection of the client's store."""
    from sqlalchemy import text

    with client._tracking_client.store.engine.connect() as connection:
        mode = connection.execute(text("PRAGMA journal_mode")).scalar()
        return mode, connection.execute(text("PRAGMA synchronous")).scalar()


def test_a_new_local_store_logs_ahead_and_syncs_at_checkpoints(tmp_path, monkeypatch):
    """A sweep's trial processes commit thousands of small transactions at once: a new
    store writes ahead (WAL) and syncs at checkpoints (synchronous=NORMAL, 1), not at
    each commit (sqlite's default FULL, 2)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    client = mlflow_client.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow_runs.experiment_id(client, "wal")
    assert _pragmas(client) == ("wal", 1)


def test_a_store_made_elsewhere_keeps_its_journal(tmp_path, monkeypatch):
    """A store MLflow built (rollback journal) is left in its mode and sqlite's
    default sync: its other users may be on hosts or versions that expect them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mlflow_client.client(f"sqlite:///{tmp_path / 'first.db'}")  # builds the template
    path = tmp_path / "made-by-mlflow.db"
    shutil.copyfile(mlflow_client._store_template(), path)  # MLflow's own schema build
    assert _pragmas(mlflow_client.client(f"sqlite:///{path}")) == ("delete", 2)


MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
server:/export /home nfs4 rw,relatime 0 0
/dev/vdb /home/local ext4 rw 0 0
sshfs#me@host: /mnt/remote fuse.sshfs rw 0 0
"""


@pytest.mark.parametrize(
    "folder, network",
    [("/tmp/sweep", False), ("/home/me", True), ("/home/local/x", False), ("/mnt/remote", True)],
)
def test_network_filesystems_by_their_longest_mount_point(folder, network):
    assert mlflow_client.network_filesystem(Path(folder), MOUNTS) is network


def test_a_file_that_is_not_a_database_fails_at_once(tmp_path, caplog):
    """Opening connections to check the journal must not turn MLflow's one error into
    its minute of retries (it retries an engine whose first connection fails)."""
    (tmp_path / "mlflow.db").write_text("not a database")
    with pytest.raises(Exception, match="file is not a database"):
        mlflow_client.client(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    assert "will be retried" not in caplog.text
