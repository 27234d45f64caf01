"""``bopsweep submit``: run a sweep on a Ray cluster as a Ray Job.

Ray recommends Jobs over Ray Client for Tune: the driver (``bopsweep run``) then
runs on the cluster's head node, next to the trials, and survives the laptop that
submitted it going to sleep. The working directory (the spec and the sweeps
folder) is uploaded with the job. The tracking URI and MLflow credentials travel
as the job's environment variables, never on its command line, where Ray would
show them in the job list.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from bopsweep.errors import UserError
from bopsweep.sweep.mlflow_client import credential_env

AGENT_WAIT_S = 120
# Large or private things that must not be uploaded with the working directory.
UPLOAD_EXCLUDES = [".venv/", ".git/", "bopsweep_results/", "mlflow.db*", "mlruns/", "data/"]


def submit_sweep(
    spec_path: Path,
    overrides: list[str],
    *,
    address: str,
    tracking_uri: str | None,
    storage: str | None,
    working_dir: Path,
    wait: bool,
    echo=print,
) -> tuple[str, str]:
    """Submit; returns ``(submission_id, final_status)`` (``PENDING`` if not waiting)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    working_dir = working_dir.resolve()
    try:
        relative_spec = spec_path.resolve().relative_to(working_dir)
    except ValueError:
        raise UserError(
            f"{spec_path} is outside the working directory {working_dir} that is uploaded "
            "with the job: run from the project folder or pass --working-dir"
        ) from None
    command = ["bopsweep", "run", relative_spec.as_posix(), "--address", "auto"]
    for override in overrides:
        command += ["--set", override]
    if storage:
        command += ["--storage", storage]
    env_vars = credential_env()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        env_vars["MLFLOW_TRACKING_URI"] = uri
    try:
        client = JobSubmissionClient(address)
    except Exception as error:  # Ray raises ConnectionError or RuntimeError here
        raise UserError(f"cannot reach the Ray job server at {address}: {error}") from None
    runtime_env = {
        "working_dir": str(working_dir),
        "excludes": UPLOAD_EXCLUDES,
        "env_vars": env_vars,
    }
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            submission_id = client.submit_job(
                entrypoint=shlex.join(command),
                runtime_env=runtime_env,
                metadata={"bopsweep.spec": relative_spec.as_posix()},
            )
            break
        except RuntimeError as error:
            # A head node that has just started answers before its job agent is up.
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise UserError(
                    f"the Ray job server at {address} refused the job: {error}"
                ) from None
            time.sleep(2)
    echo(f"submitted {submission_id} to {address}: {shlex.join(command)}")
    if not wait:
        return submission_id, "PENDING"
    printed = 0
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while True:
        status = client.get_job_status(submission_id)
        logs = client.get_job_logs(submission_id)
        if len(logs) > printed:
            echo(logs[printed:].rstrip("\n"))
            printed = len(logs)
        if status in terminal:
            return submission_id, str(status.value)
        time.sleep(2)
