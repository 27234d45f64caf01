"""One Ray Tune trial: ``train()`` plus reporting, checkpoints and its MLflow run.

The trial sees only its config (Ray Tune's convention): the training config, its
index and swept values, and where to track. It sets torch's thread count to its
CPU share, so concurrent trials on one node do not oversubscribe the cores. It
reports every epoch with ``tune.report``. Checkpoints (model, optimizer with Bop's
state and schedules, RNG states, epoch, MLflow run id) cost a save and a copy, so
they are taken when ``checkpoint.every_s`` seconds have passed since the last one,
every ``checkpoint.every`` epochs if set, and always after the last epoch. A
retried trial resumes from its last checkpoint and keeps logging into the same
MLflow child run; epochs it trains again are not logged twice (the tracker skips
steps the run holds), so nothing is lost or duplicated.

A :class:`~bopsweep.errors.UserError` (missing data, a bad value) would fail the
same way on every retry and in every trial: the trial reports it and ends, and the
driver stops the sweep with that one message.

Extension point: ``BOPSWEEP_TRIAL_CALLBACKS`` names extra training callbacks as
``module:factory`` (comma-separated); each factory is called with the trial index
and returns a :class:`~bopsweep.train.Callback` or None. Profilers and the fault
injection of the reliability tests (:mod:`bopsweep.testing`) plug in there.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from bopsweep.config import TrainConfig
from bopsweep.errors import TrainingDiverged, UserError
from bopsweep.sweep import datacache, tracking
from bopsweep.sweep.mlflow_client import flatten
from bopsweep.sweep.ray_backend import TIMING_PREFIX, USER_ERROR_KEY
from bopsweep.sweep.tracking import TrialTracker
from bopsweep.train import Callback, Trainer

STATE_FILE = "trainer.pt"
META_FILE = "meta.json"
CALLBACKS_ENV = "BOPSWEEP_TRIAL_CALLBACKS"
# The most an epoch waits for its metrics to reach the tracking server before a
# report that a scheduler may answer by stopping the trial (the server answered the
# request before; an outage that starts meanwhile costs this once).
STOP_FLUSH_TIMEOUT_S = 30.0


def _placement_tags() -> dict[str, str]:
    """Where the trial ran, so users can see it in the MLflow UI."""
    context = tune.get_context()
    tags = {
        "bopsweep.hostname": socket.gethostname(),
        "bopsweep.ray_trial_id": context.get_trial_id(),
    }
    try:
        import ray

        tags["bopsweep.node_id"] = ray.get_runtime_context().get_node_id()
        gpu_ids = ray.get_gpu_ids()
        if gpu_ids:
            tags["bopsweep.gpu_ids"] = ",".join(str(g) for g in gpu_ids)
    except Exception:  # placement tags are informative only
        pass
    if torch.cuda.is_available():
        tags["bopsweep.gpu"] = torch.cuda.get_device_name(0)
    return tags


class CheckpointPolicy:
    """When to attach a checkpoint: after ``every_s`` seconds, every ``every``
    epochs (if set), and after the last epoch."""

    def __init__(self, every: int | None, every_s: float | None) -> None:
        self.every = every
        self.every_s = every_s
        self.last = time.monotonic()

    def due(self, epoch: int, last_epoch: bool) -> bool:
        if last_epoch:
            return True
        if self.every is not None and epoch % self.every == 0:
            return True
        return self.every_s is not None and time.monotonic() - self.last >= self.every_s

    def taken(self) -> None:
        self.last = time.monotonic()


class _ReportToTune(Callback):
    def __init__(
        self,
        tracker: TrialTracker,
        policy: CheckpointPolicy,
        timings: dict,
        models: tracking.ModelKeeper,
        may_stop: bool = False,
    ) -> None:
        self.tracker = tracker
        self.policy = policy
        self.timings = timings
        self.models = models
        self.may_stop = may_stop

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        # Queued for the tracker's sender thread; the epoch does not wait for it.
        self.tracker.log_epoch(metrics, step=int(metrics["epoch"]))
        self.timings["train_s"] += float(metrics.get("epoch_time_s", 0.0))
        last = trainer.epoch >= trainer.hparams.epochs
        self.models.after_epoch(trainer, last)
        if last or (self.may_stop and self.tracker.reachable):
            # Sent (models included) before the report, which Ray's scheduler may
            # answer by stopping the trial: a stopped trial's actor ends within
            # seconds, and its sender thread with it. After the last epoch also so
            # that Ray's record of the trial includes the wait for the tracking
            # server; before other epochs only while the server answers (during an
            # outage the epochs wait in the queue and the local results, for sync).
            started = time.perf_counter()
            self.tracker.flush(None if last else STOP_FLUSH_TIMEOUT_S)
            self.timings["drain_s"] += time.perf_counter() - started
        if not self.policy.due(trainer.epoch, last):
            _report(metrics, self.timings, None, {})
            return
        meta = {"run_id": self.tracker.run_id, "epoch": trainer.epoch}
        _report(metrics, self.timings, trainer.state_dict(), meta)
        self.policy.taken()


def _timing_keys(timings: dict) -> dict[str, float]:
    return {f"{TIMING_PREFIX}{k}": float(v) for k, v in timings.items()}


def _threads(cpus: float) -> int:
    return max(1, int(cpus))


def extra_callbacks(trial_index: int) -> list[Callback]:
    """The callbacks named by ``BOPSWEEP_TRIAL_CALLBACKS`` (see the module docstring)."""
    callbacks = []
    for entry in filter(None, os.environ.get(CALLBACKS_ENV, "").split(",")):
        module, _, name = entry.strip().partition(":")
        factory = getattr(importlib.import_module(module), name)
        callback = factory(trial_index)
        if callback is not None:
            callbacks.append(callback)
    return callbacks


def _enter(sweep: dict) -> dict[str, float]:
    """What every trial sets up first; returns its timings."""
    torch.set_num_threads(_threads(sweep["cpus_per_trial"]))
    # The tracker retries with its own backoff, between epochs; MLflow's client must
    # not block training for minutes retrying a server that is down.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    # started_at (wall clock) places the trial on the sweep's timeline.
    timings = {"started_at": time.time(), "setup_s": 0.0, "train_s": 0.0, "drain_s": 0.0}
    timings.update(checkpoint_s=0.0, checkpoints=0)
    return timings


def _tracker(sweep: dict, member: dict, params: dict, tags: dict, options: dict) -> TrialTracker:
    """A trial's tracker: its run's swept values, tags and params, and the tracker
    settings of :func:`bopsweep.sweep.tracking.trial_options`."""
    return TrialTracker(
        sweep["tracking_uri"],
        sweep["experiment_id"],
        sweep["parent_run_id"],
        member["index"],
        member["name"],
        tags={
            **{f"swept.{k}": str(v) for k, v in member["swept"].items()},
            **tags,
            **tracking.trial_tags(sweep),
        },
        params=flatten(params),
        drain_timeout_s=float(sweep.get("drain_timeout_s", 120.0)),
        **options,
    )


def _load_state(checkpoint) -> dict:
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, weights_only=False)


def _report(metrics: dict, timings: dict, state: dict | None, meta: dict) -> None:
    """``tune.report``, with a checkpoint of ``state`` when given."""
    if state is None:
        tune.report({**metrics, **_timing_keys(timings)})
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / STATE_FILE)
        (Path(folder) / META_FILE).write_text(json.dumps(meta))
        checkpoint = tune.Checkpoint.from_directory(folder)
        # Ray copies the folder to the sweep's storage inside report().
        timings["checkpoints"] += 1
        timings["checkpoint_s"] += time.perf_counter() - started
        tune.report({**metrics, **_timing_keys(timings)}, checkpoint=checkpoint)


def run_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable of every bopsweep sweep."""
    if "members" in config["trial"]:
        from bopsweep.sweep.fused_trial import run_group

        run_group(config)
        return
    entered = time.perf_counter()
    trial, sweep = config["trial"], config["sweep"]
    timings = _enter(sweep)
    try:
        train_config = TrainConfig.model_validate(trial["train"])
        data = datacache.shared_dataset(sweep["parent_run_id"], train_config)
        trainer = Trainer(train_config, data)
    except UserError as error:
        # Deterministic: every retry and every other trial would fail the same way.
        tune.report({USER_ERROR_KEY: str(error)})
        return
    # The precision the trainer chose (``auto`` resolves by hardware and model).
    resolved = {
        **train_config.model_dump(),
        "precision": trainer.precision,
        "hparams": trainer.hparams.model_dump(),
    }
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        trainer.load_state_dict(_load_state(checkpoint))
        if trainer.epoch >= trainer.hparams.epochs:
            # Finished before the driver died, after Ray's last snapshot of the
            # sweep: its run is complete; the driver settles its status.
            return
    tags = {
        **_placement_tags(),
        "bopsweep.dataset_copy": "node (Ray object store)" if data else "trial",
    }
    options = tracking.trial_options(
        sweep, train_config.dataset, train_config.data_dir, trainer.data
    )
    tracker = _tracker(sweep, trial, resolved, tags, options)
    if tracker.completed is not None:
        # Finished before the driver died, after Ray's last snapshot of the sweep:
        # Ray gets the run's last epoch and nothing is trained or logged again.
        tracker.close()
        tune.report({**tracker.completed, **_timing_keys(timings)})
        return
    # Epochs a crash left in the tracker's queue are sent again from the checkpoint's
    # history; the steps the run already holds are skipped.
    for metrics in trainer.history:
        tracker.log_epoch(metrics, step=int(metrics["epoch"]))
    policy = CheckpointPolicy(sweep.get("checkpoint_every"), sweep.get("checkpoint_every_s"))
    models = tracking.ModelKeeper(tracker, sweep.get("models", ()))
    # An early-stopping scheduler may stop the trial at any report.
    scheduler = sweep.get("scheduler") or {}
    may_stop = scheduler.get("type", "fifo") != "fifo"
    callbacks: list[Callback] = [_ReportToTune(tracker, policy, timings, models, may_stop)]
    callbacks += extra_callbacks(trial["index"])
    timings["setup_s"] = time.perf_counter() - entered
    try:
        trainer.fit(callbacks)
    except UserError as error:
        tracker.set_tags({"bopsweep.failure": str(error)})
        tracker.finish("FAILED")
        tune.report({USER_ERROR_KEY: str(error)})
        return
    except Exception as error:
        reason = (
            str(error)
            if isinstance(error, TrainingDiverged)
            else f"{type(error).__name__}: {error}"
        )
        tracker.set_tags({"bopsweep.failure": reason})
        tracker.finish("FAILED")
        raise
    except BaseException:
        # Ray's own stop (a scheduler's early stop, Ctrl-C) arrives as SystemExit
        # from tune.report: send what is queued; the driver settles the status.
        tracker.flush(timeout_s=10)
        tracker.close()
        raise
    if not tracker.finish("FINISHED"):
        # Shown in the trial's log; the driver reports the missing epochs.
        print(
            f"bopsweep: trial {trial['index']} could not log every epoch to "
            f"{sweep['tracking_uri']}: {tracker.refused or 'the server did not answer'}",
            file=sys.stderr,
        )
