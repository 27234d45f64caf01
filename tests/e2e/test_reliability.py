"""Faults injected into real sweeps: killed workers, a killed driver, Ctrl-C, a
tracking server that goes away, divergence, authentication and load.

Every check goes through MlflowClient against a real ``mlflow server``: one child
run per trial, every metric step exactly once, no run left RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bopsweep import testing
from bopsweep.sweep import mlflow_client
from tests.e2e.conftest import BIN, bopsweep, grid, start_mlflow_server, sweep_file

pytestmark = pytest.mark.e2e


def sweep_runs(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def assert_each_step_once(client: MlflowClient, run_id: str, epochs: int) -> None:
    for key in ("epoch", "val_accuracy", "flip_ratio", "train_loss"):
        steps = Counter(m.step for m in client.get_metric_history(run_id, key))
        assert steps == Counter(range(epochs)), (key, steps)
    # The per-step series: every optimizer step of every epoch, once.
    steps = Counter(m.step for m in client.get_metric_history(run_id, "log_flip_ratio_last"))
    assert len(steps) % epochs == 0 and steps == Counter(range(len(steps))), steps


def start_run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    return subprocess.Popen(
        [str(BIN / "bopsweep"), "run", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for(predicate, timeout: float = 240.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not reached")


def epochs_logged(client: MlflowClient, experiment: str) -> int:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], "tags.`bopsweep.role` = 'trial'")
    return sum(len(client.get_metric_history(r.info.run_id, "epoch")) for r in runs)


def _kill_worker_env(marker: Path) -> dict[str, str]:
    """The first attempt of the Ray trial holding trial 0 SIGKILLs its own worker in
    the middle of its third epoch."""
    return {
        "BOPSWEEP_TRIAL_CALLBACKS": testing.KILL_CALLBACK,
        testing.KILL_AT_EPOCH_ENV: "2",
        testing.KILL_TRIAL_ENV: "0",
        testing.KILL_MARKER_ENV: str(marker),
    }


def _assert_complete(client: MlflowClient, experiment: str, trials: int, epochs: int) -> None:
    parents, children = sweep_runs(client, experiment)
    assert len(parents) == 1 and len(children) == trials
    for child in children:
        assert child.info.status == "FINISHED"
        assert_each_step_once(client, child.info.run_id, epochs)


def _store(store: str, mlflow_server, workdir: Path) -> tuple[str, list[str]]:
    """The tracking URI a test reads, and the arguments that choose it: a tracking
    server, or no argument at all (the embedded default: ./mlflow.db, a sqlite file
    written ahead)."""
    if store == "server":
        return mlflow_server.uri, ["--tracking-uri", mlflow_server.uri]
    return f"sqlite:///{workdir / 'mlflow.db'}", []


def _client_once_made(uri: str) -> MlflowClient | None:
    """A client of ``uri`` once its store exists: opening a sqlite path that does not
    exist yet would build a store there before the sweep's own."""
    path = mlflow_client.sqlite_path(uri)
    return None if path is not None and not path.exists() else MlflowClient(uri)


# Fused groups on the embedded local store, single trials on a server: every kill
# test covers both stores (the chaos test runs both fusion modes on a server).
@pytest.mark.parametrize(("fuse", "store"), [("off", "server"), ("2", "local")])
def test_killed_worker_resumes_into_the_same_run(mlflow_server, workdir, tmp_path, fuse, store):
    """A worker killed mid-epoch is retried from its checkpoint within the run, by
    default (max_failures: 3), whether its Ray trial holds one trial or a group."""
    marker = tmp_path / "killed"
    experiment = f"e2e-kill-worker-{fuse}"
    uri, tracking = _store(store, mlflow_server, workdir)
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        *grid("[1e-6]", "[1e-3,1e-4]", 4, "--set", f"fuse={fuse}"),
        "--set",
        f"tracking.experiment={experiment}",
        *tracking,
        cwd=workdir,
        env=_kill_worker_env(marker),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert marker.exists(), "the worker was never killed"
    _assert_complete(MlflowClient(uri), experiment, 2, 4)


def test_a_rerun_resumes_a_group_whose_worker_died(mlflow_server, workdir, tmp_path):
    """With no retries left, a fused group whose worker died ends the run unfinished;
    running the same command again resumes it from its checkpoint (Ray's restore
    leaves errored trials alone unless told)."""
    marker = tmp_path / "killed"
    experiment = "e2e-kill-worker-rerun"
    args = [
        sweep_file("quickstart.yaml"),
        *grid("[1e-6]", "[1e-3,1e-4]", 4, "--set", "fuse=2", "--set", "max_failures=0"),
        "--set",
        f"tracking.experiment={experiment}",
        "--tracking-uri",
        mlflow_server.uri,
    ]
    first = bopsweep("run", *args, cwd=workdir, env=_kill_worker_env(marker))
    assert marker.exists(), "the worker was never killed"
    assert first.returncode != 0, first.stdout[-2000:]
    again = bopsweep("run", *args, cwd=workdir, env=_kill_worker_env(marker))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    _assert_complete(MlflowClient(mlflow_server.uri), experiment, 2, 4)


def test_divergence_fails_that_trial_only(mlflow_server, workdir):
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        "--set",
        "parameters={hparams.lr: {values: [0.01, 1.0e38]}}",
        "--set",
        "train.hparams.fp_optimizer=sgd",
        "--set",
        "train.epochs=2",
        "--set",
        "tracking.experiment=e2e-nan",
        "--tracking-uri",
        mlflow_server.uri,
        cwd=workdir,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "trial 001 failed" in result.stdout
    client = MlflowClient(mlflow_server.uri)
    parents, children = sweep_runs(client, "e2e-nan")
    by_lr = {float(c.data.params["hparams.lr"]): c for c in children}
    assert by_lr[0.01].info.status == "FINISHED"
    diverged = by_lr[1e38]
    assert diverged.info.status == "FAILED"
    assert "diverged" in diverged.data.tags["bopsweep.failure"]
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags["bopsweep.trials_failed"] == "1"


@pytest.mark.parametrize(
    ("fuse", "gammas", "store"), [("off", "[1e-3]", "server"), ("2", "[1e-3,1e-4]", "local")]
)
def test_killed_driver_resumes_without_rerunning_finished_trials(
    mlflow_server, workdir, fuse, gammas, store
):
    """One Ray trial at a time: two trials unfused, or two fused groups of two. The
    driver is killed as soon as the first Ray trial's runs have ended: Ray Tune has not
    yet recorded that end (it saves its state every few seconds) and runs that trial
    again on resume, which must leave its finished runs as they are."""
    experiment = f"e2e-kill-driver-{fuse}"
    first = 1 if fuse == "off" else 2
    epochs = 30
    uri, tracking = _store(store, mlflow_server, workdir)
    args = [
        sweep_file("quickstart.yaml"),
        *grid("[0,1e-6]", gammas, epochs),
        "--set",
        f"tracking.experiment={experiment}",
        "--set",
        "max_concurrent_trials=1",
        "--set",
        f"fuse={fuse}",
        *tracking,
    ]
    driver = start_run(args, workdir)

    def first_ray_trial_finished():
        client = _client_once_made(uri)
        exp = client and client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], "tags.`bopsweep.role` = 'trial'")
        return sum(r.info.status == "FINISHED" for r in runs) >= first and runs

    try:
        runs = wait_for(first_ray_trial_finished, every=0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = {
        r.data.tags["bopsweep.trial_key"]: r.info.end_time
        for r in runs
        if r.info.status == "FINISHED"
    }
    changed = bopsweep("run", *args, "--set", "train.seed=7", cwd=workdir)
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "the spec changed since sweep 'quickstart' was started" in changed.stderr
    assert "--restart" in changed.stderr
    resumed = bopsweep("run", *args, cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    client = MlflowClient(uri)
    parents, children = sweep_runs(client, experiment)
    assert len(parents) == 1, "the parent run must be reused"
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 2 * first, "no duplicate child runs"
    for child in children:
        assert child.info.status == "FINISHED"
        assert_each_step_once(client, child.info.run_id, epochs)
        key = child.data.tags["bopsweep.trial_key"]
        if key in before:
            assert child.info.end_time == before[key], "a finished trial was run again"


def test_ctrl_c_marks_runs_killed_and_says_how_to_resume(mlflow_server, workdir):
    experiment = "e2e-ctrl-c"
    client = MlflowClient(mlflow_server.uri)
    driver = start_run(
        [
            sweep_file("quickstart.yaml"),
            *grid("[0,1e-6]", "[1e-3]", 400),
            "--set",
            f"tracking.experiment={experiment}",
            "--tracking-uri",
            mlflow_server.uri,
        ],
        workdir,
    )
    wait_for(lambda: epochs_logged(client, experiment) >= 2)
    os.killpg(driver.pid, signal.SIGINT)
    output, _ = driver.communicate(timeout=180)
    assert driver.returncode == 130, output[-3000:]
    assert "resume with `bopsweep run" in output
    # The whole command as typed: without --tracking-uri it would resume another sweep.
    assert f"--tracking-uri {mlflow_server.uri}`" in output
    parents, children = sweep_runs(client, experiment)
    assert parents[0].info.status == "KILLED"
    assert children and all(c.info.status == "KILLED" for c in children)


def _two_trials_logging_to(server, experiment: str, workdir: Path, env=None, fuse="auto"):
    """Start a 2-trial, 40-epoch quickstart sweep; return once it has logged."""
    driver = start_run(
        [
            sweep_file("quickstart.yaml"),
            *grid("[1e-6]", "[1e-3,1e-4]", 40, "--set", f"fuse={fuse}"),
            "--set",
            f"tracking.experiment={experiment}",
            "--tracking-uri",
            server.uri,
        ],
        workdir,
        env=env,
    )
    wait_for(lambda: epochs_logged(MlflowClient(server.uri), experiment) >= 2)
    return driver


def test_tracking_outage_loses_nothing(workdir, tmp_path):
    server = start_mlflow_server(tmp_path / "flaky")
    experiment = "e2e-outage"
    client = MlflowClient(server.uri)
    try:
        driver = _two_trials_logging_to(server, experiment, workdir)
        server.stop()
        time.sleep(8)  # several epochs go by with nowhere to log them
        server.start()
        output, _ = driver.communicate(timeout=400)
        assert driver.returncode == 0, output[-3000:]
        parents, children = sweep_runs(client, experiment)
        assert len(parents) == 1 and len(children) == 2
        for child in children:
            assert child.info.status == "FINISHED"
            assert_each_step_once(client, child.info.run_id, 40)
    finally:
        server.stop()


def test_a_rerun_waits_for_the_server_and_ends_complete(workdir, tmp_path):
    """A sweep whose server went away ends with epochs left behind; the same command,
    run while the server is still down, waits for it (the sweep's parent run is
    there) and, once it answers, sends what the first run could not: complete
    without `bopsweep sync`."""
    server = start_mlflow_server(tmp_path / "restarting")
    experiment = "e2e-rerun-waits"
    client = MlflowClient(server.uri)
    env = {"BOPSWEEP_TRACKING_DRAIN_S": "3"}
    try:
        driver = _two_trials_logging_to(server, experiment, workdir, env=env, fuse="2")
        server.stop()
        output, _ = driver.communicate(timeout=400)
        assert driver.returncode == 1, output[-3000:]
        assert "bopsweep sync quickstart" in output
        rerun = start_run(driver.args[2:], workdir, env=env)
        time.sleep(6)  # the rerun finds no server, and waits
        server.start()
        output, _ = rerun.communicate(timeout=400)
        assert rerun.returncode == 0, output[-3000:]
        assert "does not answer" in output and "waiting for it" in output
        assert "answers again" in output
        assert "bopsweep sync" not in output
        parents, children = sweep_runs(client, experiment)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == 2
        for child in children:
            assert child.info.status == "FINISHED"
            assert_each_step_once(client, child.info.run_id, 40)
    finally:
        server.stop()


def test_a_rerun_without_its_server_trains_now_and_sync_completes_it(workdir, tmp_path):
    """The driver dies mid-sweep, then the tracking server goes away too: the rerun,
    told to go on without it, trains the rest (no trial waits for the server), ends
    with the sync hint, and once the server is back `bopsweep sync` makes every run
    complete from the fused group's results: each epoch and each optimizer step of
    the per-step series once; a second sync has nothing left to send."""
    server = start_mlflow_server(tmp_path / "away")
    experiment = "e2e-without-tracking"
    client = MlflowClient(server.uri)
    epochs = 40
    try:
        driver = _two_trials_logging_to(server, experiment, workdir, fuse="2")
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        server.stop()
        refused = start_run([*driver.args[2:], "--tracking-wait", "1"], workdir)
        output, _ = refused.communicate(timeout=120)
        assert refused.returncode == 2, output[-3000:]
        assert "--without-tracking" in output
        rerun = start_run([*driver.args[2:], "--tracking-wait", "1", "--without-tracking"], workdir)
        output, _ = rerun.communicate(timeout=400)
        assert rerun.returncode == 1, output[-3000:]
        said = " ".join(output.split())  # the terminal's lines, unwrapped
        assert "going on without it (--without-tracking)" in said
        assert "bopsweep sync quickstart" in said
        # The live table and the leaderboard (from the local results): every epoch of
        # both trials.
        assert said.count("40/40") >= 2 and said.count("│ 40 │") == 2, output[-3000:]
        server.start()
        synced = bopsweep("sync", "quickstart", cwd=workdir)
        assert synced.returncode == 0, synced.stderr[-3000:]
        parents, children = sweep_runs(client, experiment)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == 2
        for child in children:
            assert child.info.status == "FINISHED"
            assert_each_step_once(client, child.info.run_id, epochs)
        again = bopsweep("sync", "quickstart", cwd=workdir)
        assert again.returncode == 0 and "0 epochs sent" in again.stderr
    finally:
        server.stop()


def test_many_trials_log_concurrently_without_loss(mlflow_server, workdir):
    experiment = "e2e-load"
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        *grid("[0,1e-7,1e-6,1e-5]", "[1e-2,1e-3,1e-4,1e-5]", 2),
        "--set",
        "seeds=[0,1]",
        "--set",
        "train.max_train_samples=256",
        "--set",
        f"tracking.experiment={experiment}",
        "--tracking-uri",
        mlflow_server.uri,
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    _, children = sweep_runs(client, experiment)
    assert len(children) == 32
    for child in children:
        assert child.info.status == "FINISHED"
        assert_each_step_once(client, child.info.run_id, 2)


def test_a_user_error_inside_trials_stops_the_sweep_with_one_message(workdir):
    """An error every trial would hit again (here a schedule missing its decay
    settings, found when the trial builds its optimizer) is not retried: the sweep
    stops, says it once, and leaves no run RUNNING."""
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        *grid("[1e-6]", "[1e-3,1e-4]", 3, "--set", "max_failures=2"),
        "--set",
        "max_concurrent_trials=1",
        "--set",
        "train.hparams.lr_schedule=exponential",
        cwd=workdir,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "lr_schedule=exponential needs lr_decay_factor" in errors[0]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents, children = sweep_runs(client, "quickstart")
    assert len(parents) == 1 and parents[0].info.status in ("FAILED", "KILLED")
    assert all(c.info.status != "RUNNING" for c in children)
    # Not retried: one attempt of one Ray trial (here both trials fused), then the
    # sweep stopped.
    results = workdir / "bopsweep_results" / "quickstart"
    attempts = [p for p in results.glob("*_*/result.json") if p.read_text().strip()]
    assert len(attempts) == 1
    assert len(attempts[0].read_text().strip().splitlines()) == 1
