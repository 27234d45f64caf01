"""One Ray Tune trial: a group of K >= 1 members trained by one ``Trainer``.

The trial sees only its config (Ray Tune's convention): a
:class:`~bopsweep.sweep.contract.TrialGroup` and the sweep's
:class:`~bopsweep.sweep.contract.SweepContext`. K = 1 is a plain trial; K > 1 members
train as one stacked model (``fuse`` in the spec). Everything a trial has, each member
has: its own MLflow child run (same parent, params, tags and metric names whatever K
is), its own history in the group's checkpoint, resume and retry without a repeated
step (each member's tracker skips the steps its run holds), its own status and models.

The trial sets torch's thread count to its CPU share, so concurrent trials on one node
do not oversubscribe the cores, and reports every epoch with ``tune.report``
(:func:`~bopsweep.sweep.contract.group_result`). Checkpoints (model, optimizers with
Bop's state and schedules, RNG states, epoch, histories) cost a save and a copy, so
they are taken when ``checkpoint.every_s`` seconds have passed since the last one,
every ``checkpoint.every`` epochs if set, and always after the last epoch.

Failures come in two kinds, told apart here:

* the trial's own (a user error, a member whose loss diverged, an exception in the
  training code): never retried, since it would fail the same way again. The member
  (or every member, for an exception) ends FAILED with its message, in its run and in
  the group's result; the Ray trial itself ends normally. A user error also stops the
  sweep (every other trial would hit it too);
* the infrastructure's (the worker process or its node died, the actor was
  cancelled): Ray sees the trial error and retries it from its last checkpoint
  (``max_failures``), and a rerun of the command resumes it.

Early stopping: with ASHA in the spec, a group of K > 1 applies successive halving to
its own members at ASHA's rungs (``grace_period * reduction_factor**i`` epochs): at
each rung only the best ``ceil(n / reduction_factor)`` of the ``n`` members still
training go on; the others are stopped, their runs end FINISHED and tagged
``bopsweep.stopped_early``. Groups of one are stopped by Ray Tune's scheduler.

Extension point: ``BOPSWEEP_TRIAL_CALLBACKS`` names extra training callbacks as
``module:factory`` (comma-separated); each factory is called with the group's trial
index and returns a :class:`~bopsweep.train.Callback` or None. Profilers and the fault
injection of the reliability tests (:mod:`bopsweep.testing`) plug in there.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from ray import tune

from bopsweep.config import TrainConfig
from bopsweep.errors import TrainingDiverged, UserError
from bopsweep.sweep import datacache, tracking
from bopsweep.sweep.contract import (
    MEMBER_ERROR_KEY,
    MEMBER_STATUS_KEY,
    TIMING_PREFIX,
    TRACKING_OFFLINE_ENV,
    USER_ERROR_KEY,
    SweepContext,
    TrialGroup,
    group_result,
)
from bopsweep.sweep.mlflow_client import flatten
from bopsweep.sweep.run_contents import ModelKeeper
from bopsweep.sweep.tracking import TrialTracker
from bopsweep.train import Callback, Trainer

STATE_FILE = "trainer.pt"
META_FILE = "meta.json"
CALLBACKS_ENV = "BOPSWEEP_TRIAL_CALLBACKS"
# The most an epoch waits for its metrics to reach the tracking server before a
# report that a scheduler may answer by stopping the trial (the server answered the
# request before; an outage that starts meanwhile costs this once).
STOP_FLUSH_TIMEOUT_S = 30.0
STOPPED_EARLY = "stopped early"
# A member whose run ended FINISHED before a restart: frozen, not trained again.
COMPLETED = "finished before the restart"


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


class SuccessiveHalving:
    """ASHA's rungs applied synchronously to the members of one group."""

    def __init__(self, grace_period: int, reduction_factor: float, max_t: int, mode: str) -> None:
        self.rungs = set()
        rung = grace_period
        while rung < max_t:
            self.rungs.add(rung)
            rung = math.ceil(rung * reduction_factor)
        self.reduction_factor = reduction_factor
        self.mode = mode

    def losers(self, epochs_done: int, values: dict[int, float]) -> list[int]:
        """The members to stop after ``epochs_done`` epochs, given each training
        member's metric value."""
        if epochs_done not in self.rungs or len(values) < 2:
            return []
        keep = max(1, math.ceil(len(values) / self.reduction_factor))

        def score(member: int) -> float:
            value = values[member]
            if not math.isfinite(value):
                return -math.inf
            return value if self.mode == "max" else -value

        ranked = sorted(values, key=score, reverse=True)
        return sorted(ranked[keep:])


def halving(sweep: SweepContext, members: int, epochs: int) -> SuccessiveHalving | None:
    """A group's own successive halving (ASHA with K > 1 members), else None."""
    scheduler = sweep.scheduler
    if members < 2 or not scheduler or scheduler.get("type") != "asha":
        return None
    return SuccessiveHalving(
        scheduler["grace_period"],
        scheduler["reduction_factor"],
        scheduler.get("max_t") or epochs,
        sweep.mode,
    )


class ReportToTune(Callback):
    """Per epoch: each member's metrics to its run, models, early stopping inside the
    group, then the group's report to Ray Tune (with a checkpoint when due)."""

    def __init__(
        self,
        trackers: dict[int, TrialTracker],
        group: TrialGroup,
        sweep: SweepContext,
        timings: dict,
        completed: dict[int, dict] | None = None,
        models: dict[int, ModelKeeper] | None = None,
    ) -> None:
        self.trackers = trackers
        self.group = group
        self.sweep = sweep
        self.timings = timings
        self.completed = completed or {}
        self.models = models or {}
        self.policy = CheckpointPolicy(sweep.checkpoint_every, sweep.checkpoint_every_s)
        self.halving: SuccessiveHalving | None = None
        # Ray Tune's early-stopping scheduler may stop the trial at any report.
        self.may_stop = sweep.scheduler_type != "fifo"

    def on_train_start(self, trainer: Trainer) -> None:
        self.halving = halving(self.sweep, trainer.members, trainer.epochs)

    def _end_member(self, member: int, reason: str) -> None:
        tracker = self.trackers.pop(member, None)
        if tracker is None:
            return
        if reason in (STOPPED_EARLY, COMPLETED):
            tracker.set_tags({"bopsweep.stopped_early": "true"})
            tracker.finish("FINISHED")
        else:
            tracker.set_tags({"bopsweep.failure": reason})
            tracker.finish("FAILED")

    def on_epoch_end(self, trainer: Trainer, metrics: list) -> None:
        for k, member_metrics in enumerate(metrics):
            if member_metrics is not None and k in self.trackers:
                # Queued for the tracker's sender thread; the epoch does not wait for it.
                self.trackers[k].log_epoch(member_metrics, step=int(member_metrics["epoch"]))
        if self.halving is not None:
            values = {
                k: float(m.get(self.sweep.metric, math.nan))
                for k, m in enumerate(metrics)
                if m is not None
            }
            for k in self.halving.losers(trainer.epoch, values):
                trainer.stop(k, STOPPED_EARLY)
        last = trainer.epoch >= trainer.epochs or not trainer.active
        for k, keeper in self.models.items():
            # Models of the members that train to the end (not of those stopped early
            # or failed, as Ray Tune's own early stop leaves a trial's).
            if k in self.trackers and k not in trainer.stopped:
                keeper.after_epoch(trainer, last)
        for k, reason in trainer.stopped.items():
            self._end_member(k, reason)
        epoch_times = [float(m.get("epoch_time_s", 0.0)) for m in metrics if m is not None]
        if epoch_times:
            self.timings["train_s"] += max(epoch_times)
        if last or (self.may_stop and all(t.reachable for t in self.trackers.values())):
            # Sent (models included) before the report, which Ray's scheduler may
            # answer by stopping the trial: a stopped trial's actor ends within
            # seconds, and its sender threads with it. After the last epoch also so
            # that Ray's record of the trial includes the wait for the tracking
            # server; before other epochs only while the server answers (during an
            # outage the epochs wait in the queue and the local results, for sync).
            started = time.perf_counter()
            tracking.flush_all(self.trackers.values(), None if last else STOP_FLUSH_TIMEOUT_S)
            self.timings["drain_s"] += time.perf_counter() - started
        result = self.result(trainer, metrics)
        if not self.policy.due(trainer.epoch, last):
            _report(result, self.timings, None, {})
            return
        meta = {"epoch": trainer.epoch, "run_ids": {i: t.run_id for i, t in self.trackers.items()}}
        _report(result, self.timings, trainer.state_dict(), meta)
        self.policy.taken()

    def result(self, trainer: Trainer, metrics: list) -> dict[str, Any]:
        """The group's report: each member's latest metrics, with its own status and
        error once it ended before the group."""
        parts: dict[int, dict] = {}
        for k, member in enumerate(self.group.members):
            if k in self.completed:
                parts[member.index] = dict(self.completed[k])
                continue
            latest = metrics[k] if metrics else None
            part = dict(latest or (trainer.histories[k][-1] if trainer.histories[k] else {}))
            if k in trainer.stopped:
                reason = trainer.stopped[k]
                failed = reason not in (STOPPED_EARLY, COMPLETED)
                part[MEMBER_STATUS_KEY] = "FAILED" if failed else "FINISHED"
                if failed:
                    part[MEMBER_ERROR_KEY] = reason
            parts[member.index] = part
        ranked = [m for m in (metrics or []) if m is not None] + list(self.completed.values())
        return group_result(parts, trainer.epoch - 1, ranked, self.sweep.metric, self.sweep.mode)


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


def _enter(sweep: SweepContext) -> dict[str, float]:
    """What every trial sets up first; returns its timings."""
    torch.set_num_threads(_threads(sweep.cpus_per_trial))
    # The tracker retries with its own backoff, between epochs; MLflow's client must
    # not block training for minutes retrying a server that is down.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    # started_at (wall clock) places the trial on the sweep's timeline.
    timings = {"started_at": time.time(), "setup_s": 0.0, "train_s": 0.0, "drain_s": 0.0}
    timings.update(checkpoint_s=0.0, checkpoints=0)
    return timings


def _load_state(checkpoint) -> dict:
    with checkpoint.as_directory() as folder:
        # Onto the CPU whatever device wrote it; the trainer copies it onto its device.
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


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


def _open_run(
    trainer: Trainer, k: int, group: TrialGroup, sweep: SweepContext, tags: dict
) -> TrialTracker:
    """Member ``k``'s tracker: its run's swept values, tags and resolved params; the
    epochs of its history a crash may have left unsent are queued again (the steps
    its run holds are skipped)."""
    member, config = group.members[k], trainer.configs[k]
    resolved = {
        **config.model_dump(),
        # The precision the trainer chose (``auto`` resolves by hardware and model).
        "precision": trainer.precision,
        "hparams": trainer.member_hparams[k].model_dump(),
    }
    tracker = TrialTracker(
        sweep.tracking_uri,
        sweep.experiment_id,
        sweep.parent_run_id,
        member.index,
        member.name,
        tags={
            **{f"swept.{key}": str(v) for key, v in member.swept.items()},
            **tags,
            **tracking.trial_tags(sweep),
        },
        params=flatten(resolved),
        drain_timeout_s=0.0 if os.environ.get(TRACKING_OFFLINE_ENV) else sweep.drain_timeout_s,
        **tracking.trial_options(sweep, config.dataset, config.data_dir, trainer.data),
    )
    for metrics in trainer.histories[k]:
        tracker.log_epoch(metrics, step=int(metrics["epoch"]))
    return tracker


def _failure(error: BaseException) -> str:
    if isinstance(error, (TrainingDiverged, UserError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def run_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable of every bopsweep sweep."""
    entered = time.perf_counter()
    group = TrialGroup.from_config(config["trial"])
    sweep = SweepContext.from_config(config["sweep"])
    timings = _enter(sweep)
    try:
        configs = [TrainConfig.model_validate(m.train) for m in group.members]
        data = datacache.shared_dataset(sweep.parent_run_id, configs[0])
        trainer = Trainer(configs, data)
    except UserError as error:
        # Deterministic: every retry and every other trial would fail the same way.
        tune.report({USER_ERROR_KEY: str(error)})
        return
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        trainer.load_state_dict(_load_state(checkpoint))
        if trainer.epoch >= trainer.epochs or not trainer.active:
            # Finished before the driver died, after Ray's last snapshot of the
            # sweep: its runs are complete; the driver settles their status.
            return
    tags = {
        **_placement_tags(),
        "bopsweep.dataset_copy": "node (Ray object store)" if data else "trial",
    }
    if trainer.members > 1:
        tags["bopsweep.fused_group"] = group.dir
        tags["bopsweep.fused_members"] = str(trainer.members)
    # One after the other: a few requests each (threads only contend for a local
    # sqlite store's lock: 0.7 s against 0.1 s for five runs).
    trackers = {
        k: _open_run(trainer, k, group, sweep, tags)
        for k in range(trainer.members)
        if trainer.stopped.get(k, COMPLETED) == COMPLETED
    }
    # Members whose runs ended FINISHED before the driver died (after Ray's last
    # snapshot of the sweep) keep their runs as they are and are frozen, not trained
    # again; a group of only those is done: Ray gets their runs' last epochs.
    completed = {k: t.completed for k, t in trackers.items() if t.completed is not None}
    for k in completed:
        trackers.pop(k).close()
        if k not in trainer.stopped:
            trainer.stop(k, COMPLETED)
    if completed and not trackers:
        parts = {group.members[k].index: m for k, m in completed.items()}
        epoch = max(int(m.get("epoch", -1)) for m in completed.values())
        ranked = list(completed.values())
        result = group_result(parts, epoch, ranked, sweep.metric, sweep.mode)
        tune.report({**result, **_timing_keys(timings)})
        return
    models = {k: ModelKeeper(t, sweep.models, k) for k, t in trackers.items()}
    report = ReportToTune(trackers, group, sweep, timings, completed, models)
    timings["setup_s"] = time.perf_counter() - entered
    try:
        trainer.fit([report, *extra_callbacks(group.index)])
    except Exception as error:
        # The trial's own failure: every member still training ends FAILED with its
        # message, and the Ray trial ends normally (a retry would fail the same way;
        # Ray's retries are for workers and nodes that died).
        reason = _failure(error)
        traceback.print_exc()  # the whole story, in the trial's log
        for k in trainer.active:
            trainer.stop(k, reason)
        for tracker in report.trackers.values():
            tracker.set_tags({"bopsweep.failure": reason})
        tracking.finish_all(report.trackers.values(), "FAILED")
        result = report.result(trainer, [])
        if isinstance(error, UserError):
            result[USER_ERROR_KEY] = reason
        tune.report({**result, **_timing_keys(timings)})
        return
    except BaseException:
        # Ray's own stop (a scheduler's early stop, Ctrl-C) arrives as SystemExit
        # from tune.report: send what is queued; the driver settles the status.
        tracking.flush_all(report.trackers.values(), timeout_s=10)
        for tracker in report.trackers.values():
            tracker.close()
        raise
    members = {id(t): group.members[k].index for k, t in report.trackers.items()}
    for tracker in tracking.finish_all(report.trackers.values(), "FINISHED"):
        # Shown in the trial's log; the driver reports the missing epochs.
        print(
            f"bopsweep: trial {members[id(tracker)]} could not log every epoch to "
            f"{sweep.tracking_uri}: {tracker.refused or 'the server did not answer'}",
            file=sys.stderr,
        )
