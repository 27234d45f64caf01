"""One Ray Tune trial: ``train()`` plus reporting, checkpoints and its MLflow run.

The trial sees only its config (Ray Tune's convention): the training config, its
index and swept values, and where to track. It sets torch's thread count to its
CPU share, so concurrent trials on one node do not oversubscribe the cores. It
reports every epoch with ``tune.report``, attaching a checkpoint (model, optimizer
with Bop's state and schedules, RNG states, epoch, MLflow run id) every
``checkpoint.every`` epochs; a retried trial resumes from there and keeps logging
into the same MLflow child run. File-backed datasets come from the node's shared
copy in Ray's object store when the driver set one up (``datacache``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from bopsweep.config import TrainConfig
from bopsweep.errors import TrainingDiverged
from bopsweep.sweep import datacache
from bopsweep.sweep.tracking import TrialTracker, flatten
from bopsweep.train import Callback, Trainer

STATE_FILE = "trainer.pt"
META_FILE = "meta.json"


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


class _ReportToTune(Callback):
    def __init__(self, tracker: TrialTracker, every: int) -> None:
        self.tracker = tracker
        self.every = every

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        # Queued for the tracker's sender thread; the epoch does not wait for it.
        self.tracker.log_epoch(metrics, step=int(metrics["epoch"]))
        last = trainer.epoch >= trainer.hparams.epochs
        if trainer.epoch % self.every and not last:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(trainer.state_dict(), Path(folder) / STATE_FILE)
            meta = {"run_id": self.tracker.run_id, "epoch": trainer.epoch}
            (Path(folder) / META_FILE).write_text(json.dumps(meta))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _threads(cpus: float) -> int:
    return max(1, int(cpus))


def run_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable of every bopsweep sweep."""
    trial, sweep = config["trial"], config["sweep"]
    torch.set_num_threads(_threads(sweep["cpus_per_trial"]))
    # The tracker retries with its own backoff, between epochs; MLflow's client must
    # not block training for minutes retrying a server that is down.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    train_config = TrainConfig.model_validate(trial["train"])
    data = datacache.shared_dataset(sweep["parent_run_id"], train_config)
    trainer = Trainer(train_config, data)
    resolved = {**train_config.model_dump(), "hparams": trainer.hparams.model_dump()}
    tracker = TrialTracker(
        sweep["tracking_uri"],
        sweep["experiment_id"],
        sweep["parent_run_id"],
        trial["index"],
        trial["name"],
        tags={
            **{f"swept.{k}": str(v) for k, v in trial["swept"].items()},
            **_placement_tags(),
            "bopsweep.dataset_copy": "node (Ray object store)" if data else "trial",
        },
        params=flatten(resolved),
        drain_timeout_s=float(sweep.get("drain_timeout_s", 120.0)),
    )
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, weights_only=False)
        trainer.load_state_dict(state)
        # Epochs a crash left in the tracker's queue are sent again from the
        # checkpoint's history; the steps the run already holds are skipped.
        for metrics in trainer.history:
            tracker.log_epoch(metrics, step=int(metrics["epoch"]))
    fault_epoch = os.environ.get("BOPSWEEP_FAULT_KILL_AT_EPOCH")
    callbacks: list[Callback] = [_ReportToTune(tracker, sweep["checkpoint_every"])]
    if fault_epoch is not None:
        callbacks.append(_KillAtEpoch(int(fault_epoch), trial["index"]))
    try:
        trainer.fit(callbacks)
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


class _KillAtEpoch(Callback):
    """Fault injection for the reliability tests: the first attempt of trial
    ``BOPSWEEP_FAULT_TRIAL`` (default 0) SIGKILLs its own worker in the middle of
    epoch k (after its second batch); ``BOPSWEEP_FAULT_MARKER`` records that it did."""

    def __init__(self, epoch: int, trial_index: int) -> None:
        self.epoch = epoch
        self.armed = trial_index == int(os.environ.get("BOPSWEEP_FAULT_TRIAL", "0"))

    def on_batch_end(self, trainer: Trainer, step: int) -> None:
        marker = Path(os.environ.get("BOPSWEEP_FAULT_MARKER", "/nonexistent"))
        if self.armed and trainer.epoch == self.epoch and step == 1 and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("killed once")
            os.kill(os.getpid(), 9)
