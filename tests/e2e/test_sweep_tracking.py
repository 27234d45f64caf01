"""A real sweep through Ray Tune into a real MLflow server, checked via MlflowClient."""

from __future__ import annotations

import json
import re
import subprocess

import psutil
import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import bopsweep, free_port, grid, sweep_file, wait_http

pytestmark = pytest.mark.e2e

FOUR_TRIALS = grid("[0,1e-6]", "[1e-3,1e-4]", 2, "--set", "resources.cpu=1")


def _sweep_runs(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} missing"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_quickstart_against_mlflow_server(mlflow_server, workdir):
    experiment = "e2e-server"
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        *FOUR_TRIALS,
        "--set",
        f"tracking.experiment={experiment}",
        "--tracking-uri",
        mlflow_server.uri,
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "leaderboard" in result.stdout
    # A quiet terminal: the live table and where things are, none of Ray's or
    # MLflow's log lines (they are in the sweep's log file).
    noisy = [
        line
        for line in result.stderr.splitlines()
        if re.search(r"\b(WARNING|INFO|ERROR)\b|Traceback|warn", line)
    ]
    assert not noisy, noisy
    results = workdir / "bopsweep_results" / "quickstart"
    assert (results / "logs" / "driver.log").is_file()
    assert "logs" in result.stdout
    timeline = json.loads((results / "timeline.json").read_text())
    assert timeline["runner"] <= timeline["ray_started"] <= timeline["trials_done"]
    assert timeline["trials_done"] <= timeline["reported"]
    # One checkpoint per Ray trial, after its last epoch (on 2 CPUs the four trials
    # train as two fused groups, one per CPU).
    ray_trials = [p for p in results.iterdir() if p.name.startswith(("trial_", "fused_"))]
    assert 1 <= len(ray_trials) <= 4
    assert timeline["trials.train_s"] > 0 and timeline["trials.checkpoints"] == len(ray_trials)

    client = MlflowClient(mlflow_server.uri)
    parents, children = _sweep_runs(client, experiment)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["bopsweep.spec_sha256"]
    assert parent.data.params["train.model"] == "mlp"
    assert "best_val_accuracy" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "spec" in artifacts and "report" in artifacts
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/leaderboard.csv" in report
    assert (workdir / "bopsweep_results" / "quickstart" / "report" / "leaderboard.md").is_file()

    assert len(children) == 4
    swept = set()
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        for key in ("val_accuracy", "flip_ratio", "train_loss", "log_flip_ratio"):
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
            assert steps == [0, 1], (key, steps)
        assert "flip_ratio/dense1" in child.data.metrics
        params = child.data.params
        assert params["model"] == "mlp" and params["dataset"] == "digits"
        assert params["hparams.batch_size"] == "32"
        swept.add((float(params["hparams.threshold"]), float(params["hparams.gamma"])))
        assert child.data.tags["bopsweep.hostname"]
    assert swept == {(0.0, 1e-3), (0.0, 1e-4), (1e-6, 1e-3), (1e-6, 1e-4)}
    # The parent's best metric is the best of its children's.
    best = max(
        max(m.value for m in client.get_metric_history(c.info.run_id, "val_accuracy"))
        for c in children
    )
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best)


def test_embedded_default_store_and_ui(workdir):
    # No server, no MLFLOW_TRACKING_URI: the local sqlite store in the working directory.
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        "--set",
        "parameters.hparams.threshold.values=[1e-6]",
        "--set",
        "parameters.hparams.gamma.values=[1e-3]",
        "--set",
        "train.epochs=1",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "mlflow.db").is_file()
    assert (workdir / "bopsweep_results" / "quickstart").is_dir()
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents, children = _sweep_runs(client, "quickstart")
    assert len(parents) == 1 and len(children) == 1
    assert children[0].info.status == "FINISHED"

    port = free_port()
    ui = subprocess.Popen(
        [str(bopsweep.__globals__["BIN"] / "bopsweep"), "ui", "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process=ui)
        served = MlflowClient(f"http://127.0.0.1:{port}")
        exp = served.get_experiment_by_name("quickstart")
        assert exp is not None
        assert len(served.search_runs([exp.experiment_id])) == 2
        # Without MLflow's job executor (10 processes, ~30 s of CPU at start).
        commands = [" ".join(c.cmdline()) for c in psutil.Process(ui.pid).children(recursive=True)]
        assert not [c for c in commands if "huey" in c or "_job_runner" in c], commands
    finally:
        ui.terminate()
        ui.wait(20)


def test_runs_carry_what_mlflow_users_look_for(mlflow_server, workdir):
    """Two trials, one that ASHA stops after its first epoch (threshold 1: no weight
    ever flips, so it cannot learn): summary metrics, dataset input, source tags,
    system metrics, models of the trial that trained to the end, the best trial's
    registered, the stopped trial tagged."""
    experiment = "e2e-mlflow-users"
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        *grid("[1e-6,1.0]", "[1e-3]", 3),
        *("--set", f"tracking.experiment={experiment}"),
        *("--set", "max_concurrent_trials=1"),
        *("--set", "scheduler={type: asha, grace_period: 1, reduction_factor: 2}"),
        *("--set", "tracking.models=[final,best]"),
        *("--set", "tracking.register_model=e2e-quickstart"),
        *("--set", "tracking.system_metrics_s=0.5"),
        "--tracking-uri",
        mlflow_server.uri,
        cwd=workdir,
        env={"AWS_DEFAULT_REGION": "eu-west-1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    _, children = _sweep_runs(client, experiment)
    by_threshold = {float(c.data.params["hparams.threshold"]): c for c in children}
    learner, stuck = by_threshold[1e-6], by_threshold[1.0]
    assert stuck.data.tags["bopsweep.stopped_early"] == "true"
    assert len(client.get_metric_history(stuck.info.run_id, "epoch")) == 1
    assert "bopsweep.stopped_early" not in learner.data.tags
    for child in children:
        tags = child.data.tags
        assert tags["mlflow.source.name"] == sweep_file("quickstart.yaml")
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
        assert "AWS_DEFAULT_REGION" in tags["bopsweep.forwarded_env"].split(",")
        (used,) = child.inputs.dataset_inputs
        assert used.dataset.name == "digits"
        accuracy = [m.value for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert child.data.metrics["best_val_accuracy"] == pytest.approx(max(accuracy))
        assert "best_val_loss" in child.data.metrics
        assert any(k.startswith("system/cpu") for k in child.data.metrics)
    # Models are logged by trials that train to the end.
    for name in ("final_model", "best_model"):
        assert learner.data.tags[f"bopsweep.model.{name}"].startswith("models:/")
        assert f"bopsweep.model.{name}" not in stuck.data.tags
    (version,) = client.search_model_versions("name = 'e2e-quickstart'")
    assert version.run_id == learner.info.run_id
