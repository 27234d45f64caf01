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

from bopsweep.sweep.contract import MEMBER_ERROR_KEY, MEMBER_STATUS_KEY, USER_ERROR_KEY
from bopsweep.sweep.outcome import FLIP_METRIC, SweepOutcome, TrialOutcome
from bopsweep.sweep.ray_backend import member_indices, member_results

Listener = Callable[[SweepOutcome], None]
_LISTENERS: dict[str, Listener] = {}
# Ray's trial statuses as the sweep's model shows them while it runs.
RAY_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}
# A fused member that ended on its own (diverged, stopped early) keeps its status.
ENDED = ("FINISHED", "FAILED", "KILLED")


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
    """Driver-side Ray Tune callback that keeps the sweep's model up to date. A
    fused group's Ray trial updates each of its members' rows."""

    def __init__(self, outcome: SweepOutcome) -> None:
        self.outcome = outcome
        self._by_index = {t.index: t for t in outcome.trials}

    def _rows(self, ray_trial) -> list[TrialOutcome]:
        return [self._by_index[i] for i in member_indices(ray_trial) if i in self._by_index]

    def notify(self) -> None:
        listener = _LISTENERS.get(self.outcome.parent_run_id)
        if listener is not None:
            listener(self.outcome)

    def sync(self, ray_trials) -> None:
        """Take the statuses and last results of restored trials."""
        for ray_trial in ray_trials:
            for index, part in member_results(ray_trial).items():
                trial = self._by_index.get(index)
                if trial is None:
                    continue
                status = RAY_STATUS.get(ray_trial.status, ray_trial.status)
                trial.status = part.get(MEMBER_STATUS_KEY) or status
                self._record(trial, part)
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
        for row in self._rows(trial):
            if row.status not in ENDED:
                row.status = "RUNNING"
        config = trial.config["trial"]
        if "swept" in config and len(self._rows(trial)) == 1:
            # A bayes search's values are known once it proposed the trial.
            self._rows(trial)[0].swept = dict(config["swept"])
        self.notify()

    on_trial_restore = on_trial_start

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get(USER_ERROR_KEY):
            for row in self._rows(trial):
                row.status, row.error = "FAILED", str(result[USER_ERROR_KEY])
            self.notify()
            return
        for index, part in member_results(trial, result).items():
            row = self._by_index.get(index)
            if row is None:
                continue
            row.status = part.get(MEMBER_STATUS_KEY) or "RUNNING"
            row.error = part.get(MEMBER_ERROR_KEY) or row.error
            self._record(row, part)
        self.notify()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        for row in self._rows(trial):
            if row.status not in ENDED:
                row.status = "FINISHED"
        self.notify()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        for row in self._rows(trial):
            if row.status not in ENDED:
                row.status = "FAILED"
        self.notify()
