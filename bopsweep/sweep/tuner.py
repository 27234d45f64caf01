"""From a validated spec to a finished Ray Tune run, with its MLflow parent run.

``run_sweep`` is what ``bopsweep run`` does: connect to Ray (a local instance with
its dashboard off, or a cluster by address), check that the cluster can hold a
trial, open or reuse the sweep's MLflow parent run, build the ``Tuner`` (or
restore an interrupted one from its storage folder), fit it under a live table,
then settle every child run's status and write the summary to the parent run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bopsweep import __version__
from bopsweep.errors import UserError
from bopsweep.sweep import tracking
from bopsweep.sweep.spec import LoadedSpec, SweepSpec, Trial, expand

STATE_FILE = "bopsweep_sweep.json"
DEFAULT_STORAGE = "bopsweep_results"


@dataclass
class TrialOutcome:
    trial: Trial
    status: str  # FINISHED | FAILED | KILLED
    epochs: int
    final: float
    best: float
    flip_ratio: float
    run_id: str | None = None
    error: str | None = None


@dataclass
class SweepOutcome:
    spec: SweepSpec
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    storage: str
    outcomes: list[TrialOutcome] = field(default_factory=list)
    interrupted: bool = False
    tracking_error: str | None = None

    @property
    def failed(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status != "FINISHED"]

    def leaderboard(self) -> list[TrialOutcome]:
        sign = -1 if self.spec.metric.mode == "max" else 1
        return sorted(
            self.outcomes,
            key=lambda o: (math.isnan(o.best), sign * (0 if math.isnan(o.best) else o.best)),
        )

    def experiment_url(self) -> str | None:
        if self.tracking_uri.startswith("http"):
            return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}"
        return None


def resolve_storage(cli_storage: str | None, spec: SweepSpec) -> str:
    """``--storage`` > spec ``storage:`` > ``./bopsweep_results``; URIs are kept."""
    return resolve_storage_path(cli_storage or spec.storage or DEFAULT_STORAGE)


def resolve_storage_path(storage: str) -> str:
    """An absolute path (Ray needs one) or a URI, as given."""
    if "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve())


def _init_ray(address: str | None) -> None:
    import ray

    # Ray Tune's newer console output prints its own banners whatever the verbosity;
    # the live table replaces them.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Reading back an interrupted experiment warns once per trial without results.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS")
    cwd = os.getcwd()
    if address:
        # Trials on a cluster run in worker processes started by each node's raylet,
        # not by this process: the MLflow credentials go to them with the job's
        # runtime environment (a Ray Job's driver already has the job's own).
        env_vars = tracking.credential_env()
        in_a_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
        runtime_env = {"env_vars": env_vars} if env_vars and not in_a_job else None
        try:
            ray.init(address=address, runtime_env=runtime_env, **quiet)
        except ConnectionError as error:
            raise UserError(f"cannot connect to the Ray cluster at {address}: {error}") from None
    else:
        # A private local instance: no dashboard, nothing listening beyond loopback.
        # address="local": never join a cluster that `ray start` left recorded here.
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
    # As a Ray Job's driver, connecting can unpack the job's working directory anew
    # at the same path, leaving this process in a deleted directory.
    try:
        os.getcwd()
    except FileNotFoundError:
        os.chdir(cwd)


def _check_cluster(spec: SweepSpec, tracking_uri: str, storage: str) -> None:
    import ray

    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    want_gpu, have_gpu = spec.resources.gpu, resources.get("GPU", 0.0)
    if want_gpu > have_gpu:
        raise UserError(
            f"each trial asks for {want_gpu:g} GPU but the Ray cluster has {have_gpu:g}: "
            "run on a GPU cluster (--address), or on CPU with "
            "--set resources.gpu=0 --set train.device=cpu"
        )
    if spec.resources.cpu > resources.get("CPU", 0.0):
        raise UserError(
            f"each trial asks for {spec.resources.cpu:g} CPUs but the Ray cluster has "
            f"{resources.get('CPU', 0.0):g}: lower resources.cpu (--set resources.cpu=1)"
        )
    if len(nodes) > 1:
        if tracking.is_local_uri(tracking_uri):
            raise UserError(
                f"the tracking URI {tracking_uri} is a local store, which workers on other "
                "nodes cannot reach: start an MLflow server and pass --tracking-uri http://..."
            )
        if "://" not in storage:
            logging.getLogger("bopsweep").warning(
                "storage %s is a local path on a %d-node cluster: use a shared filesystem "
                "mounted on every node, or an s3:// / gs:// URI",
                storage,
                len(nodes),
            )


def _trial_configs(trials: list[Trial]) -> list[dict[str, Any]]:
    configs = []
    for t in trials:
        train = t.train.model_dump()
        # Ray runs each trial in its own folder: a relative data_dir means the
        # driver's working directory.
        train["data_dir"] = str(Path(train["data_dir"]).expanduser().resolve())
        configs.append({"index": t.index, "name": t.name, "swept": t.swept, "train": train})
    return configs


def _trainable(spec: SweepSpec):
    from ray import tune

    from bopsweep.sweep.trainable import run_trial

    return tune.with_resources(run_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _param_space(trial_configs: list[dict[str, Any]], sweep_cfg: dict) -> dict:
    from ray import tune

    return {"trial": tune.grid_search(trial_configs), "sweep": sweep_cfg}


def _build_tuner(
    spec: SweepSpec,
    trials: list[Trial],
    trial_configs: list[dict[str, Any]],
    sweep_cfg: dict,
    storage: str,
    callbacks,
):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if spec.scheduler is not None and spec.scheduler.type == "asha":
        max_t = spec.scheduler.max_t or max(t.train.resolved_hparams().epochs for t in trials)
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
            max_t=max_t,
        )
    return tune.Tuner(
        _trainable(spec),
        param_space=_param_space(trial_configs, sweep_cfg),
        tune_config=tune.TuneConfig(
            metric=spec.metric.name,
            mode=spec.metric.mode,
            scheduler=scheduler,
            max_concurrent_trials=spec.max_concurrent_trials,
            # Short trials would otherwise pay a new worker process (and torch import)
            # each; the trainable sets all of its state itself.
            reuse_actors=True,
            trial_name_creator=lambda t: f"trial_{t.config['trial']['index']:03d}",
            trial_dirname_creator=lambda t: f"trial_{t.config['trial']['index']:03d}",
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def _parent_params(loaded: LoadedSpec) -> dict[str, Any]:
    """The fixed part of the spec, flattened (swept keys are the children's)."""
    data = loaded.spec.model_dump(mode="json")
    data.pop("parameters")
    params = tracking.flatten(data)
    for key, param in loaded.spec.parameters.items():
        shown = param.values if param.values is not None else param.value
        params[f"parameters.{key}"] = shown if shown is not None else param.distribution
    return params


def _state_path(storage: str, name: str) -> Path | None:
    if "://" in storage:
        return None
    return Path(storage) / name / STATE_FILE


def read_state(storage: str, name: str) -> dict | None:
    path = _state_path(storage, name)
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())


def _write_state(storage: str, name: str, state: dict) -> None:
    path = _state_path(storage, name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=2))


def run_sweep(
    loaded: LoadedSpec,
    *,
    tracking_uri: str | None = None,
    address: str | None = None,
    storage: str | None = None,
    restart: bool = False,
) -> SweepOutcome:
    """Run (or resume) a sweep to the end; see the module docstring."""
    from ray import tune

    from bopsweep.sweep import datacache, progress
    from bopsweep.sweep.progress import LiveTable

    spec = loaded.spec
    trials = expand(loaded)
    # MLflow's client retries a failed request for minutes by default; the driver
    # should say the server is unreachable well before that.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    uri = tracking.resolve_tracking_uri(tracking_uri, spec.tracking.uri)
    tracking.check_connection(uri)
    storage = resolve_storage(storage, spec)
    experiment_path = f"{storage}/{spec.name}"
    previous = read_state(storage, spec.name)
    resume = previous is not None and not restart and tune.Tuner.can_restore(experiment_path)
    if resume and previous["spec_sha256"] != loaded.sha256:
        raise UserError(
            f"the spec changed since sweep {spec.name!r} was started in {experiment_path} "
            f"(spec hash {previous['spec_sha256'][:12]} -> {loaded.sha256[:12]}): run it "
            "with --restart to start over, or give it another name"
        )
    if resume and previous["tracking_uri"] != uri:
        raise UserError(
            f"sweep {spec.name!r} was tracked at {previous['tracking_uri']}, not {uri}: "
            "pass the same --tracking-uri to resume, or --restart"
        )
    if restart and "://" not in storage and Path(experiment_path).exists():
        shutil.rmtree(experiment_path)

    # Paths are resolved before Ray starts: as a Ray Job's driver this process may
    # find its working directory unpacked anew (and its old one gone) once connected.
    trial_configs = _trial_configs(trials)
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # Ray may delete and unpack the job's working directory again while the
        # driver runs in it; the driver needs nothing more from it.
        os.chdir(tempfile.mkdtemp(prefix="bopsweep-driver-"))
    _init_ray(address)
    _check_cluster(spec, uri, storage)

    if resume:
        exp_id, parent_id = previous["experiment_id"], previous["parent_run_id"]
        tracking.client(uri).update_run(parent_id, status="RUNNING")
    else:
        tags = {
            "bopsweep.spec_sha256": loaded.sha256,
            "bopsweep.version": __version__,
            "mlflow.note.content": spec.description,
        }
        commit = tracking.git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        resolved_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        exp_id, parent_id = tracking.start_parent_run(
            uri,
            spec.experiment,
            spec.name,
            tags=tags,
            params=_parent_params(loaded),
            artifacts={
                f"spec/{loaded.path.name}": loaded.text,
                "spec/resolved.yaml": resolved_yaml,
            },
        )
        _write_state(
            storage,
            spec.name,
            {
                "spec_sha256": loaded.sha256,
                "experiment_id": exp_id,
                "parent_run_id": parent_id,
                "tracking_uri": uri,
                "spec": spec.model_dump(mode="json"),
            },
        )

    sweep_cfg = {
        "tracking_uri": uri,
        "experiment_id": exp_id,
        "parent_run_id": parent_id,
        "checkpoint_every": spec.checkpoint.every,
        "cpus_per_trial": spec.resources.cpu,
        # How long a finished trial keeps retrying an unreachable tracking server.
        "drain_timeout_s": float(os.environ.get("BOPSWEEP_TRACKING_DRAIN_S", "120")),
    }
    if resume:
        # The saved state brings back the trials and the callbacks (the table).
        tuner = tune.Tuner.restore(
            experiment_path,
            _trainable(spec),
            resume_unfinished=True,
            param_space=_param_space(trial_configs, sweep_cfg),
        )
        progress.ACTIVE_TABLE.sync(tune.ExperimentAnalysis(experiment_path).trials)
    else:
        tuner = _build_tuner(
            spec, trials, trial_configs, sweep_cfg, storage, [LiveTable(spec, trials)]
        )
    # One copy of a file-backed dataset per node, shared by its trials.
    caches = datacache.start(parent_id, {t.train.dataset for t in trials})
    try:
        results = tuner.fit()
    finally:
        datacache.stop(caches)
    ray_trials = tune.ExperimentAnalysis(experiment_path).trials
    statuses = {t.config["trial"]["index"]: t.status for t in ray_trials}
    # Epochs each trial reported to Ray; its MLflow run should hold as many.
    reported = {
        t.config["trial"]["index"]: int(t.last_result["epoch"]) + 1
        for t in ray_trials
        if t.last_result and "epoch" in t.last_result
    }
    errors = _errors_by_index(results)
    # Ray Tune catches Ctrl-C itself, saves the experiment and returns early:
    # trials left neither finished nor errored mean the run was interrupted.
    interrupted = any(status not in ("TERMINATED", "ERROR") for status in statuses.values())
    outcome = SweepOutcome(spec, uri, exp_id, parent_id, storage, interrupted=interrupted)
    try:
        outcome.outcomes = settle_trials(outcome, trials, statuses, errors)
        short = short_trials(outcome.outcomes, reported)
        if short:
            # The trials could not log (credentials refused where they ran, a server
            # their nodes cannot reach...), though this process can.
            outcome.tracking_error = (
                f"{len(short)} of {len(trials)} trials could not log all their epochs "
                "from where they ran"
            )
        finish_parent(outcome)
        write_sweep_report(outcome)
    except tracking.unreachable_errors() as error:
        # Nothing is lost: every epoch is in the trials' local results.
        outcome.tracking_error = f"{type(error).__name__}: {str(error)[:300]}"
        outcome.outcomes = [
            TrialOutcome(
                t,
                {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(statuses.get(t.index), "KILLED"),
                0,
                math.nan,
                math.nan,
                math.nan,
                error=errors.get(t.index),
            )
            for t in trials
        ]
    return outcome


def _errors_by_index(results) -> dict[int, str]:
    errors = {}
    for result in results:
        if result.error is not None:
            match = re.search(r"trial_(\d+)", str(result.path))
            if match:
                errors[int(match.group(1))] = str(result.error)
    return errors


def short_trials(outcomes: list[TrialOutcome], reported: dict[int, int]) -> list[TrialOutcome]:
    """Trials whose MLflow run holds fewer epochs than they reported to Ray."""
    return [o for o in outcomes if o.epochs < reported.get(o.trial.index, 0)]


def settle_trials(
    outcome: SweepOutcome, trials: list[Trial], statuses: dict[int, str], errors: dict[int, str]
) -> list[TrialOutcome]:
    """Give every child run a final status and gather the outcome of each trial.

    ``statuses`` are Ray's (``TERMINATED``, ``ERROR``, or anything else for a trial
    that did not end); a run still RUNNING in MLflow is stopped by the scheduler,
    killed or interrupted, and is never left RUNNING.
    """
    uri, spec = outcome.tracking_uri, outcome.spec
    by_key = {
        run.data.tags.get(tracking.TRIAL_KEY_TAG): run
        for run in tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    }
    client = tracking.client(uri)
    outcomes = []
    for trial in trials:
        run = by_key.get(f"{outcome.parent_run_id}:{trial.index}")
        ray_status = statuses.get(trial.index, "PENDING")
        status = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(ray_status, "KILLED")
        if run is not None and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status)
        elif run is not None and run.info.status in tracking.TERMINAL_STATUSES:
            status = run.info.status if ray_status == "TERMINATED" else status
        history, flips = [], []
        if run is not None:
            history = client.get_metric_history(run.info.run_id, spec.metric.name)
            flips = client.get_metric_history(run.info.run_id, "flip_ratio")
        values = [m.value for m in sorted(history, key=lambda m: m.step)]
        best = (max if spec.metric.mode == "max" else min)(values) if values else math.nan
        outcomes.append(
            TrialOutcome(
                trial,
                status,
                epochs=len(values),
                final=values[-1] if values else math.nan,
                best=best,
                flip_ratio=(sum(m.value for m in flips) / len(flips)) if flips else math.nan,
                run_id=run.info.run_id if run else None,
                error=errors.get(trial.index),
            )
        )
    return outcomes


def write_sweep_report(outcome: SweepOutcome) -> None:
    """Leaderboard, curves and heatmaps into the parent run (and the results folder).

    A finished sweep stays finished if plotting fails: the report can be made again
    with ``bopsweep report``.
    """
    from bopsweep.sweep.report import write_report

    out_dir = None
    if "://" not in outcome.storage:
        out_dir = Path(outcome.storage) / outcome.spec.name / "report"
    try:
        write_report(
            outcome.tracking_uri,
            outcome.spec.name,
            out_dir,
            parent_run_id=outcome.parent_run_id,
        )
    except Exception as error:  # the sweep's own results are already safe
        logging.getLogger("bopsweep").warning(
            "could not write the report (%s); run `bopsweep report %s` to retry",
            error,
            outcome.spec.name,
        )


def finish_parent(outcome: SweepOutcome) -> None:
    from mlflow.entities import Metric, RunTag

    client = tracking.client(outcome.tracking_uri)
    run_id = outcome.parent_run_id
    counts = {s: sum(o.status == s for o in outcome.outcomes) for s in tracking.TERMINAL_STATUSES}
    tags = [RunTag(f"bopsweep.trials_{s.lower()}", str(n)) for s, n in counts.items()]
    metrics = [Metric(f"trials_{s.lower()}", n, 0, 0) for s, n in counts.items()]
    board = [o for o in outcome.leaderboard() if not math.isnan(o.best)]
    if board:
        best = board[0]
        metric = outcome.spec.metric.name
        tags += [
            RunTag("bopsweep.best_trial", best.trial.name),
            RunTag("bopsweep.best_run_id", str(best.run_id)),
        ]
        metrics += [
            Metric(f"best_{metric}", best.best, 0, 0),
            Metric(f"best_final_{metric}", best.final, 0, 0),
            Metric("best_mean_flip_ratio", best.flip_ratio, 0, 0),
        ]
    client.log_batch(run_id, metrics=metrics, tags=tags, synchronous=True)
    if outcome.interrupted:
        status = "KILLED"
    elif outcome.failed:
        status = "FAILED"
    else:
        status = "FINISHED"
    client.set_terminated(run_id, status)
