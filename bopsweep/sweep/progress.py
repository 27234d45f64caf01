"""Live progress of a sweep: one compact table refreshed in place.

A Ray Tune callback in the driver keeps, per trial, its swept values, status,
epoch, current and best metric, and redraws a rich table; Ray's own verbose
status dumps are turned off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ray import tune
from rich.live import Live
from rich.table import Table

from bopsweep.sweep.spec import SweepSpec, Trial


@dataclass
class TrialRow:
    trial: Trial
    epochs: int
    status: str = "PENDING"
    epoch: int = 0
    current: float = math.nan
    best: float = math.nan
    flip_ratio: float = math.nan
    error: str | None = None


def _is_better(value: float, best: float, mode: str) -> bool:
    if math.isnan(best):
        return True
    return value > best if mode == "max" else value < best


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


# Ray pickles the run's callbacks with the experiment state (to restore it); the
# live display belongs to the current process, so it is looked up here instead,
# and a restored table makes itself known here too.
ACTIVE_LIVE: Live | None = None
ACTIVE_TABLE: LiveTable | None = None


class LiveTable(tune.Callback):
    """Driver-side Ray Tune callback that renders the sweep's progress."""

    def __init__(self, spec: SweepSpec, trials: list[Trial]) -> None:
        global ACTIVE_TABLE
        self.spec = spec
        self.rows = {t.index: TrialRow(t, epochs=t.train.resolved_hparams().epochs) for t in trials}
        ACTIVE_TABLE = self

    def __setstate__(self, state: dict) -> None:
        global ACTIVE_TABLE
        self.__dict__.update(state)
        ACTIVE_TABLE = self

    def sync(self, trials) -> None:
        """Take the statuses of restored trials (Ray's ``Trial`` objects)."""
        for trial in trials:
            row = self.rows.get(trial.config["trial"]["index"])
            if row is None:
                continue
            row.status = trial.status
            last = trial.last_result or {}
            if "epoch" in last:
                row.epoch = int(last["epoch"]) + 1
            value = last.get(self.spec.metric.name)
            if value is not None:
                row.current = row.best = float(value)
        self._refresh()

    def _row(self, trial) -> TrialRow:
        return self.rows[trial.config["trial"]["index"]]

    def render(self) -> Table:
        metric, mode = self.spec.metric.name, self.spec.metric.mode
        done = sum(r.status in ("TERMINATED", "ERROR") for r in self.rows.values())
        table = Table(
            title=f"{self.spec.name}: {done}/{len(self.rows)} trials done", title_justify="left"
        )
        swept_keys = list(next(iter(self.rows.values())).trial.swept) if self.rows else []
        columns = ["trial", *(k.removeprefix("hparams.") for k in swept_keys), "status", "epoch"]
        for column in [*columns, metric, f"best ({mode})", "flip_ratio"]:
            table.add_column(column, justify="left" if column == "status" else "right")
        for index, row in sorted(self.rows.items()):
            style = {"RUNNING": "cyan", "TERMINATED": "green", "ERROR": "red"}.get(row.status, "")
            table.add_row(
                f"{index:03d}",
                *(_value(row.trial.swept[k]) for k in swept_keys),
                f"[{style}]{row.status}[/]" if style else row.status,
                f"{row.epoch}/{row.epochs}",
                _fmt(row.current),
                _fmt(row.best),
                "-" if math.isnan(row.flip_ratio) else f"{row.flip_ratio:.2e}",
            )
        return table

    def _refresh(self) -> None:
        if ACTIVE_LIVE is not None:
            ACTIVE_LIVE.update(self.render())

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._row(trial).status = "RUNNING"
        self._refresh()

    def on_trial_restore(self, iteration, trials, trial, **info) -> None:
        self._row(trial).status = "RUNNING"
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self._row(trial)
        row.status = "RUNNING"
        row.epoch = int(result.get("epoch", row.epoch - 1)) + 1
        value = result.get(self.spec.metric.name)
        if value is not None:
            row.current = float(value)
            if _is_better(row.current, row.best, self.spec.metric.mode):
                row.best = row.current
        row.flip_ratio = float(result.get("flip_ratio", math.nan))
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._row(trial).status = "TERMINATED"
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        row = self._row(trial)
        row.status = "ERROR"
        row.error = str(getattr(trial, "error_file", "") or "")
        self._refresh()
