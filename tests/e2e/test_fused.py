"""Fused trials end to end: real Ray Tune, a real MLflow server.

A group of four members, one of which diverges, whose worker is killed mid-epoch
and retried: every member has its own child run under the sweep's parent, with the
params, tags and metric names of an unfused trial, each step exactly once; the
diverged member is FAILED, the others FINISHED. Under ASHA the group stops its own
members at the rungs.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from bopsweep import testing
from tests.e2e.conftest import bopsweep, sweep_file
from tests.e2e.test_reliability import assert_each_step_once, sweep_runs

pytestmark = pytest.mark.e2e


def test_a_fused_group_logs_each_member_as_its_own_run(mlflow_server, workdir, tmp_path):
    marker = tmp_path / "killed"
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        "--set",
        "parameters={hparams.threshold: {values: [1.0e-6, 1.0e-5]}, "
        "hparams.lr: {values: [0.01, 1.0e38]}}",
        "--set",
        "train.hparams.fp_optimizer=sgd",
        "--set",
        "train.epochs=3",
        "--set",
        "fuse=4",
        "--set",
        "max_failures=1",
        "--set",
        "tracking.experiment=e2e-fused",
        "--tracking-uri",
        mlflow_server.uri,
        cwd=workdir,
        env={
            "BOPSWEEP_TRIAL_CALLBACKS": testing.KILL_CALLBACK,
            testing.KILL_AT_EPOCH_ENV: "1",
            testing.KILL_TRIAL_ENV: "0",
            testing.KILL_MARKER_ENV: str(marker),
        },
    )
    # Two members diverged: the sweep says so and exits 1.
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 trials (4 trained as 1 fused groups)" in result.stderr + result.stdout
    assert marker.exists(), "the group's worker was never killed"
    client = MlflowClient(mlflow_server.uri)
    parents, children = sweep_runs(client, "e2e-fused")
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents[0].info.run_id
    by_config = {
        (float(c.data.params["hparams.threshold"]), float(c.data.params["hparams.lr"])): c
        for c in children
    }
    for (_, lr), child in by_config.items():
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.data.tags["bopsweep.fused_group"] == "fused_000"
        assert child.data.params["model"] == "mlp"
        if lr > 1:
            assert child.info.status == "FAILED"
            assert "diverged" in child.data.tags["bopsweep.failure"]
        else:
            assert child.info.status == "FINISHED"
            assert_each_step_once(client, child.info.run_id, 3)
            assert "flip_ratio/dense2" in child.data.metrics
    assert parents[0].data.tags["bopsweep.trials_failed"] == "2"


def test_asha_stops_members_inside_a_group(mlflow_server, workdir):
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        "--set",
        "parameters.hparams.threshold.values=[0,1.0e-6]",
        "--set",
        "parameters.hparams.gamma.values=[1.0e-2,1.0e-4]",
        "--set",
        "train.epochs=4",
        "--set",
        "fuse=4",
        "--set",
        "scheduler={type: asha, grace_period: 1, reduction_factor: 2}",
        "--set",
        "tracking.experiment=e2e-fused-asha",
        "--tracking-uri",
        mlflow_server.uri,
        cwd=workdir,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    _, children = sweep_runs(client, "e2e-fused-asha")
    epochs = sorted(
        (len(client.get_metric_history(c.info.run_id, "epoch")), c.info.status) for c in children
    )
    # Rungs at 1 and 2 epochs: 4 -> 2 -> 1 members.
    # Stopped members end FINISHED, as Ray Tune ends the trials its scheduler stops.
    assert epochs == [(1, "FINISHED"), (1, "FINISHED"), (2, "FINISHED"), (4, "FINISHED")]
    for child in children:
        stopped = len(client.get_metric_history(child.info.run_id, "epoch")) < 4
        assert (child.data.tags.get("bopsweep.stopped_early") == "true") == stopped
