"""Live progress of a sweep: a Ray Tune callback that keeps a :class:`SweepOutcome`.

The callback runs in the driver. Per trial it records the status, the epochs done
and the metric and flip-ratio histories as results arrive, in the same model the
sweep ends with, and hands the model to a listener (the CLI's live table). Ray
pickles the run's callbacks with the experiment state to restore an interrupted
sweep; the listener belongs to the current process, so it is kept out of the
pickle and found again by the sweep's key (its parent run id). The table the CLI
draws from the model is :func:`bopsweep.sweep.report.tables.live_table`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ray import tune

from bopsweep.sweep.outcome import FLIP_METRIC, SweepOutcome, TrialOutcome
from bopsweep.sweep.ray_backend import USER_ERROR_KEY, trial_index

Listener = Callable[[SweepOutcome], None]
_LISTENERS: dict[str, Listener] = {}
# Ray's trial statuses as the sweep's model shows them while it runs.
RAY_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}


@contextmanager
def listening(sweep_key: str, listener: Listener | None) -> Iterator[None]:
    """Route the progress of sweep ``sweep_key`` to ``listener`` meanwhile."""
    if listener is None:
        yield
        return
    _LISTENERS[sweep_key] = listener
    try:
        yield
    finally:
        _LISTENERS.pop(sweep_key, None)


class LiveProgress(tune.Callback):
    """Driver-side Ray Tune callback that keeps the sweep's model up to date."""

    def __init__(self, outcome: SweepOutcome) -> None:
        self.outcome = outcome
        self._by_index = {t.index: t for t in outcome.trials}

    def _trial(self, ray_trial) -> TrialOutcome:
        return self._by_index[trial_index(ray_trial)]

    def notify(self) -> None:
        listener = _LISTENERS.get(self.outcome.parent_run_id)
        if listener is not None:
            listener(self.outcome)

    def sync(self, ray_trials) -> None:
        """Take the statuses and last results of restored trials."""
        for ray_trial in ray_trials:
            trial = self._by_index.get(trial_index(ray_trial))
            if trial is None:
                continue
            trial.status = RAY_STATUS.get(ray_trial.status, ray_trial.status)
            self._record(trial, ray_trial.last_result or {})
        self.notify()

    def _record(self, trial: TrialOutcome, result: dict) -> None:
        if "epoch" not in result:
            return
        step = int(result["epoch"])
        for name in (self.outcome.metric, FLIP_METRIC):
            value = result.get(name)
            if value is not None:
                trial.record(name, step, float(value))

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        row = self._trial(trial)
        row.status = "RUNNING"
        # A bayes search's values are known once it proposed the trial.
        row.swept = dict(trial.config["trial"]["swept"])
        self.notify()

    on_trial_restore = on_trial_start

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self._trial(trial)
        if result.get(USER_ERROR_KEY):
            row.status, row.error = "FAILED", str(result[USER_ERROR_KEY])
        else:
            row.status = "RUNNING"
            self._record(row, result)
        self.notify()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row = self._trial(trial)
        if row.status != "FAILED":
            row.status = "FINISHED"
        self.notify()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._trial(trial).status = "FAILED"
        self.notify()
