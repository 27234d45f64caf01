"""The one model of what a sweep produced: its trials, their ranking and summary figures.

A sweep's result is needed in five places: the runner settles it when Ray Tune is
done, ``bopsweep report`` reads it back from MLflow, ``bopsweep sync`` rebuilds it from
local results, the CLI prints it, and the live table shows it as it grows. They all
use these two classes, so "best", "final", "mean flip ratio" and the ranking mean
the same thing everywhere. Nothing here talks to Ray or MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# MLflow's terminal run statuses, which every trial ends in.
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
FLIP_METRIC = "flip_ratio"


def format_value(value: Any) -> str:
    """Swept values as every table shows them (``1e-06``, ``0.001``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class TrialOutcome:
    """One trial: its swept values, status and per-epoch metric histories.

    ``history`` maps a metric name to ``(step, value)`` pairs in step order (one
    value per step); the summary figures below are computed from it.
    ``status`` is MLflow's (``FINISHED``, ``FAILED``, ``KILLED``) once the trial has
    ended, ``PENDING`` or ``RUNNING`` while the sweep runs.
    """

    index: int
    swept: dict[str, Any]
    status: str = "PENDING"
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    run_id: str | None = None
    run_name: str | None = None
    epochs_total: int | None = None
    error: str | None = None
    log_file: str | None = None

    @property
    def name(self) -> str:
        values = " ".join(
            f"{k.removeprefix('hparams.')}={format_value(v)}" for k, v in self.swept.items()
        )
        return self.run_name or (f"trial_{self.index:03d}" + (f" {values}" if values else ""))

    def values(self, metric: str) -> list[float]:
        return [value for _, value in self.history.get(metric, [])]

    def record(self, metric: str, step: int, value: float) -> None:
        """Add (or replace) one step of a metric's history, keeping step order."""
        series = self.history.setdefault(metric, [])
        if series and series[-1][0] < step:
            series.append((step, value))
            return
        kept = {s: v for s, v in series}
        kept[step] = value
        self.history[metric] = sorted(kept.items())

    def final(self, metric: str) -> float:
        values = self.values(metric)
        return values[-1] if values else math.nan

    def best(self, metric: str, mode: str) -> float:
        values = [v for v in self.values(metric) if not math.isnan(v)]
        if not values:
            return math.nan
        return max(values) if mode == "max" else min(values)

    @property
    def mean_flip_ratio(self) -> float:
        values = self.values(FLIP_METRIC)
        return sum(values) / len(values) if values else math.nan

    def epochs(self, metric: str) -> int:
        """Epochs with a value of ``metric``."""
        return len(self.values(metric))


@dataclass
class SweepOutcome:
    """A sweep's trials, where they are tracked, and how the sweep ended."""

    name: str
    metric: str
    mode: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    storage: str | None = None
    trials: list[TrialOutcome] = field(default_factory=list)
    interrupted: bool = False
    tracking_error: str | None = None
    # A user error inside a trial (missing data, a bad value) that stopped the sweep.
    stopped: str | None = None
    # Why the sweep ended before its last trial, as planned: the metric's target
    # reached, or the time budget spent.
    ended_early: str | None = None
    # Where the sweep's time went, phase -> seconds (see ``bopsweep.sweep.runner``).
    timings: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ ranking
    def _order(self, trial: TrialOutcome) -> tuple:
        sign = -1 if self.mode == "max" else 1

        def key(value: float) -> tuple:
            return (math.isnan(value), 0 if math.isnan(value) else sign * value)

        final = trial.final(self.metric)
        return (*key(trial.best(self.metric, self.mode)), *key(final), trial.index)

    def ranked(self) -> list[TrialOutcome]:
        """Trials by their best value of the metric (NaN last); ties (common with a
        small validation set: accuracies are multiples of one over its size) by their
        final value, then by index."""
        return sorted(self.trials, key=self._order)

    @property
    def best(self) -> TrialOutcome | None:
        """The best trial with a value of the metric, if any."""
        return next(
            (t for t in self.ranked() if not math.isnan(t.best(self.metric, self.mode))), None
        )

    @property
    def failed(self) -> list[TrialOutcome]:
        return [t for t in self.trials if t.status != "FINISHED"]

    def counts(self) -> dict[str, int]:
        return {s: sum(t.status == s for t in self.trials) for s in TERMINAL_STATUSES}

    def summary_metrics(self) -> dict[str, float]:
        """The best trial's figures, as the parent run's metrics."""
        best = self.best
        if best is None:
            return {}
        return {
            f"best_{self.metric}": best.best(self.metric, self.mode),
            f"best_final_{self.metric}": best.final(self.metric),
            "best_mean_flip_ratio": best.mean_flip_ratio,
        }

    def swept_keys(self) -> list[str]:
        keys: dict[str, None] = {}
        for trial in sorted(self.trials, key=lambda t: t.index):
            keys.update(dict.fromkeys(trial.swept))
        return list(keys)

    # -------------------------------------------------------------------- links
    @property
    def is_server(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    def run_link(self, run_id: str | None) -> str:
        """A run's page in the MLflow UI, or its id for a local store."""
        if run_id and self.is_server:
            base = self.tracking_uri.rstrip("/")
            return f"{base}/#/experiments/{self.experiment_id}/runs/{run_id}"
        return run_id or ""

    @property
    def parent_link(self) -> str:
        return self.run_link(self.parent_run_id)

    def experiment_url(self) -> str | None:
        """The experiment's runs table. Newer MLflow 3 UIs pick the view from their
        GenAI / model-training switch (``workflowType``, GenAI unless chosen), older
        ones from the experiment's ``mlflow.experimentKind`` tag: the link sets the
        first, bopsweep's experiments carry the second."""
        if self.is_server:
            base = self.tracking_uri.rstrip("/")
            return f"{base}/#/experiments/{self.experiment_id}?workflowType=machine_learning"
        return None
