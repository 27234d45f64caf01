"""``bopsweep sync NAME``: upload to MLflow what a sweep's tracking server missed.

Every trial's per-epoch metrics are also in its results (Ray's ``result.json``
under ``<storage>/<name>/trial_NNN``, or a fused group's ``fused_NNN`` whose rows hold
each member's epoch, as one JSON text under ``members``; a local folder or a URI such
as ``s3://``). When the tracking
server was down for longer than a trial could wait, this reads them back and sends each
trial's missing epochs into its child run (found by its trial key, created if it
never reached the server), settles every run's status, and writes the sweep's
summary and report to the parent run. Epochs the server already holds are skipped,
so a sync can be repeated safely. No Ray instance is started.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.result import AUTO_RESULT_KEYS

from bopsweep.config import TrainConfig
from bopsweep.errors import UserError
from bopsweep.sweep import mlflow_client, mlflow_runs
from bopsweep.sweep.contract import (
    MEMBER_ERROR_KEY,
    MEMBER_STATUS_KEY,
    TIMING_PREFIX,
    USER_ERROR_KEY,
    TrialGroup,
    member_results,
)
from bopsweep.sweep.outcome import FLIP_METRIC, SweepOutcome, TrialOutcome
from bopsweep.sweep.spec import SweepSpec, Trial
from bopsweep.sweep.state import STATE_FILE, SweepFolder
from bopsweep.sweep.tracking import TrialTracker, summary_modes

# What Ray adds to every reported result; the rest are bopsweep's own metrics.
RAY_RESULT_KEYS = {
    *AUTO_RESULT_KEYS,
    "done",
    "trial_id",
    "should_checkpoint",
    "experiment_tag",
    "iterations_since_restore",
    USER_ERROR_KEY,
}


@dataclass
class SyncReport:
    outcome: SweepOutcome
    epochs_sent: int


def _results(folder: SweepFolder, trial_dir: str) -> list[dict]:
    text = folder.read_text(f"{trial_dir}/result.json") or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _trial_results(folder: SweepFolder):
    """``(trial config, epoch rows, error text, own status)`` of every trial: a Ray
    trial's, or each member's of a fused group (its part of the group's rows)."""
    for trial_dir in folder.trial_dirs():
        rows = _results(folder, trial_dir)
        if not rows:
            continue
        config = rows[-1]["config"]["trial"]
        error = folder.read_text(f"{trial_dir}/error.txt")
        error = error[-2000:] if error is not None else None
        for member in TrialGroup.from_config(config).members:
            # A member that stopped repeats its last epoch in the group's later rows.
            by_epoch = {
                part["epoch"]: part
                for r in rows
                for part in [member_results(config, r).get(member.index) or {}]
                if "epoch" in part
            }
            parts = [by_epoch[e] for e in sorted(by_epoch)]
            last = parts[-1] if parts else {}
            yield member, parts, error or last.get(MEMBER_ERROR_KEY), last.get(MEMBER_STATUS_KEY)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _epoch_metrics(row: dict) -> dict[str, Any]:
    """An epoch's metrics in a result row: numbers, and per-step series (lists of
    ``[step, value]`` pairs, as the trainer reports them)."""
    return {
        k: v
        for k, v in row.items()
        if k not in RAY_RESULT_KEYS
        and not k.startswith(TIMING_PREFIX)
        and (
            _is_number(v)
            or (isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 for p in v))
        )
    }


def _send_rows(outcome: SweepOutcome, trial_cfg, rows: list[dict]):
    """Send the epochs of ``rows`` that the trial's run lacks; returns the trial, its
    hparams and how many epochs were sent."""
    uri = outcome.tracking_uri
    train = TrainConfig.model_validate(dict(trial_cfg.train))
    trial = Trial(trial_cfg.index, dict(trial_cfg.swept), train)
    hparams = train.resolved_hparams()
    tracker = TrialTracker(
        uri,
        outcome.experiment_id,
        outcome.parent_run_id,
        trial.index,
        trial.name,
        tags={f"swept.{k}": str(v) for k, v in trial.swept.items()},
        params=mlflow_client.flatten({**train.model_dump(), "hparams": hparams.model_dump()}),
        summary=summary_modes(outcome.metric, outcome.mode),
        fill=True,
    )
    sent = 0
    for row in sorted(rows, key=lambda r: r["epoch"]):
        if row["epoch"] <= tracker.last_step:
            continue
        tracker.log_epoch(_epoch_metrics(row), step=int(row["epoch"]))
        sent += 1
    drained = tracker.flush(timeout_s=60)
    tracker.close()
    if not drained:
        raise UserError(f"the tracking server at {uri} stopped answering during the sync")
    return trial, hparams, sent


def histories_from_results(folder: SweepFolder, outcome: SweepOutcome) -> None:
    """Each trial's history of the sweep's metric and of the flip ratio, from the
    sweep's local results: what a run ending without its tracking server shows."""
    by_index = {t.index: t for t in outcome.trials}
    for trial_cfg, rows, _, _ in _trial_results(folder):
        trial = by_index.get(trial_cfg.index)
        if trial is None or not rows:
            continue
        trial.history = {}
        for row in rows:
            for name in (outcome.metric, FLIP_METRIC):
                value = row.get(name)
                if _is_number(value):
                    trial.record(name, int(row["epoch"]), float(value))


def upload_missing(folder: SweepFolder, outcome: SweepOutcome, indices: set[int]) -> int:
    """Send what the trials ``indices`` reported to Ray but their runs lack (epochs
    that earlier attempts could not send), from the sweep's local results; returns
    how many epochs were sent. The end of ``bopsweep run`` calls it whenever the
    server answers, so that running the command again always ends complete."""
    sent = 0
    for trial_cfg, rows, _, _ in _trial_results(folder):
        if rows and trial_cfg.index in indices:
            sent += _send_rows(outcome, trial_cfg, rows)[2]
    return sent


def sync_sweep(name: str, storage: str, tracking_uri: str | None = None) -> SyncReport:
    folder = SweepFolder(storage, name)
    state = folder.read_state()
    if state is None:
        raise UserError(
            f"no sweep {name!r} under {storage}: expected {folder.path}/{STATE_FILE} "
            "(pass --storage where the sweep's results are)"
        )
    uri = tracking_uri or state["tracking_uri"]
    mlflow_client.check_connection(uri)
    spec = SweepSpec.model_validate(state["spec"])
    outcome = SweepOutcome(
        spec.name,
        spec.metric.name,
        spec.metric.mode,
        uri,
        state["experiment_id"],
        state["parent_run_id"],
        storage,
    )
    wanted: dict[int, str] = {}
    errors: dict[int, str] = {}
    sent = 0
    for trial_cfg, rows, error, own_status in _trial_results(folder):
        if not rows:
            continue
        trial, hparams, count = _send_rows(outcome, trial_cfg, rows)
        sent += count
        outcome.trials.append(
            TrialOutcome(trial.index, dict(trial.swept), epochs_total=hparams.epochs)
        )
        if own_status:
            wanted[trial.index] = own_status  # a member that failed or stopped early
        elif max(r["epoch"] for r in rows) + 1 >= hparams.epochs:
            # Complete, whatever an earlier attempt's error.txt says (a worker that
            # died and was retried).
            wanted[trial.index] = "FINISHED"
        elif error:
            wanted[trial.index] = "FAILED"
            errors[trial.index] = error
        else:
            wanted[trial.index] = "KILLED"
    from bopsweep.sweep.report import HISTORY_METRICS, render

    outcome.interrupted = any(status == "KILLED" for status in wanted.values())
    mlflow_runs.settle_runs(outcome, wanted, errors, (outcome.metric, *HISTORY_METRICS))
    mlflow_runs.finish_parent(outcome)
    if outcome.trials:
        # A URI's report goes to the parent run only (drawn in a temporary folder).
        out_dir = folder.local / "report" if folder.local is not None else None
        with tempfile.TemporaryDirectory(prefix=f"bopsweep-report-{name}-") as scratch:
            render(outcome, out_dir or Path(scratch), log_to_parent=True)
    return SyncReport(outcome, sent)
