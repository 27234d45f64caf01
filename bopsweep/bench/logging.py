"""Bench section ``logging``: does MLflow logging slow training down?

The time :class:`~bopsweep.sweep.tracking.TrialTracker` keeps an epoch waiting to
log it, against the time of that epoch (the quickstart MLP on digits, one thread as
in a sweep trial), with a local ``mlflow server`` (``--quick``: a sqlite URI).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bopsweep.bench.common import Context, Row, ms, quickstart_spec_path, samples, target, threads
from bopsweep.sweep.mlflow_client import server_env
from bopsweep.train import Callback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(workdir: Path, timeout_s: float = 90.0) -> Iterator[str]:
    """A local ``mlflow server`` (sqlite store) on a free loopback port, stopped after."""
    port = _free_port()
    log = (workdir / "mlflow-server.log").open("w")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'server-mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "server-artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # Its own session, so stopping it stops the workers it spawns as well.
    server = subprocess.Popen(
        command, stdout=log, stderr=log, start_new_session=True, env=server_env()
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start; see {log.name}")
            time.sleep(0.25)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, 9)
            server.wait()
        log.close()


class _LogEachEpoch(Callback):
    """Logs every epoch through a TrialTracker as a sweep trial does, timing the
    call the epoch waits for."""

    def __init__(self, tracker) -> None:
        self.tracker = tracker
        self.times: list[float] = []

    def on_epoch_end(self, trainer, members: list) -> None:
        metrics = members[0]
        start = time.perf_counter()
        self.tracker.log_epoch(metrics, step=int(metrics["epoch"]))
        self.times.append(time.perf_counter() - start)


def measure(context: Context) -> dict[str, Any]:
    from bopsweep.sweep import mlflow_runs, tracking
    from bopsweep.sweep.spec import load_spec
    from bopsweep.train import Trainer

    plan, workdir = context.plan, context.workdir
    # A quickstart epoch as a sweep trial runs it: the MLP on digits, one thread.
    loaded = load_spec(quickstart_spec_path(), [f"train.epochs={plan.log_epochs}"])
    thread_count = max(1, int(loaded.spec.resources.cpu))

    server_started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if plan.log_server:
            uri = stack.enter_context(mlflow_server(workdir))
            backend = "mlflow server (sqlite store) on 127.0.0.1"
        else:
            uri = f"sqlite:///{workdir / 'log-mlflow.db'}"
            backend = "sqlite URI (no server: --quick)"
        server_start_s = time.perf_counter() - server_started
        exp_id, parent = mlflow_runs.start_parent_run(
            uri, "bopsweep-bench", "logging", tags={}, params={}, artifacts={}
        )
        # The same training without and with live logging, alternating so that
        # drift in the machine's speed hits both alike.
        plain: list[float] = []
        logged: list[float] = []
        waits: list[float] = []
        send_s = send_cpu_s = 0.0
        for round_index in range(2):
            with threads(thread_count):
                plain.extend(m["epoch_time_s"] for m in Trainer(loaded.spec.train).fit()[0])
                tracker = tracking.TrialTracker(uri, exp_id, parent, round_index, "logging")
                callback = _LogEachEpoch(tracker)
                history = Trainer(loaded.spec.train).fit([callback])[0]
                logged.extend(m["epoch_time_s"] for m in history)
                waits.extend(callback.times)
                tracker.finish("FINISHED")
                send_s += tracker.send_s
                send_cpu_s += tracker.send_cpu_s
    epochs = len(logged)
    epoch = samples(plain)
    with_logging = samples(logged)
    log = samples(waits)
    ratio = log["median_s"] / epoch["median_s"]
    return {
        "backend": backend,
        "tracking_uri": uri,
        "server_start_s": server_start_s if plan.log_server else None,
        "metrics_per_epoch": len(history[0]),
        "epoch": epoch,
        "epoch_with_logging": with_logging,
        "log_epoch": log,
        # The sender thread's work, off the training thread: wall seconds in
        # requests and CPU seconds, per epoch.
        "sender_wall_per_epoch_s": send_s / epochs,
        "sender_cpu_per_epoch_s": send_cpu_s / epochs,
        "log_vs_epoch": ratio,
        "epoch_with_vs_without_logging": with_logging["median_s"] / epoch["median_s"],
        "targets": {
            "log_vs_epoch": target(
                ratio, 0.01, "<", "time an epoch waits in MLflow logging / quickstart epoch"
            )
        },
    }


def rows(section: dict[str, Any]) -> list[Row]:
    name = "logging"
    return [
        (name, f"log_epoch ({section['backend']})", ms(section["log_epoch"]), "", ""),
        (name, "quickstart epoch", ms(section["epoch"]), "", ""),
        (name, "epoch while logging", ms(section["epoch_with_logging"]), "", ""),
        (
            name,
            "sender thread / epoch",
            f"{section['sender_wall_per_epoch_s'] * 1e3:.1f} ms wall, "
            f"{section['sender_cpu_per_epoch_s'] * 1e3:.1f} ms CPU",
            "",
            "",
        ),
    ]
