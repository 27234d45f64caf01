"""``bopsweep run``: a sweep, as the steps it goes through.

1. **Preflight** (:mod:`~bopsweep.sweep.preflight`): everything that can be known
   before Ray starts is checked, so that bad input ends in one message.
2. **Start**: Ray starts in the background while the MLflow parent run is opened
   (or reopened, when resuming): the two fixed costs overlap.
3. **Run**: Ray Tune runs the trials; a live model of the sweep goes to the listener.
4. **Settle**: every child run gets its final status; the outcome is read back.
5. **Report**: the parent run gets its summary and the report, while Ray shuts down.

Each step records when it ended, so ``bopsweep bench`` can show where a sweep's
time goes (``timeline.json`` in the results folder). Ray details live in
:mod:`~bopsweep.sweep.ray_backend`, MLflow's in :mod:`~bopsweep.sweep.mlflow_client`,
the results folder in :mod:`~bopsweep.sweep.state`.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bopsweep import __version__
from bopsweep.errors import UserError
from bopsweep.sweep import logs, mlflow_client, mlflow_runs, ray_backend
from bopsweep.sweep.contract import (
    MEMBER_ERROR_KEY,
    MEMBER_STATUS_KEY,
    TIMING_PREFIX,
    TRACKING_OFFLINE_ENV,
    USER_ERROR_KEY,
    SweepContext,
)
from bopsweep.sweep.outcome import SweepOutcome, TrialOutcome
from bopsweep.sweep.preflight import RunOptions, SweepPlan, preflight
from bopsweep.sweep.spec import LoadedSpec
from bopsweep.sweep.state import SweepFolder

# Ray's trial statuses -> the run status of a trial that ended that way.
RAY_TO_RUN_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}


def _process_start() -> float:
    """When this process started (so imports count too), from Linux's /proc: its
    start in clock ticks since boot, against the time since boot now (the boot
    time /proc/stat gives is in whole seconds, too coarse for this)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


@dataclass
class Timeline:
    """Wall-clock marks of a sweep's steps, from the process's start."""

    process_start: float
    marks: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # the driver's CPU seconds

    @classmethod
    def start(cls) -> Timeline:
        timeline = cls(_process_start())
        timeline.mark("runner")
        return timeline

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()
        self.cpu[name] = time.process_time()

    def as_dict(self) -> dict[str, float]:
        """Seconds since the process started, per mark."""
        out = {k: round(v - self.process_start, 3) for k, v in self.marks.items()}
        out.update({f"cpu.{k}": round(v, 3) for k, v in self.cpu.items()})
        return out


# ---------------------------------------------------------------------- 2. start
def _parent_params(loaded: LoadedSpec) -> dict[str, Any]:
    """The fixed part of the spec, flattened (swept keys are the children's)."""
    data = loaded.spec.model_dump(mode="json")
    data.pop("parameters")
    params = mlflow_client.flatten(data)
    for key, param in loaded.spec.parameters.items():
        shown = param.values if param.values is not None else param.value
        # A distribution with its range (``log_uniform_values [1e-05, 0.01]``).
        params[f"parameters.{key}"] = shown if shown is not None else param.describe()
    return params


def open_parent_run(plan: SweepPlan) -> SweepOutcome:
    """The sweep's MLflow parent run: reopened when resuming, else created (and the
    resume state written next to the results)."""
    import yaml

    spec, uri = plan.spec, plan.tracking_uri
    if plan.resume.resuming:
        exp_id, parent_id = plan.resume.state["experiment_id"], plan.resume.state["parent_run_id"]
        if not plan.tracking_offline:
            mlflow_client.client(uri).update_run(parent_id, status="RUNNING")
    else:
        tags = {
            "bopsweep.spec_sha256": plan.loaded.sha256,
            "bopsweep.version": __version__,
            "mlflow.note.content": spec.description,
        }
        tags.update(mlflow_client.source_tags(plan.loaded.path))
        resolved_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        exp_id, parent_id = mlflow_runs.start_parent_run(
            uri,
            spec.experiment,
            spec.name,
            tags=tags,
            params=_parent_params(plan.loaded),
            artifacts={
                f"spec/{plan.loaded.path.name}": plan.loaded.text,
                "spec/resolved.yaml": resolved_yaml,
            },
        )
        plan.folder.write_state(
            {
                "spec_sha256": plan.loaded.sha256,
                "experiment_id": exp_id,
                "parent_run_id": parent_id,
                "tracking_uri": uri,
                "spec": spec.model_dump(mode="json"),
            }
        )
    outcome = SweepOutcome(
        spec.name, spec.metric.name, spec.metric.mode, uri, exp_id, parent_id, plan.folder.storage
    )
    outcome.trials = [
        TrialOutcome(t.index, dict(t.swept), epochs_total=t.train.resolved_hparams().epochs)
        for t in plan.trials
    ]
    return outcome


def _prepare_in_background(plan: SweepPlan) -> SweepOutcome:
    import ray.tune  # noqa: F401  (seconds of imports, off the main thread's path)
    from sqlalchemy.exc import SQLAlchemyError  # MLflow's store layer

    try:
        return open_parent_run(plan)
    except (*mlflow_client.unreachable_errors(), SQLAlchemyError) as error:
        # A local store is only opened here (preflight checked its folder): one that
        # cannot be used (an older schema, a broken file) is bad input.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise UserError(
            f"cannot use the MLflow store at {plan.tracking_uri}: {reason}; pass another "
            "--tracking-uri, or move the file away"
        ) from None


# ------------------------------------------------------------------------ 3. run
def run_trials(plan: SweepPlan, outcome: SweepOutcome, listener, timeline: Timeline):
    """Ray Tune runs the trials; returns Ray's trials and each failed one's error."""
    from bopsweep.sweep import datacache, progress

    spec = plan.spec
    ray_backend.set_snapshot_period(len(plan.groups))
    configs = ray_backend.trial_configs(plan.groups)
    sweep = SweepContext(
        tracking_uri=outcome.tracking_uri,
        experiment_id=outcome.experiment_id,
        parent_run_id=outcome.parent_run_id,
        metric=spec.metric.name,
        mode=spec.metric.mode,
        cpus_per_trial=spec.resources.cpu,
        # HyperBand pauses trials at its rungs and resumes them from their last
        # checkpoint: one every epoch, so a resumed trial trains no epoch twice.
        checkpoint_every=1 if _pauses_trials(spec) else spec.checkpoint.every,
        checkpoint_every_s=spec.checkpoint.every_s,
        scheduler=None if spec.stopping is None else spec.stopping.model_dump(),
        # Without the server (--without-tracking) no trial waits for it at its end.
        drain_timeout_s=0.0
        if plan.tracking_offline
        else float(os.environ.get("BOPSWEEP_TRACKING_DRAIN_S", "120")),
        models=tuple(spec.tracking.models),
        system_metrics_s=spec.tracking.system_metrics_s,
        run_tags=mlflow_client.source_tags(plan.loaded.path),
    )
    if plan.resume.resuming:
        tuner = ray_backend.restore_tuner(spec, plan.folder.path, configs, sweep)
        live = progress.LiveProgress(outcome)
        live.sync(ray_backend.restored_trials(plan.folder.path))
        extra: list = []
    else:
        live = progress.LiveProgress(outcome)
        extra = [live]
        tuner = ray_backend.build_tuner(
            plan.loaded, plan.groups, configs, sweep, plan.folder.storage, extra
        )
    # One copy of a file-backed dataset per node, shared by its trials.
    caches = datacache.start(outcome.parent_run_id, {t.train.dataset for t in plan.trials})
    timeline.mark("tuner_built")
    try:
        with progress.listening(outcome.parent_run_id, listener):
            if listener is not None:
                listener(outcome)
            return ray_backend.fit(tuner, plan.folder.path)
    finally:
        datacache.stop(caches)


def _pauses_trials(spec) -> bool:
    return spec.stopping is not None and spec.stopping.type == "hyperband"


# --------------------------------------------------------------------- 4. settle
def settle(
    plan: SweepPlan,
    outcome: SweepOutcome,
    ray_trials: list,
    errors: dict,
    fit_s: float = 0.0,
) -> None:
    """Give every child run a final status and read the sweep's outcome back.

    A run still RUNNING in MLflow was stopped by the scheduler, killed or
    interrupted: it is never left RUNNING. ``fit_s``: how long Ray Tune ran (a
    sweep that spent its ``time_budget_s`` ended early, not interrupted).
    """
    statuses, last_results = {}, {}
    for ray_trial in ray_trials:
        for index, part in ray_backend.member_results(ray_trial).items():
            statuses[index] = ray_trial.status
            last_results[index] = part
    # A user error ends a group's Ray trial, hence each of its members.
    user_errors = {}
    for ray_trial in ray_trials:
        error = (ray_trial.last_result or {}).get(USER_ERROR_KEY)
        for index in ray_backend.member_indices(ray_trial) if error else []:
            user_errors[index] = str(error)
    # Members that failed on their own (diverged, raised) say so in the results.
    errors = {
        **errors,
        **{i: str(r[MEMBER_ERROR_KEY]) for i, r in last_results.items() if r.get(MEMBER_ERROR_KEY)},
    }
    if user_errors:
        outcome.stopped = next(iter(user_errors.values()))
    else:
        outcome.ended_early = _ended_early(plan.spec, last_results, fit_s)
    # Ray Tune catches Ctrl-C itself, saves the experiment and returns early:
    # trials left neither finished nor errored mean the run was interrupted.
    outcome.interrupted = not user_errors and any(
        s not in ("TERMINATED", "ERROR") for s in statuses.values()
    )
    if outcome.ended_early:
        outcome.interrupted = False
    planned = {t.index: t.epochs_total for t in outcome.trials}

    def ray_status(index: int) -> str:
        status = RAY_TO_RUN_STATUS.get(statuses.get(index, "PENDING"), "KILLED")
        if index in user_errors:
            return "FAILED"
        # A member that failed or was stopped early inside its group ended on its own.
        own = last_results.get(index, {}).get(MEMBER_STATUS_KEY)
        if own:
            return own
        epochs = int(last_results.get(index, {}).get("epoch", -1)) + 1
        if outcome.stopped and status == "FINISHED" and epochs < (planned[index] or 0):
            return "KILLED"  # stopped with the sweep, not finished
        return status

    wanted = {t.index: ray_status(t.index) for t in outcome.trials}
    # Ended by the scheduler (Ray's TERMINATED) before their last epoch.
    stopped_early = {
        i
        for i, status in statuses.items()
        if status == "TERMINATED"
        and not outcome.stopped
        and int(last_results.get(i, {}).get("epoch", -1)) + 1 < (planned.get(i) or 0)
    }
    try:
        from bopsweep.sweep.report import HISTORY_METRICS

        metrics = (outcome.metric, *HISTORY_METRICS)
        mlflow_runs.settle_runs(outcome, wanted, {**errors, **user_errors}, metrics, stopped_early)
        if outcome.ended_early:
            # Trials the sweep's end left unstarted were never run: not trials at all.
            outcome.trials = [t for t in outcome.trials if t.run_id is not None]
        reported = {i: int(r["epoch"]) + 1 for i, r in last_results.items() if "epoch" in r}
        short = short_trials(outcome, reported)
        if short:
            # Epochs that earlier attempts could not send (a server that was down, a
            # worker killed with epochs queued) are sent now from the trials' results,
            # as `bopsweep sync` would: running the command again ends complete
            # whenever the server answers.
            from bopsweep.sweep.sync import upload_missing

            with contextlib.suppress(UserError):  # the server went away meanwhile
                if upload_missing(plan.folder, outcome, {t.index for t in short}):
                    mlflow_runs.settle_runs(
                        outcome, wanted, {**errors, **user_errors}, metrics, stopped_early
                    )
                    short = short_trials(outcome, reported)
        if short:
            # The trials could not log (credentials refused where they ran, a server
            # their nodes cannot reach...), though this process can.
            outcome.tracking_error = (
                f"{len(short)} of {len(outcome.trials)} trials could not log all their "
                "epochs from where they ran"
            )
        mlflow_runs.finish_parent(outcome)
        if plan.spec.tracking.register_model:
            mlflow_runs.register_best_model(outcome, plan.spec.tracking.register_model)
    except mlflow_client.unreachable_errors() as error:
        # Nothing is lost: every epoch is in the trials' local results, which are
        # also what the leaderboard shows meanwhile.
        from bopsweep.sweep.sync import histories_from_results

        outcome.tracking_error = f"{type(error).__name__}: {str(error)[:300]}"
        histories_from_results(plan.folder, outcome)
        for trial in outcome.trials:
            trial.status = wanted[trial.index]
            trial.error = user_errors.get(trial.index) or errors.get(trial.index)
    dirs = {t.index: g.dirname for g in plan.groups for t in g.trials}
    for trial in outcome.trials:
        trial.log_file = _error_file(plan.folder, dirs.get(trial.index))


def _ended_early(spec, last_results: dict[int, dict], fit_s: float) -> str | None:
    """Why the sweep ended before its last trial: the metric's target reached by a
    trial, or the time budget spent; None otherwise."""
    metric = spec.metric
    for index, result in sorted(last_results.items()):
        value = result.get(metric.name)
        if metric.reached(value):
            return (
                f"trial {index:03d} reached the target {metric.name} "
                f"{'>=' if metric.mode == 'max' else '<='} {metric.target:g} ({value:g})"
            )
    if spec.time_budget_s is not None and fit_s >= spec.time_budget_s:
        return f"the time budget of {spec.time_budget_s:g} s was spent"
    return None


def short_trials(outcome: SweepOutcome, reported: dict[int, int]) -> list[TrialOutcome]:
    """Trials whose MLflow run holds fewer epochs than they reported to Ray."""
    return [t for t in outcome.trials if t.epochs(outcome.metric) < reported.get(t.index, 0)]


def _error_file(folder: SweepFolder, dirname: str | None) -> str | None:
    local = folder.local
    if local is None or dirname is None:
        return None
    path = local / dirname / "error.txt"
    return str(path) if path.is_file() else None


# --------------------------------------------------------------------- 5. report
def _import_plotting() -> None:
    from bopsweep.sweep.report import figures

    figures.import_plotting()


def write_report(outcome: SweepOutcome, folder: SweepFolder) -> None:
    """Leaderboard, curves and heatmaps into the parent run (and the results folder).

    A finished sweep stays finished if plotting fails: the report can be made again
    with ``bopsweep report``.
    """
    import logging

    from bopsweep.sweep.report import render

    out_dir = folder.local / "report" if folder.local is not None else None
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix=f"bopsweep-report-{outcome.name}-"))
    try:
        render(outcome, out_dir, log_to_parent=True)
    except Exception as error:  # the sweep's own results are already safe
        logging.getLogger("bopsweep").warning(
            "could not write the report (%s); run `bopsweep report %s` to retry",
            error,
            outcome.name,
        )


# ------------------------------------------------------------------- the steps
def run_sweep(
    loaded: LoadedSpec,
    options: RunOptions | None = None,
    *,
    listener=None,
    on_step: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Run (or resume) a sweep to the end; see the module docstring.

    ``listener`` is called with the sweep's live :class:`SweepOutcome` whenever a
    trial starts, reports or ends; ``on_step`` with a line saying what starts next.
    """
    options = options or RunOptions()
    say = on_step or (lambda text: None)
    timeline = Timeline.start()
    plan = preflight(loaded, options, say)
    timeline.mark("preflight")
    where = f"the Ray cluster at {plan.address}" if plan.address else "a local Ray instance"
    resumed = " (resuming)" if plan.resume.resuming else ""
    fused = [g for g in plan.groups if g.fused]
    if fused:
        members = sum(len(g.trials) for g in fused)
        resumed += f" ({members} trained as {len(fused)} fused groups)"
    say(f"{len(plan.trials)} trials{resumed}: starting {where}, tracking to {plan.tracking_uri}")
    ray_backend.configure_environment()
    if plan.tracking_offline:
        os.environ[TRACKING_OFFLINE_ENV] = "1"
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # As a Ray Job's driver: Ray may delete and unpack the job's working directory
        # again while the driver runs in it; paths are resolved, nothing more is needed.
        os.chdir(tempfile.mkdtemp(prefix="bopsweep-driver-"))
    # One thread for the work that overlaps Ray's start and shutdown.
    with (
        logs.captured(plan.folder.log_dir, verbose=options.verbose),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep") as background,
    ):
        started_ray = False
        try:
            if plan.address:
                # A cluster is checked before anything is written to MLflow.
                started_ray = ray_backend.start(plan.address)
                ray_backend.check_cluster(plan.spec, plan.tracking_uri, plan.folder.storage)
                timeline.mark("ray_started")
                outcome = open_parent_run(plan)
                timeline.mark("parent_run")
            else:
                # The parent run is opened (and Ray Tune imported) while Ray starts,
                # which needs the main thread.
                parent = background.submit(_prepare_in_background, plan)
                started_ray = ray_backend.start(None)
                timeline.mark("ray_started")
                outcome = parent.result()
                timeline.mark("parent_run")
            # The report's imports while the trials train, not after them.
            background.submit(_import_plotting)
            ray_trials, errors = run_trials(plan, outcome, listener, timeline)
            timeline.mark("trials_done")
            settle(plan, outcome, ray_trials, errors, time.time() - timeline.marks["tuner_built"])
            timeline.mark("settled")
            # The report is drawn while Ray shuts down.
            reporter = background.submit(write_report, outcome, plan.folder)
        finally:
            if started_ray:
                ray_backend.shutdown()
            timeline.mark("ray_stopped")
        reporter.result()
        timeline.mark("reported")
    outcome.timings = timeline.as_dict()
    trials = _trial_timings(ray_trials)
    if "first_trial" in trials:
        trials["first_trial"] = round(trials["first_trial"] - timeline.process_start, 3)
    outcome.timings.update(trials)
    outcome.timings["driver_cpu_s"] = round(time.process_time(), 3)
    plan.folder.write_timeline(outcome.timings)
    return outcome


def _trial_timings(ray_trials: list) -> dict[str, float]:
    """Totals over trials of what each reported about its own time."""
    totals: dict[str, float] = {}
    for ray_trial in ray_trials:
        for key, value in (ray_trial.last_result or {}).items():
            if not key.startswith(TIMING_PREFIX):
                continue
            name = f"trials.{key.removeprefix(TIMING_PREFIX)}"
            if name == "trials.started_at":  # the first trial's start, on the timeline
                totals["first_trial"] = min(totals.get("first_trial", math.inf), float(value))
            else:
                totals[name] = totals.get(name, 0.0) + float(value)
    return totals
