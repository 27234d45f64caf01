"""MLflow tracking: one parent run per sweep, one child run per trial.

Child runs are created and written from inside the trial, so trials on remote Ray
workers log straight to the tracking server. Every write that matters is keyed so
that it can be repeated safely:

* a child run is found again by its ``bopsweep.trial_key`` tag (parent run id +
  trial index), so a retried or resumed trial keeps logging into the same run;
* each epoch is one ``log_batch`` request (never one request per metric), and steps
  the run already holds are skipped, so no metric step is logged twice.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bopsweep.errors import UserError

PARENT_TAG = "mlflow.parentRunId"
TRIAL_KEY_TAG = "bopsweep.trial_key"
SWEEP_TAG = "bopsweep.sweep"
ROLE_TAG = "bopsweep.role"
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")


def default_tracking_uri() -> str:
    """MLflow's own default, made absolute: Ray workers run in other directories."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_tracking_uri(cli_uri: str | None, spec_uri: str | None) -> str:
    """``--tracking-uri`` > ``MLFLOW_TRACKING_URI`` > the spec > the local default."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or spec_uri
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative sqlite path would resolve against each worker's own directory.
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def is_local_uri(uri: str) -> bool:
    """A store only this machine can reach (a file or sqlite database)."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_connection(uri: str) -> None:
    """Fail at start, with a clear message, when the server is unreachable or the
    credentials are wrong; not in the middle of a sweep."""
    from mlflow.exceptions import MlflowException

    try:
        client(uri).search_experiments(max_results=1)
    except MlflowException as error:
        text = str(error)
        if "401" in text or "403" in text or "nauthorized" in text or "ermission" in text:
            raise UserError(
                f"MLflow at {uri} refused the credentials: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
            ) from None
        raise UserError(f"cannot reach the MLflow tracking server at {uri}: {text[:300]}") from None


def experiment_id(uri: str, name: str) -> str:
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise UserError(
                f"MLflow experiment {name!r} is deleted: restore it or pick another name"
            )
        return experiment.experiment_id
    return mlflow_client.create_experiment(name)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dot-path keys (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _params(values: Mapping[str, Any]):
    from mlflow.entities import Param

    # MLflow caps param values at 6000 characters.
    return [Param(k, str(v)[:6000]) for k, v in values.items()]


def log_params(uri: str, run_id: str, values: Mapping[str, Any]) -> None:
    items = _params(values)
    mlflow_client = client(uri)
    for start in range(0, len(items), 100):  # log_batch takes at most 100 params
        mlflow_client.log_batch(run_id, params=items[start : start + 100], synchronous=True)


def start_parent_run(
    uri: str,
    experiment: str,
    name: str,
    *,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    artifacts: Mapping[str, str],
) -> tuple[str, str]:
    """Create the sweep's parent run; returns ``(experiment_id, run_id)``."""
    exp_id = experiment_id(uri, experiment)
    mlflow_client = client(uri)
    run = mlflow_client.create_run(
        exp_id, run_name=name, tags={**tags, SWEEP_TAG: name, ROLE_TAG: "sweep"}
    )
    run_id = run.info.run_id
    log_params(uri, run_id, params)
    for artifact_file, text in artifacts.items():
        mlflow_client.log_text(run_id, text, artifact_file)
    return exp_id, run_id


def child_runs(uri: str, exp_id: str, parent_run_id: str) -> list:
    """Every child run of a parent (all pages)."""
    mlflow_client = client(uri)
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs(
            [exp_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


class TrialTracker:
    """The child run of one trial, written from wherever the trial runs."""

    def __init__(
        self,
        uri: str,
        exp_id: str,
        parent_run_id: str,
        trial_index: int,
        run_name: str,
        *,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.uri = uri
        self.client = client(uri)
        self.trial_key = f"{parent_run_id}:{trial_index}"
        existing = self.client.search_runs(
            [exp_id], f"tags.`{TRIAL_KEY_TAG}` = '{self.trial_key}'", max_results=1
        )
        if existing:
            self.run_id = existing[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            history = self.client.get_metric_history(self.run_id, "epoch")
            self.last_step = max((m.step for m in history), default=-1)
            self.resumed = True
        else:
            run = self.client.create_run(
                exp_id,
                run_name=run_name,
                tags={
                    PARENT_TAG: parent_run_id,
                    TRIAL_KEY_TAG: self.trial_key,
                    ROLE_TAG: "trial",
                    **(tags or {}),
                },
            )
            self.run_id = run.info.run_id
            self.last_step = -1
            self.resumed = False

    def log_params(self, values: Mapping[str, Any]) -> None:
        if not self.resumed:
            log_params(self.uri, self.run_id, values)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(
            self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True
        )

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """One request for all of an epoch's metrics; a step already logged is skipped."""
        from mlflow.entities import Metric

        if step <= self.last_step:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        # log_batch takes at most 1000 metrics; an epoch has a few dozen.
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
        self.last_step = step

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
