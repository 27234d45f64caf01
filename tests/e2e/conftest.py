"""Fixtures for end-to-end tests: a real ``mlflow server`` on loopback and a way to
run the real ``bopsweep`` command against it."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from bopsweep.sweep import mlflow_client

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(
    url: str,
    timeout: float = 90.0,
    process: subprocess.Popen | None = None,
    accept: tuple[int, ...] = (200,),
) -> None:
    """Wait until ``url`` answers with one of the ``accept`` statuses."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in accept:
                    return
        except urllib.error.HTTPError as error:
            if error.code in accept:
                return
            time.sleep(0.3)
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@dataclass
class MlflowServer:
    uri: str
    root: Path
    port: int
    process: subprocess.Popen
    extra_args: tuple[str, ...] = ()
    env: dict | None = None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start(self) -> None:
        """(Re)start on the same port and store."""
        self.process = _launch(self.root, self.port, self.extra_args, self.env)
        wait_http(f"{self.uri}/health", process=self.process)


def _launch(root: Path, port: int, extra_args=(), env=None) -> subprocess.Popen:
    command = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        *extra_args,
    ]
    log = (root / "server.log").open("ab")
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=mlflow_client.server_env(env)
    )


def start_mlflow_server(root: Path, extra_args=(), env=None) -> MlflowServer:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = _launch(root, port, extra_args, env)
    server = MlflowServer(f"http://127.0.0.1:{port}", root, port, process, tuple(extra_args), env)
    try:
        wait_http(f"{server.uri}/health", process=process)
    except Exception:
        server.stop()
        raise RuntimeError((root / "server.log").read_text()[-3000:]) from None
    return server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory):
    """An ``mlflow server --app-name basic-auth``; yields it and the admin password."""
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


@dataclass
class S3Server:
    endpoint: str
    env: dict  # what a client needs: the endpoint and credentials
    process: subprocess.Popen


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3-compatible server on loopback, with a bucket ``sweeps``; clients reach
    it as pyarrow and the AWS SDKs do (AWS_ENDPOINT_URL and the usual credentials)."""
    port = free_port()
    log = (tmp_path_factory.mktemp("s3") / "moto.log").open("ab")
    process = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        wait_http(f"{endpoint}/", process=process)
        import boto3

        boto3.client("s3", **_boto_args(env)).create_bucket(Bucket="sweeps")
        yield S3Server(endpoint, env, process)
    finally:
        process.terminate()
        process.wait(20)


def _boto_args(env: dict) -> dict:
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


def s3_keys(server: S3Server, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", **_boto_args(server.env))
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="sweeps", Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def bopsweep(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600):
    """Run the installed ``bopsweep`` command; returns the CompletedProcess."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    return subprocess.run(
        [str(BIN / "bopsweep"), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def grid(thresholds: str, gammas: str, epochs: int, *extra: str) -> list[str]:
    """``--set`` options for a threshold x gamma grid of the quickstart sweep."""
    return [
        "--set",
        f"parameters.hparams.threshold.values={thresholds}",
        "--set",
        f"parameters.hparams.gamma.values={gammas}",
        "--set",
        f"train.epochs={epochs}",
        *extra,
    ]


def sweep_file(name: str) -> str:
    return str(REPO / "sweeps" / name)


@pytest.fixture
def workdir(tmp_path):
    path = tmp_path / "work"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
