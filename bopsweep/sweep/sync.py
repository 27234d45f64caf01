"""``bopsweep sync NAME``: upload to MLflow what a sweep's tracking server missed.

Every trial's per-epoch metrics are also in its local results (Ray's
``result.json`` under ``<storage>/<name>/trial_NNN``). When the tracking server was
down for longer than a trial could wait, this reads them back and sends each
trial's missing epochs into its child run (found by its trial key, created if it
never reached the server), settles every run's status, and writes the sweep's
summary to the parent run. Epochs the server already holds are skipped, so a sync
can be repeated safely.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ray.tune.result import AUTO_RESULT_KEYS

from bopsweep.config import TrainConfig
from bopsweep.errors import UserError
from bopsweep.sweep import tracking
from bopsweep.sweep.spec import SweepSpec, Trial
from bopsweep.sweep.tuner import (
    STATE_FILE,
    SweepOutcome,
    finish_parent,
    read_state,
    settle_trials,
    write_sweep_report,
)

# What Ray adds to every reported result; the rest are bopsweep's own metrics.
RAY_RESULT_KEYS = {
    *AUTO_RESULT_KEYS,
    "done",
    "trial_id",
    "should_checkpoint",
    "experiment_tag",
    "iterations_since_restore",
}


@dataclass
class SyncReport:
    outcome: SweepOutcome
    epochs_sent: int


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            rows.append(json.loads(line))
    return rows


def sync_sweep(name: str, storage: str, tracking_uri: str | None = None) -> SyncReport:
    folder = Path(storage) / name
    state = read_state(storage, name)
    if state is None:
        raise UserError(
            f"no sweep {name!r} under {storage}: expected {folder / STATE_FILE} "
            "(pass --storage where the sweep's results are)"
        )
    uri = tracking_uri or state["tracking_uri"]
    tracking.check_connection(uri)
    spec = SweepSpec.model_validate(state["spec"])
    exp_id, parent_id = state["experiment_id"], state["parent_run_id"]
    trials: list[Trial] = []
    statuses: dict[int, str] = {}
    errors: dict[int, str] = {}
    sent = 0
    for trial_dir in sorted(folder.glob("trial_*")):
        rows = _results(trial_dir)
        if not rows:
            continue
        trial_cfg = rows[-1]["config"]["trial"]
        train = TrainConfig.model_validate(trial_cfg["train"])
        trial = Trial(trial_cfg["index"], trial_cfg["swept"], train)
        trials.append(trial)
        hparams = train.resolved_hparams()
        tracker = tracking.TrialTracker(
            uri,
            exp_id,
            parent_id,
            trial.index,
            trial.name,
            tags={f"swept.{k}": str(v) for k, v in trial.swept.items()},
            params=tracking.flatten({**train.model_dump(), "hparams": hparams.model_dump()}),
        )
        for row in sorted(rows, key=lambda r: r["epoch"]):
            if row["epoch"] <= tracker.last_step:
                continue
            metrics = {
                k: v
                for k, v in row.items()
                if k not in RAY_RESULT_KEYS
                and isinstance(v, int | float)
                and not isinstance(v, bool)
            }
            tracker.log_epoch(metrics, step=int(row["epoch"]))
            sent += 1
        drained = tracker.flush(timeout_s=60)
        tracker.close()
        if not drained:
            raise UserError(f"the tracking server at {uri} stopped answering during the sync")
        error_file = trial_dir / "error.txt"
        if error_file.is_file():
            statuses[trial.index] = "ERROR"
            errors[trial.index] = error_file.read_text()[-2000:]
        elif max(r["epoch"] for r in rows) + 1 >= hparams.epochs:
            statuses[trial.index] = "TERMINATED"
        else:
            statuses[trial.index] = "UNFINISHED"
    outcome = SweepOutcome(spec, uri, exp_id, parent_id, storage)
    outcome.outcomes = settle_trials(outcome, trials, statuses, errors)
    outcome.interrupted = any(s == "UNFINISHED" for s in statuses.values())
    finish_parent(outcome)
    write_sweep_report(outcome)
    return SyncReport(outcome, sent)
