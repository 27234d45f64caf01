"""Everything the sweep runner asks of Ray: start or connect, check, build, run, stop.

A local sweep gets a private Ray instance on loopback with only what it needs (no
dashboard, nothing listening beyond 127.0.0.1); a cluster is joined by address. Ray
Tune runs the trials with the function trainable of :mod:`bopsweep.sweep.trainable`;
the driver keeps Ray Tune's JSON results (``bopsweep sync`` reads them) and none of
its other default loggers.
A trial that hits a user error (missing data, a bad value) reports it and ends; a
stopper then ends the whole sweep, since every other trial would hit it too.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from bopsweep.device import visible_gpu_count
from bopsweep.errors import UserError
from bopsweep.sweep import contract, mlflow_client
from bopsweep.sweep.contract import USER_ERROR_KEY, Member, TrialGroup
from bopsweep.sweep.fusion import Group
from bopsweep.sweep.spec import LoadedSpec, MetricSpec, SweepSpec, Trial

# Ray Tune's own constants, set before it is imported:
TUNE_ENV = {
    # Its newer console output prints banners whatever the verbosity; the live
    # table replaces them.
    "RAY_AIR_NEW_OUTPUT": "0",
    # bopsweep adds the one logger it needs (JSON results, read by `bopsweep sync`);
    # CSV and TensorBoard files per result cost the driver time for nothing.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # A trial stopped by a user error reports no metric.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}


def configure_environment() -> None:
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)


def set_snapshot_period(trials: int) -> None:
    """How often Ray Tune saves the sweep's state (what a rerun resumes from).

    Its default waits 10 s and more between snapshots; trials of a few seconds would
    then finish unrecorded, and a driver killed meanwhile would leave a rerun to
    start them again. A small sweep's state is small: every 2 s, and longer for big
    sweeps, whose state is large."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(max(2.0, trials / 50)))


# ------------------------------------------------------------------- start-up
def start(address: str | None) -> bool:
    """Start a private local Ray instance, or connect to a cluster; False when this
    process was already connected (then it is not for the sweep to shut Ray down).

    Ray must be initialised from the main thread (its core worker loses the GCS
    otherwise), so the runner overlaps Ray's start with its other work by doing
    that work in a thread instead."""
    import ray

    if ray.is_initialized():
        return False
    cwd = os.getcwd()
    _init_ray(address or os.environ.get("RAY_ADDRESS"))
    # As a Ray Job's driver, connecting can unpack the job's working directory anew
    # at the same path, leaving this process in a deleted directory.
    try:
        os.getcwd()
    except FileNotFoundError:
        os.chdir(cwd)
    return True


def _error_chain(error: BaseException) -> str:
    """The messages of an error and its causes, one line each: Ray wraps its real
    cause (say, a refused token) in other errors, sometimes as traceback text."""
    parts: list[str] = []
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for text in _messages(str(current)):
            if text not in parts:
                parts.append(text)
        current = current.__cause__ or current.__context__
    return "; caused by ".join(parts)


def _messages(text: str) -> list[str]:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return []
    if "Traceback (most recent call last)" in text:
        # Keep what precedes the traceback and the error it ends with.
        head = lines[0].split("Traceback")[0].strip().rstrip(":")
        tail = lines[-1].rpartition("Error: ")[2] if "Error: " in lines[-1] else lines[-1]
        return [_shorten(part) for part in (head, tail) if part]
    return [_shorten(lines[0])]


def _shorten(text: str, limit: int = 300) -> str:
    """At most ``limit`` characters, cut after a whole sentence where possible."""
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > 0 else text[:limit]


def _init_ray(address: str | None) -> None:
    import ray

    if address:
        # Trials on a cluster run in worker processes started by each node's raylet,
        # not by this process: the MLflow credentials go to them with the job's
        # runtime environment (a Ray Job's driver already has the job's own).
        env_vars = mlflow_client.credential_env()
        in_a_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
        runtime_env = {"env_vars": env_vars} if env_vars and not in_a_job else None
        try:
            ray.init(
                address=address,
                runtime_env=runtime_env,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as error:
            raise UserError(_connect_message(address, error)) from None
    else:
        init_local(logging_level=logging.WARNING)


def init_local(**options: Any) -> None:
    """Start a private Ray instance on loopback with only what a local sweep needs
    (``options`` go to ``ray.init``: a test's ``num_cpus``, say). Workers' output
    stays in their log files: with no log monitor, nothing would stream it."""
    import ray

    # address="local": never join a cluster that `ray start` left recorded here.
    # Ray's raylet starts one idle worker per CPU for the first driver; Ray Tune
    # runs trials in actors, which never reuse them: on a small machine their
    # start (~0.6 s of CPU each) only slows Ray's own start.
    with _without_monitors():
        ray.init(
            address="local",
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _system_config={"prestart_worker_first_driver": False},
            log_to_driver=False,
            **options,
        )


@contextlib.contextmanager
def _without_monitors() -> Iterator[None]:
    """A local instance without Ray's autoscaler monitor and log monitor.

    Both are Python processes that import Ray (2.2-3.0 s of CPU together on 2 cores,
    beside the trials' start) and serve nothing a local sweep uses: one node never
    scales, and the driver does not stream the workers' logs (``log_to_driver`` is
    off; trials log through MLflow and their own files). ``ray start`` leaves them
    out with ``--no-monitor`` and ``--include-log-monitor=False``; ``ray.init`` has
    no such options, so they are set on the parameters it builds. A Ray without
    these fields starts its usual processes."""
    from ray._private import parameter

    original = parameter.RayParams.__init__

    def lean(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        if hasattr(self, "no_monitor") and hasattr(self, "include_log_monitor"):
            self.no_monitor = True
            self.include_log_monitor = False

    parameter.RayParams.__init__ = lean
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original


def _connect_message(address: str, error: BaseException) -> str:
    cause = _error_chain(error)
    message = f"cannot connect to the Ray cluster at {address}: {cause}"
    auth = re.search(r"auth|token|unauthenticated", cause, re.IGNORECASE)
    if auth or not os.environ.get("RAY_AUTH_TOKEN"):
        message += (
            ". If the cluster uses Ray's token authentication, give this shell its token: "
            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=... (or RAY_AUTH_TOKEN_PATH=FILE)"
        )
    return message


def local_gpu_count() -> int:
    """GPUs a local Ray instance would find, without starting it or importing torch."""
    return visible_gpu_count()


def check_cluster(spec: SweepSpec, tracking_uri: str, storage: str) -> None:
    """Refuse a sweep the connected cluster cannot run, before any trial starts."""
    import ray

    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    want_gpu, have_gpu = spec.resources.gpu, resources.get("GPU", 0.0)
    if want_gpu > have_gpu:
        raise UserError(gpu_message(want_gpu, have_gpu, "the Ray cluster"))
    if spec.resources.cpu > resources.get("CPU", 0.0):
        raise UserError(
            f"each trial asks for {spec.resources.cpu:g} CPUs but the Ray cluster has "
            f"{resources.get('CPU', 0.0):g}: lower resources.cpu (--set resources.cpu=1)"
        )
    if len(nodes) > 1:
        if mlflow_client.is_local_uri(tracking_uri):
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


def gpu_message(want: float, have: float, where: str) -> str:
    return (
        f"each trial asks for {want:g} GPU but {where} has {have:g}: run on a GPU "
        "cluster (--address), or on CPU with --set resources.gpu=0 --set train.device=cpu"
    )


# ---------------------------------------------------------------- the Tuner
def can_restore(experiment_path: str) -> bool:
    """Whether Ray Tune left an experiment to restore there."""
    if "://" not in experiment_path:
        return bool(glob.glob(os.path.join(glob.escape(experiment_path), "experiment_state-*")))
    from ray import tune

    return tune.Tuner.can_restore(experiment_path)


def _member(t: Trial) -> Member:
    train = t.train.model_dump()
    # Ray runs each trial in its own folder: a relative data_dir means the
    # driver's working directory.
    train["data_dir"] = str(Path(train["data_dir"]).expanduser().resolve())
    return Member(t.index, t.name, t.swept, train)


def group_config(group: Group) -> dict[str, Any]:
    """A Ray trial's ``config["trial"]``: the group of its K >= 1 members."""
    members = tuple(_member(t) for t in group.trials)
    return TrialGroup(group.index, group.name, group.dirname, members).as_config()


def trial_config(t: Trial) -> dict[str, Any]:
    """One trial's Ray trial config: a group of one (a searcher's proposals)."""
    return group_config(Group((t,)))


def trial_configs(groups: list[Group]) -> list[dict[str, Any]]:
    """Each Ray trial's ``config["trial"]``."""
    return [group_config(group) for group in groups]


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune's entry point of a trial (:func:`bopsweep.sweep.trainable.run_trial`).

    Ray pickles the trainable by reference in the driver; this one leaves torch and
    the training code to the trial's worker, so the driver never imports them.
    First the trial takes what Ray gave it: no GPU when it asked for none, and at
    most its share of a GPU's memory (``resources.gpu: 0.25`` is only Ray's
    arithmetic otherwise; :func:`bopsweep.device.limit_gpu_memory`)."""
    import ray

    hide_unassigned_gpus(ray.get_gpu_ids())
    from bopsweep.device import limit_gpu_memory
    from bopsweep.sweep.trainable import run_trial as run

    limit_gpu_memory(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    run(config)


def hide_unassigned_gpus(assigned: list, environ=os.environ) -> None:
    """Make a trial that Ray gave no GPU see none.

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned, but since Ray 2.60 it
    leaves the variable alone for a worker assigned none (ray-project/ray#62492
    turned RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO off), so a ``resources.gpu: 0`` trial
    with ``device: auto`` would find every GPU of its node and train on cuda:0,
    outside Ray's accounting, beside the trials that GPU was given to. Done here, in
    the trial's own process before torch initialises CUDA, it holds on every Ray a
    sweep meets (a local one, a cluster started without that variable, a Ray Job
    whose runtime environment is the job's); Ray Tune reuses an actor only for
    trials asking the same resources, so the process never needs its GPUs back."""
    if not assigned:
        environ["CUDA_VISIBLE_DEVICES"] = ""


def _trainable(spec: SweepSpec):
    from ray import tune

    return tune.with_resources(run_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _param_space(spec: SweepSpec, configs: list[dict[str, Any]], sweep: contract.SweepContext):
    from ray import tune

    if spec.method == "bayes":
        # The searcher proposes config["trial"] (bopsweep.sweep.search.SpecTrials).
        return {"sweep": sweep.as_config()}
    return {"trial": tune.grid_search(configs), "sweep": sweep.as_config()}


def _stopper(metric: MetricSpec):
    from ray import tune

    class StopSweep(tune.Stopper):
        """Ends the sweep when a trial reported a user error (the others would hit it
        too), or reached the metric's target (``metric.target``, as in W&B)."""

        def __init__(self) -> None:
            self.stopped = False

        def __call__(self, trial_id: str, result: dict) -> bool:
            if result.get(USER_ERROR_KEY) or metric.reached(result.get(metric.name)):
                self.stopped = True
                return True
            return False

        def stop_all(self) -> bool:
            return self.stopped

    return StopSweep()


def max_epochs(spec: SweepSpec, trials: list[Trial]) -> int:
    """The most epochs a trial trains (a bayes search may propose ``epochs``)."""
    most = max(t.train.resolved_hparams().epochs for t in trials)
    for key in ("epochs", "hparams.epochs"):
        param = spec.parameters.get(key)
        if param is not None and param.value is None:
            most = max(most, int(max(param.values or param.bounds)))
    return most


def _scheduler(spec: SweepSpec, trials: list[Trial]):
    """Ray Tune's scheduler for the spec's ``scheduler``, or W&B's hyperband stopping
    for its ``early_terminate``, counting epochs (training iterations)."""
    from ray.tune.schedulers import (
        ASHAScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
    )

    stopping = spec.stopping
    if stopping is None or stopping.type == "fifo":
        return None
    if stopping.type == "wandb_hyperband":
        from bopsweep.sweep.hyperband import WandbHyperBand

        return WandbHyperBand(stopping.cut_points, stopping.eta, stopping.strict)
    max_t = stopping.max_t or max_epochs(spec, trials)
    if stopping.type == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            grace_period=stopping.grace_period,
            reduction_factor=stopping.reduction_factor,
            brackets=stopping.brackets,
            max_t=max_t,
        )
    if stopping.type == "hyperband":
        return HyperBandScheduler(
            time_attr="training_iteration",
            max_t=max_t,
            reduction_factor=stopping.reduction_factor,
        )
    return MedianStoppingRule(
        time_attr="training_iteration",
        grace_period=stopping.grace_period,
        min_samples_required=stopping.min_samples_required,
    )


def _callbacks(extra: list) -> list:
    from ray.tune.logger import JsonLoggerCallback

    return [JsonLoggerCallback(), *extra]


def _ray_trial_name(ray_trial) -> str:
    return ray_trial.config["trial"]["dir"]


def build_tuner(
    loaded: LoadedSpec,
    groups: list[Group],
    configs: list[dict[str, Any]],
    sweep: contract.SweepContext,
    storage: str,
    callbacks: list,
):
    from ray import tune

    spec = loaded.spec
    trials = [t for g in groups for t in g.trials]
    search_alg = None
    if spec.method == "bayes":
        from bopsweep.sweep.search import build_searcher

        search_alg = build_searcher(spec, str(loaded.path))
    # Fused groups stop their members at ASHA's rungs themselves (trainable.py); a
    # scheduler above them would stop whole groups.
    fused = any(g.fused for g in groups)
    return tune.Tuner(
        _trainable(spec),
        param_space=_param_space(spec, configs, sweep),
        tune_config=tune.TuneConfig(
            metric=spec.metric.name,
            mode=spec.metric.mode,
            search_alg=search_alg,
            # A searcher's trials: one per configuration and seed.
            num_samples=len(trials) if search_alg is not None else 1,
            scheduler=None if fused else _scheduler(spec, trials),
            max_concurrent_trials=spec.max_concurrent_trials,
            time_budget_s=spec.time_budget_s,
            # Short trials would otherwise pay a new worker process (and torch import)
            # each; the trainable sets all of its state itself.
            reuse_actors=True,
            trial_name_creator=_ray_trial_name,
            trial_dirname_creator=_ray_trial_name,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage,
            stop=_stopper(spec.metric),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            callbacks=_callbacks(callbacks),
            verbose=0,
        ),
    )


def restore_tuner(
    spec: SweepSpec, experiment_path: str, configs: list, sweep: contract.SweepContext
):
    """The interrupted run, from its folder; the saved state brings back the trials,
    the searcher, the stopper and the callbacks. Trials that errored resume from
    their last checkpoint: a trial's own failures end it normally (trainable.py), so
    an errored trial is one whose worker, node or driver died."""
    from ray import tune

    return tune.Tuner.restore(
        experiment_path,
        _trainable(spec),
        resume_unfinished=True,
        resume_errored=True,
        param_space=_param_space(spec, configs, sweep),
    )


def restored_trials(experiment_path: str) -> list:
    from ray import tune

    return tune.ExperimentAnalysis(experiment_path).trials


def fit(tuner, experiment_path: str) -> tuple[list, dict[int, str]]:
    """Run the trials; returns Ray's trials (status, config, last result) and the
    error text of each failed one, by the index of each trial it held."""
    results = tuner.fit()
    ray_trials = restored_trials(experiment_path)
    held = {_ray_trial_name(t): member_indices(t) for t in ray_trials}
    errors = {}
    for result in results:
        if result.error is not None:
            for index in held.get(PurePosixPath(str(result.path)).name, []):
                errors[index] = str(result.error)
    return ray_trials, errors


def member_indices(ray_trial) -> list[int]:
    """The indices of the trials a Ray trial holds."""
    return contract.member_indices(ray_trial.config["trial"])


def member_results(ray_trial, result: dict | None = None) -> dict[int, dict]:
    """Each held trial's part of a Ray result (its last one unless given)."""
    result = ray_trial.last_result if result is None else result
    return contract.member_results(ray_trial.config["trial"], result)


def shutdown() -> None:
    import ray

    if not ray.is_initialized():
        return
    # A local instance's autoscaler monitor (it scales nothing here) ignores SIGTERM:
    # ray.shutdown() waits a whole second for it before it SIGKILLs it, a second at
    # the end of every sweep. It is killed first; connected to a cluster, this process
    # started no monitor and nothing is killed. Ray's node object is private: a Ray
    # without it only loses the second.
    node = getattr(ray._private.worker, "_global_node", None)
    try:
        if node is not None:
            node.kill_monitor(check_alive=False)
    except Exception:  # an optimisation: shutdown goes on
        logging.getLogger("bopsweep").debug("could not stop Ray's monitor", exc_info=True)
    # Ray Tune leaves reference cycles that hold actor handles and object refs. Freed
    # by the garbage collector in whichever thread allocates next (the report's, which
    # draws while Ray shuts down), their finalisers reach into the core worker while
    # ray.shutdown() takes it down, and Ray then quits the process at once: exit code
    # 1, and the terminal's buffered output lost. They are freed while Ray is up, and
    # no collection runs in any thread until it is down.
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    try:
        ray.shutdown()
    finally:
        if collecting:
            gc.enable()
