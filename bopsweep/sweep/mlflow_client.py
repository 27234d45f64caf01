"""MLflow's store and environment for bopsweep: the tags and keys of its runs,
tracking URIs and their precedence, credentials (and how they travel to remote
trials), the client, the connection check that fails before a sweep starts, local
stores, and aiming MLflow's fluent API at a store for one call.

The sweep's runs themselves (the parent's start and end, every child's final status,
reading a sweep back) are :mod:`bopsweep.sweep.mlflow_runs`; a trial's own writer is
:class:`~bopsweep.sweep.tracking.TrialTracker`. Both build on this module, so every
part agrees on tags and paging. MLflow itself is imported only when a function
needs it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bopsweep.errors import UserError
from bopsweep.sweep import cache_dir

PARENT_TAG = "mlflow.parentRunId"
TRIAL_KEY_TAG = "bopsweep.trial_key"
SWEEP_TAG = "bopsweep.sweep"
ROLE_TAG = "bopsweep.role"
SWEPT_PREFIX = "swept."
# MLflow 3's UI opens an experiment on the view its kind names; one without the tag
# opens on the GenAI overview of traces, where a sweep's runs are not shown.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# MLflow reads credentials from these; they travel to Ray workers only as runtime
# environment variables, never in configs, params or command lines.
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# Every other setting of MLflow's client, its auth plugins and artifact stores that a
# trial on another node needs to log as the driver does: TLS, auth plugins, request
# behaviour, S3 / GCS / Azure endpoints and credentials, proxies, system metrics.
FORWARDED_VARS = (
    *CREDENTIAL_VARS,
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_TRACKING_AWS_SIGV4",
    "MLFLOW_WORKSPACE",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_S3_IGNORE_TLS",
    "MLFLOW_S3_UPLOAD_EXTRA_ARGS",
    "MLFLOW_ARTIFACT_UPLOAD_DOWNLOAD_TIMEOUT",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD",
    "MLFLOW_GCS_UPLOAD_CHUNK_SIZE",
    "MLFLOW_GCS_DOWNLOAD_CHUNK_SIZE",
    "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL",
    "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCESS_KEY",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)


# ------------------------------------------------------------------------ URIs
def default_tracking_uri() -> str:
    """MLflow's own default, made absolute: Ray workers run in other directories."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


# MLflow 3's server runs a job executor by default (a runner and several huey consumer
# processes, for GenAI evaluation jobs that sweeps never use): 10 processes and ~30 s
# of CPU in its first 20 s, against 2 processes and ~7 s without (2-core machine).
SERVER_ENV_DEFAULTS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an ``mlflow server`` bopsweep starts: this one, with
    :data:`SERVER_ENV_DEFAULTS` where the user set nothing, then ``extra``."""
    return {**SERVER_ENV_DEFAULTS, **os.environ, **(extra or {})}


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


def sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///").partition("?")[0])
    return None


def credential_env() -> dict[str, str]:
    """The MLflow and artifact-store settings this process uses (:data:`FORWARDED_VARS`),
    as environment variables for remote trials; MLflow's credentials come from the
    environment, or else from MLflow's credentials file (``~/.mlflow/credentials``),
    which other machines of a cluster do not have."""
    from mlflow.utils.credentials import read_mlflow_creds

    env = {k: os.environ[k] for k in FORWARDED_VARS if os.environ.get(k)}
    creds = read_mlflow_creds()
    if creds.username and creds.password and "MLFLOW_TRACKING_TOKEN" not in env:
        env["MLFLOW_TRACKING_USERNAME"] = creds.username
        env["MLFLOW_TRACKING_PASSWORD"] = creds.password
    return env


def forwarded_names() -> str:
    """The names (never the values) of the forwarded settings this process has, for a
    run tag that shows what reached a trial."""
    return ",".join(k for k in FORWARDED_VARS if os.environ.get(k))


# ---------------------------------------------------------------------- client
def client(uri: str):
    from mlflow import MlflowClient

    if sqlite_path(uri) is not None:
        seed_sqlite_store(uri)
        _sync_wal_at_checkpoints()
    return MlflowClient(tracking_uri=uri)


def _store_template() -> Path:
    import mlflow

    return cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"


def seed_sqlite_store(uri: str) -> None:
    """A new sqlite store starts as a copy of an empty one.

    MLflow builds a new store by running its ~60 schema migrations (1.5-2 s of CPU,
    on a sweep's critical path while Ray starts); the first new store this machine
    builds for an MLflow version is kept in the cache, and later new stores are a
    copy of it (milliseconds). The copy holds the tables and the schema version only:
    MLflow adds its Default experiment when it opens the store, as for a new one."""
    path = sqlite_path(uri)
    if path is None or path.exists() or not path.parent.is_dir():
        return
    template = _store_template()
    try:
        if not template.is_file():
            _build_store_template(template)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        shutil.copyfile(template, partial)
        if not network_filesystem(path.parent):
            # Write-ahead logging: a commit appends to the log, readers never block
            # the writer, and (with _sync_wal_at_checkpoints) no fsync per commit.
            # A sweep's trial processes commit thousands of small transactions at
            # once; with the rollback journal each waited on the other's fsync.
            # The mode is the file's own and stays with it.
            with contextlib.closing(sqlite3.connect(partial)) as db:
                db.execute("PRAGMA journal_mode=WAL")
        try:
            os.link(partial, path)  # never replaces a store another process created
        except FileExistsError:
            pass
        finally:
            partial.unlink()
    except (OSError, sqlite3.Error):
        pass  # no cache to write or read: MLflow builds the store itself


# Filesystems where sqlite's write-ahead log is not safe: its index is shared memory
# beside the database, which network and FUSE filesystems do not keep coherent.
_SHARED_FILESYSTEMS = ("nfs", "cifs", "smb", "fuse", "9p", "lustre", "gpfs", "ceph", "afs")


def network_filesystem(folder: Path, mounts: str | None = None) -> bool:
    """Whether ``folder`` lies on a network (or FUSE) filesystem, by the longest
    mount point above it in ``mounts`` (``/proc/self/mounts`` when None; unknown
    counts as network)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return True
    folder, best, kind = folder.resolve(), "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) > 2 and folder.is_relative_to(fields[1]) and len(fields[1]) >= len(best):
            best, kind = fields[1], fields[2]
    return not kind or kind.startswith(_SHARED_FILESYSTEMS)


@functools.cache
def _sync_wal_at_checkpoints() -> None:
    """Connections to a sqlite store in WAL mode sync at checkpoints, not at every
    commit (``synchronous=NORMAL``, sqlite's advice for WAL): a committed run survives
    any process's death, and a power cut loses at most the last commits, never the
    database. Stores in rollback-journal mode keep sqlite's default."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        cursor = dbapi_connection.cursor()
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                cursor.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            # Not a database, or locked: MLflow's own first query says so (an error
            # here would have MLflow retry the engine for a minute and more).
            pass
        finally:
            cursor.close()


def _build_store_template(template: Path) -> None:
    from mlflow import MlflowClient

    template.parent.mkdir(parents=True, exist_ok=True)
    building = template.with_name(f".{template.name}.{os.getpid()}.partial")
    building.unlink(missing_ok=True)
    MlflowClient(tracking_uri=f"sqlite:///{building}").search_experiments(max_results=1)
    with contextlib.closing(sqlite3.connect(building)) as db, db:
        db.execute("DELETE FROM experiments WHERE experiment_id = 0")
    os.replace(building, template)


def is_auth_error(error: BaseException) -> bool:
    """The server refused the credentials (or their absence): retrying cannot help.

    Decided by MLflow's error code (HTTP 401 / 403), not the message, which may
    quote run ids and URLs."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in (
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    )


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """What a down, restarting or erroring server raises through MlflowClient."""
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.exceptions.RequestException, OSError)


def check_connection(uri: str) -> None:
    """Fail at start, with a clear message, when the server is unreachable or the
    credentials are wrong; not in the middle of a sweep."""
    from mlflow.exceptions import MlflowException

    try:
        client(uri).search_experiments(max_results=1)
    except MlflowException as error:
        if is_auth_error(error):
            raise UserError(
                f"MLflow at {uri} refused the credentials: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
            ) from None
        raise TrackingUnreachable(
            f"cannot reach the MLflow tracking server at {uri}: {str(error)[:300]}"
        ) from None


class TrackingUnreachable(UserError):
    """The tracking server did not answer (as opposed to refusing the credentials)."""


def check_local_store(uri: str, *, must_exist: bool) -> None:
    """A local store this process can use, without opening it (cheap: no MLflow).

    ``must_exist``: reading a sweep back from a missing sqlite file would create an
    empty store where the user expected their sweeps."""
    path = sqlite_path(uri)
    if path is None:
        return
    if must_exist and not path.is_file():
        raise UserError(
            f"no MLflow store at {path}: run a sweep here first, or pass --tracking-uri "
            "(or set MLFLOW_TRACKING_URI) to where the sweep was tracked"
        )
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UserError(
            f"cannot write the MLflow store {path}: {folder} is not a writable folder; "
            "pass --tracking-uri (or set MLFLOW_TRACKING_URI)"
        )


# ------------------------------------------------------------------- utilities
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


def git_commit(folder: Path | None = None) -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            cwd=folder,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def source_tags(spec_path: Path) -> dict[str, str]:
    """MLflow's standard source tags for a sweep's runs, as the driver sees them (a
    trial's worker would name Ray's worker script and its own user): who ran it,
    the spec as the source, and the commit of the git checkout holding the spec."""
    import getpass

    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_COMMIT,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
        MLFLOW_USER,
    )

    spec_path = spec_path.expanduser().resolve()
    as_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
    tags = {MLFLOW_SOURCE_NAME: str(spec_path), MLFLOW_SOURCE_TYPE: "JOB" if as_job else "LOCAL"}
    with contextlib.suppress(KeyError, OSError):  # no name for this uid (some containers)
        tags[MLFLOW_USER] = getpass.getuser()
    commit = git_commit(spec_path.parent)
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def parse_tag_value(text: str) -> Any:
    """A swept value as the trial saw it: tags hold ``str(value)``."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def all_pages(search: Callable[[str | None], Any]) -> list:
    """Every page of a paged MLflow search (``search(page_token)``)."""
    items, token = [], None
    while True:
        page = search(token)
        items.extend(page)
        token = page.token
        if not token:
            return items


# What one log_batch request takes (MLflow's limits): entities in all (metrics,
# params and tags together), and params and tags each.
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100


def param_entities(values: Mapping[str, Any]) -> list:
    """``values`` as MLflow params, each value cut to the 6000 characters MLflow takes."""
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items()]


def log_params(mlflow_client, run_id: str, values: Mapping[str, Any]) -> None:
    items = param_entities(values)
    for start in range(0, len(items), MAX_BATCH_PARAMS):
        batch = items[start : start + MAX_BATCH_PARAMS]
        mlflow_client.log_batch(run_id, params=batch, synchronous=True)


# ------------------------------------------------------- keys shared with trials
MODEL_TAG_PREFIX = "bopsweep.model."


@contextlib.contextmanager
def fluent_target(uri: str, experiment_id: str | None = None):
    """Aim MLflow's fluent API (``log_model``, ``register_model``) at ``uri`` and the
    experiment ``experiment_id`` for the call, then put back what was there.

    The fluent API writes to the process's tracking URI and active experiment, and
    ``set_tracking_uri`` / ``set_experiment`` also export them to ``os.environ``: every
    process started afterwards would inherit this sweep's store. A logged model
    belongs to the active experiment (MLflow 3), not to its run's: without
    ``experiment_id`` it would land in "Default"."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")
    saved_env = {name: os.environ.get(name) for name in names}
    saved_uri = getattr(tracking_utils, "_tracking_uri", None)
    mlflow.set_tracking_uri(uri)
    if experiment_id is not None:
        # Read by the fluent API when no experiment was made active in-process.
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if hasattr(tracking_utils, "_tracking_uri"):
            tracking_utils._tracking_uri = saved_uri


def trial_key(parent_run_id: str, index: int) -> str:
    """The ``bopsweep.trial_key`` tag of trial ``index``: a child run is found by it."""
    return f"{parent_run_id}:{index}"
