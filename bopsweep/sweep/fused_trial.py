"""One Ray Tune trial holding a fused group: K trials trained as one stacked model.

Everything a trial has, each member still has: its own MLflow child run (same
parent, params, tags and metric names as if it ran alone, written by the group's
process), its own history in the group's checkpoint, resume and retry without a
repeated step (each member's tracker skips the steps its run holds), its own status.

* A member whose loss stops being finite is FAILED (its run says why) and frozen;
  the others go on.
* Early stopping: with an ASHA scheduler in the spec, the group applies successive
  halving to its own members at ASHA's rungs (``grace_period * reduction_factor**i``
  epochs): at each rung only the best ``ceil(n / reduction_factor)`` of the ``n``
  members still training go on. The others are frozen; their runs end FINISHED (as
  Ray Tune ends the trials its scheduler stops) and tagged ``bopsweep.stopped_early``.
  Members are compared within their group (groups are not compared with each other);
  a frozen member keeps its slot in the fused model until the group ends.

The group reports to Ray Tune once per epoch: each member's metrics under
``members.<index>`` and the best member's value of the sweep's metric at the top.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray import tune

from bopsweep.config import TrainConfig
from bopsweep.errors import UserError
from bopsweep.sweep import datacache, tracking
from bopsweep.sweep.ray_backend import MEMBER_ERROR_KEY, MEMBER_STATUS_KEY, USER_ERROR_KEY
from bopsweep.sweep.tracking import TrialTracker
from bopsweep.sweep.trainable import (
    CheckpointPolicy,
    _enter,
    _load_state,
    _placement_tags,
    _report,
    _tracker,
    extra_callbacks,
)
from bopsweep.train_fused import FusedCallback, FusedTrainer

STOPPED_EARLY = "stopped early"
# A member whose run ended FINISHED before a restart: frozen, not trained again.
COMPLETED = "finished before the restart"


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


class _ReportGroupToTune(FusedCallback):
    def __init__(
        self,
        trackers: dict[int, TrialTracker],
        indices: list[int],
        policy: CheckpointPolicy,
        timings: dict,
        sweep: dict,
        halving: SuccessiveHalving | None,
        extra: list,
        completed: dict[int, dict],
    ) -> None:
        self.trackers = trackers
        self.completed = completed
        self.indices = indices
        self.policy = policy
        self.timings = timings
        self.sweep = sweep
        self.metric = sweep.get("metric", "val_accuracy")
        self.mode = sweep.get("mode", "max")
        self.halving = halving
        self.extra = extra

    def on_train_start(self, trainer: FusedTrainer) -> None:
        for cb in self.extra:
            cb.on_train_start(trainer)

    def on_batch_end(self, trainer: FusedTrainer, step: int) -> None:
        for cb in self.extra:
            cb.on_batch_end(trainer, step)

    def _end_member(self, member: int, status: str, reason: str) -> None:
        tracker = self.trackers.pop(member, None)
        if tracker is None:
            return
        if status == "FAILED":
            tracker.set_tags({"bopsweep.failure": reason})
        else:
            tracker.set_tags({"bopsweep.stopped_early": "true"})
        tracker.finish(status)

    def on_epoch_end(self, trainer: FusedTrainer, metrics: list) -> None:
        for k, member_metrics in enumerate(metrics):
            if member_metrics is not None and k in self.trackers:
                self.trackers[k].log_epoch(member_metrics, step=int(member_metrics["epoch"]))
        if self.halving is not None:
            values = {
                k: float(m.get(self.metric, math.nan))
                for k, m in enumerate(metrics)
                if m is not None
            }
            for k in self.halving.losers(trainer.epoch, values):
                trainer.stop(k, STOPPED_EARLY)
        for k, reason in trainer.stopped.items():
            self._end_member(k, "FINISHED" if reason == STOPPED_EARLY else "FAILED", reason)
        for cb in self.extra:
            cb.on_epoch_end(trainer, metrics)
        epoch_metrics = [m for m in metrics if m is not None]
        for m in epoch_metrics:
            self.timings["train_s"] += float(m.get("epoch_time_s", 0.0)) / len(epoch_metrics)
        last = trainer.epoch >= trainer.epochs or not trainer.active
        if last:
            started = time.perf_counter()
            tracking.flush_all(self.trackers.values())
            self.timings["drain_s"] += time.perf_counter() - started
        result = self._result(trainer, metrics)
        if not self.policy.due(trainer.epoch, last):
            _report(result, self.timings, None, {})
            return
        meta = {"epoch": trainer.epoch, "run_ids": {i: t.run_id for i, t in self.trackers.items()}}
        _report(result, self.timings, trainer.state_dict(), meta)
        self.policy.taken()

    def _result(self, trainer: FusedTrainer, metrics: list) -> dict[str, Any]:
        parts: dict[int, dict] = {}
        for k in range(len(self.indices)):
            if k in self.completed:
                parts[k] = dict(self.completed[k])
                continue
            part = dict(metrics[k] or (trainer.histories[k][-1] if trainer.histories[k] else {}))
            if k in trainer.stopped:
                reason = trainer.stopped[k]
                failed = reason not in (STOPPED_EARLY, COMPLETED)
                part[MEMBER_STATUS_KEY] = "FAILED" if failed else "FINISHED"
                if failed:
                    part[MEMBER_ERROR_KEY] = reason
            parts[k] = part
        ranked = [m for m in metrics if m is not None] + list(self.completed.values())
        return _group_result(parts, self.indices, trainer.epoch - 1, ranked, self.sweep)


def _halving(sweep: dict, epochs: int) -> SuccessiveHalving | None:
    scheduler = sweep.get("scheduler")
    if not scheduler or scheduler.get("type") != "asha":
        return None
    return SuccessiveHalving(
        scheduler["grace_period"],
        scheduler["reduction_factor"],
        scheduler.get("max_t") or epochs,
        sweep.get("mode", "max"),
    )


def _group_result(
    parts: dict[int, dict],
    indices: list[int],
    epoch: int,
    ranked: list[dict],
    sweep: dict,
) -> dict[str, Any]:
    """The group's report to Ray Tune: member ``k``'s metrics under
    ``members.<its trial index>``, and at the top the best value of the sweep's metric
    among the ``ranked`` members' metrics."""
    metric, mode = sweep.get("metric", "val_accuracy"), sweep.get("mode", "max")
    values = [m[metric] for m in ranked if metric in m]
    result: dict[str, Any] = {
        "epoch": epoch,
        "members": {str(indices[k]): part for k, part in parts.items()},
    }
    if values:
        result[metric] = max(values) if mode == "max" else min(values)
    return result


def run_group(config: dict[str, Any]) -> None:
    """The Ray Tune trial of a fused group (called by ``trainable.run_trial``)."""
    entered = time.perf_counter()
    group, sweep = config["trial"], config["sweep"]
    members = group["members"]
    timings = _enter(sweep)
    try:
        configs = [TrainConfig.model_validate(m["train"]) for m in members]
        data = datacache.shared_dataset(sweep["parent_run_id"], configs[0])
        trainer = FusedTrainer(configs, data)
    except UserError as error:
        tune.report({USER_ERROR_KEY: str(error)})
        return
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        trainer.load_state_dict(_load_state(checkpoint))
        if trainer.epoch >= trainer.epochs or not trainer.active:
            return
    tags = {
        **_placement_tags(),
        "bopsweep.dataset_copy": "node (Ray object store)" if data else "trial",
        "bopsweep.fused_group": group["dir"],
        "bopsweep.fused_members": str(len(members)),
    }

    def open_run(k: int) -> TrialTracker:
        resolved = {
            **configs[k].model_dump(),
            "precision": trainer.precision,
            "hparams": trainer.hparams[k].model_dump(),
        }
        options = tracking.trial_options(
            sweep, configs[k].dataset, configs[k].data_dir, trainer.data
        )
        tracker = _tracker(sweep, members[k], resolved, tags, options)
        for metrics in trainer.histories[k]:
            tracker.log_epoch(metrics, step=int(metrics["epoch"]))
        return tracker

    # One after the other: a few requests each (threads only contend for a local
    # sqlite store's lock: 0.7 s against 0.1 s for five runs).
    trackers: dict[int, TrialTracker] = {
        k: open_run(k)
        for k in range(len(members))
        if trainer.stopped.get(k, COMPLETED) == COMPLETED
    }
    # Members whose runs ended FINISHED before the driver died (after Ray's last
    # snapshot of the sweep) keep their runs as they are and are frozen, not trained
    # again; a group of only those is done.
    completed = {k: t.completed for k, t in trackers.items() if t.completed is not None}
    indices = [m["index"] for m in members]
    for k in completed:
        trackers.pop(k).close()
        if k not in trainer.stopped:
            trainer.stop(k, COMPLETED)
    if completed and not trackers:
        epoch = max(int(m.get("epoch", -1)) for m in completed.values())
        tune.report(_group_result(completed, indices, epoch, list(completed.values()), sweep))
        return
    policy = CheckpointPolicy(sweep.get("checkpoint_every"), sweep.get("checkpoint_every_s"))
    report = _ReportGroupToTune(
        trackers,
        indices,
        policy,
        timings,
        sweep,
        _halving(sweep, trainer.epochs),
        extra_callbacks(group["index"]),
        completed,
    )
    timings["setup_s"] = time.perf_counter() - entered
    try:
        trainer.fit([report])
    except UserError as error:
        for tracker in report.trackers.values():
            tracker.set_tags({"bopsweep.failure": str(error)})
        tracking.finish_all(report.trackers.values(), "FAILED")
        tune.report({USER_ERROR_KEY: str(error)})
        return
    except Exception as error:
        for tracker in report.trackers.values():
            tracker.set_tags({"bopsweep.failure": f"{type(error).__name__}: {error}"})
        tracking.finish_all(report.trackers.values(), "FAILED")
        raise
    except BaseException:
        tracking.flush_all(report.trackers.values(), timeout_s=10)
        for tracker in report.trackers.values():
            tracker.close()
        raise
    tracking.finish_all(report.trackers.values(), "FINISHED")
