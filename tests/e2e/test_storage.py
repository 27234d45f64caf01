"""A sweep whose storage is an S3 bucket (moto's S3-compatible server): a driver
killed mid-sweep resumes from what it left there, ``sync`` reads the trials' results
from there, and ``--restart`` clears it."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import bopsweep, grid, s3_keys, sweep_file
from tests.e2e.test_reliability import assert_each_step_once, start_run, sweep_runs, wait_for

pytestmark = pytest.mark.e2e

STORAGE = "s3://sweeps/results"


def test_a_sweep_on_s3_resumes_syncs_and_restarts(s3_server, mlflow_server, workdir):
    experiment = "e2e-s3"
    epochs = 60  # long enough to kill the driver while the second trial runs
    args = [
        sweep_file("quickstart.yaml"),
        *grid("[1e-6]", "[1e-3,1e-4]", epochs),
        *("--set", f"tracking.experiment={experiment}"),
        # One trial after the other (not fused into one group): the driver is killed
        # between them.
        *("--set", "max_concurrent_trials=1", "--set", "fuse=off"),
        *("--storage", STORAGE),
        *("--tracking-uri", mlflow_server.uri),
    ]
    client = MlflowClient(mlflow_server.uri)
    driver = start_run(args, workdir, env=s3_server.env)

    def one_finished_and_one_running():
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], "tags.`bopsweep.role` = 'trial'")
        statuses = Counter(r.info.status for r in runs)
        return statuses["FINISHED"] >= 1 and statuses["RUNNING"] >= 1 and runs

    try:
        runs = wait_for(one_finished_and_one_running)
        # Past Ray Tune's snapshot period (2 s for a small sweep), so that the sweep's
        # state records the first trial as finished; the second logs a few epochs.
        time.sleep(3.0)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    keys = s3_keys(s3_server, "results/quickstart/")
    assert "results/quickstart/bopsweep_sweep.json" in keys
    assert any(k.startswith("results/quickstart/experiment_state-") for k in keys), keys
    finished = {
        r.data.tags["bopsweep.trial_key"]: r.info.end_time
        for r in runs
        if r.info.status == "FINISHED"
    }

    resumed = bopsweep("run", *args, cwd=workdir, env=s3_server.env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "(resuming)" in resumed.stderr + resumed.stdout
    parents, children = sweep_runs(client, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        assert_each_step_once(client, child.info.run_id, epochs)
        key = child.data.tags["bopsweep.trial_key"]
        if key in finished:
            assert child.info.end_time == finished[key], "a finished trial was run again"

    # sync reads every trial's result.json from the bucket: nothing is missing.
    synced = bopsweep("sync", "quickstart", "--storage", STORAGE, cwd=workdir, env=s3_server.env)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert "0 epochs sent; 2 trials (2 finished" in synced.stdout + synced.stderr

    # --restart clears the folder in the bucket: the first run's Ray state is gone.
    before = {k for k in s3_keys(s3_server, "results/quickstart/") if "experiment_state-" in k}
    restarted = bopsweep(
        "run", *args, "--set", "train.epochs=2", "--restart", cwd=workdir, env=s3_server.env
    )
    assert restarted.returncode == 0, restarted.stdout[-2000:] + restarted.stderr[-3000:]
    parents, _ = sweep_runs(client, experiment)
    assert len(parents) == 2, "--restart starts a new parent run"
    keys = set(s3_keys(s3_server, "results/quickstart/"))
    assert before and not before & keys
    assert any("experiment_state-" in k for k in keys)
