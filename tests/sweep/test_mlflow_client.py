"""What bopsweep writes to MLflow outside a trial's own run, against a real store:
the experiment's kind, source tags, the settings remote trials get, and the status
and tags every child run is settled with."""

from __future__ import annotations

import subprocess

import pytest

from bopsweep.sweep import mlflow_client
from bopsweep.sweep.outcome import SweepOutcome, TrialOutcome
from bopsweep.sweep.tracking import TrialTracker


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    # One store for the module: creating MLflow's schema takes seconds.
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def test_experiments_open_on_the_training_runs_view(store):
    client = mlflow_client.client(store)
    created = mlflow_client.experiment_id(client, "new")
    assert client.get_experiment(created).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    # An existing experiment without a kind gets it; a kind the user chose stays.
    older = client.create_experiment("older")
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "finetuning"})
    mlflow_client.experiment_id(client, "older")
    mlflow_client.experiment_id(client, "chosen")
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
    exp_id, parent = mlflow_client.start_parent_run(
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
    mlflow_client.settle_runs(outcome, wanted, {}, ["val_accuracy"], stopped_early={1})
    runs = {t.index: mlflow_client.client(store).get_run(t.run_id) for t in outcome.trials}
    assert {i: r.info.status for i, r in runs.items()} == {0: "FINISHED", 1: "FINISHED"}
    assert mlflow_client.STOPPED_EARLY_TAG not in runs[0].data.tags
    assert runs[1].data.tags[mlflow_client.STOPPED_EARLY_TAG] == "true"
