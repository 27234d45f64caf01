"""A two-node Ray cluster on loopback: sweeps reach it by ``--address`` and as Ray Jobs,
and every trial logs from its own node straight to the tracking server."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import BIN, REPO, bopsweep, free_port, grid, sweep_file, wait_http

pytestmark = pytest.mark.e2e

ONE_TRIAL = grid("[1e-6]", "[1e-3]", 1)
# MLflow and artifact-store settings besides credentials that trials must get
# (harmless here: TLS options of an http server, an S3 region nothing uses).
OTHER_SETTINGS = {
    "MLFLOW_TRACKING_INSECURE_TLS": "true",
    "MLFLOW_S3_IGNORE_TLS": "true",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


# The cluster runs with Ray's token authentication, as a shared cluster should; every
# client (ray CLI, bopsweep) gets the token from the environment.
RAY_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}


def _ray_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    # The job entrypoint runs `bopsweep` from the head node's PATH.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **RAY_AUTH}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """``ray start --head`` plus a second node, one CPU each, on 127.0.0.1."""
    port, dashboard = free_port(), free_port()
    env = _ray_env()
    logs = tmp_path_factory.mktemp("ray-logs")
    ray = str(BIN / "ray")
    common = ["--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1", "--block"]
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            f"--port={port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            *common,
            *_agent_ports(),
        ],
        env=env,
        stdout=(logs / "head.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    nodes = [head]
    try:
        # Ray's token authentication is on: an answer of 401 means the server is up.
        wait_http(
            f"http://127.0.0.1:{dashboard}/api/version",
            timeout=120,
            process=head,
            accept=(200, 401),
        )
        worker = subprocess.Popen(
            [ray, "start", f"--address=127.0.0.1:{port}", *common, *_agent_ports()],
            env=env,
            stdout=(logs / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        nodes.append(worker)
        _wait_for_nodes(f"127.0.0.1:{port}", 2, env)
        yield {"address": f"127.0.0.1:{port}", "jobs": f"http://127.0.0.1:{dashboard}"}
    finally:
        for process in reversed(nodes):  # --block: SIGTERM stops that node's processes
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)


def _agent_ports() -> list[str]:
    """Ports of one node's agents. Two nodes on one machine would otherwise race for
    Ray's fixed defaults (52365 and friends); the loser's job agent never serves, and
    job submission then fails with 'No available agent'."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


def _wait_for_nodes(address: str, count: int, env: dict) -> None:
    script = (
        "import ray, time\n"
        f"ray.init(address='{address}', logging_level='ERROR')\n"
        "deadline = time.time() + 120\n"
        f"while len([n for n in ray.nodes() if n['Alive']]) < {count}:\n"
        "    assert time.time() < deadline, 'second node never joined'\n"
        "    time.sleep(0.5)\n"
    )
    subprocess.run([str(BIN / "python"), "-c", script], env=env, check=True, timeout=180)


def test_sweep_runs_on_both_nodes(ray_cluster, auth_server, workdir, monkeypatch):
    # The tracking server asks for credentials, which only the driver's environment
    # holds: the trials on both nodes get them from the driver.
    server, password = auth_server
    credentials = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        *grid("[0,1e-6]", "[1e-3,1e-4]", 2),
        "--set",
        "tracking.experiment=e2e-cluster",
        "--address",
        ray_cluster["address"],
        "--tracking-uri",
        server.uri,
        cwd=workdir,
        env={**RAY_AUTH, **credentials, **OTHER_SETTINGS},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("e2e-cluster")
    children = client.search_runs([exp.experiment_id], "tags.`bopsweep.role` = 'trial'")
    assert len(children) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    nodes = {c.data.tags["bopsweep.node_id"] for c in children}
    assert len(nodes) == 2, f"trials ran on {nodes}"
    for child in children:  # the nodes' workers got the driver's other settings too
        seen = child.data.tags["bopsweep.forwarded_env"].split(",")
        assert set(OTHER_SETTINGS) <= set(seen), seen
    for child in children:
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "flip_ratio"))
        assert steps == [0, 1]


def test_a_missing_cluster_token_is_named_in_one_message(ray_cluster, mlflow_server, workdir):
    """Without the cluster's token, Ray's own cause (InvalidAuthToken) is in the
    message with what to set; Ray's C++ retry lines stay off the terminal."""
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        *ONE_TRIAL,
        "--address",
        ray_cluster["address"],
        "--tracking-uri",
        mlflow_server.uri,
        cwd=workdir,
        env={"PATH": _ray_env()["PATH"]},
        timeout=300,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "InvalidAuthToken" in errors[0] and "RAY_AUTH_TOKEN" in errors[0]
    assert "gcs_client" not in result.stderr and "Traceback" not in result.stderr


def test_local_tracking_store_is_refused_on_a_multi_node_cluster(ray_cluster, workdir):
    result = bopsweep(
        "run",
        sweep_file("quickstart.yaml"),
        *ONE_TRIAL,
        "--address",
        ray_cluster["address"],
        cwd=workdir,
        env=RAY_AUTH,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "workers on other nodes cannot reach" in result.stderr, result.stderr


def test_bopsweep_submit_runs_the_sweep_as_a_ray_job(ray_cluster, mlflow_server, tmp_path):
    result = bopsweep(
        "submit",
        "sweeps/quickstart.yaml",
        *ONE_TRIAL,
        "--set",
        "tracking.experiment=e2e-submit",
        "--address",
        ray_cluster["jobs"],
        "--tracking-uri",
        mlflow_server.uri,
        "--storage",
        str(tmp_path / "results"),  # the cluster's shared storage
        cwd=REPO,
        env=RAY_AUTH,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "SUCCEEDED" in result.stderr
    # The tracking URI travelled as an environment variable, not on the command line.
    assert mlflow_server.uri not in result.stderr.split("submitted", 1)[1].splitlines()[0]
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("e2e-submit")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)


def test_ray_job_submit_path(ray_cluster, mlflow_server, tmp_path):
    env = _ray_env()
    result = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            ray_cluster["jobs"],
            "--working-dir",
            ".",
            "--runtime-env-json",
            '{"excludes": [".venv/", ".git/", "data/", "bopsweep_results/"], '
            f'"env_vars": {{"MLFLOW_TRACKING_URI": "{mlflow_server.uri}"}}}}',
            "--",
            "bopsweep",
            "run",
            "sweeps/quickstart.yaml",
            *ONE_TRIAL,
            "--set",
            "tracking.experiment=e2e-ray-job",
            "--address",
            "auto",
            "--storage",
            str(tmp_path / "results"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("e2e-ray-job")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
