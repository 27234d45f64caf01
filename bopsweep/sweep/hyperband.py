"""W&B's hyperband early stopping as a Ray Tune scheduler.

W&B's ``early_terminate: {type: hyperband}`` is neither Ray Tune's HyperBand nor its
ASHA. W&B's sweep engine (wandb/sweeps ``hyperband_stopping.py``) keeps each run's
metric history and, whenever it looks, stops every running run that has passed a
cut point (a "band") and is behind the best ``1/eta`` of the values all runs had at
that cut point: strict (W&B's default) compares the run's value at its last cut
point, otherwise its best value so far. The cut points come from the spec
(:func:`bopsweep.sweep.spec.wandb_cut_points`, rounded as W&B rounds them).

This scheduler applies the same rule each time a trial reports an epoch, so a spec
written for W&B stops the trials W&B would. A trial's position is Ray Tune's
``training_iteration`` (one report per epoch), so a trial restored from a checkpoint
keeps its place. Imported only by the driver of a sweep that uses it.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class WandbHyperBand(FIFOScheduler):
    """Stops a trial as W&B's hyperband stopping would (see the module docstring).

    Args:
        cut_points: the epochs at which trials are compared (W&B's bands).
        eta: the best ``1/eta`` of the values at a cut point go on.
        strict: compare a trial's value at its last cut point (W&B's default), not
            its best value so far.
        metric, mode: the metric and its direction; by default the Tuner's.
    """

    def __init__(
        self,
        cut_points: list[int],
        eta: float,
        strict: bool = True,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__()
        self._cut_points = sorted(set(cut_points))
        self._eta = eta
        self._strict = strict
        self._metric = metric
        self._mode = mode
        # trial id -> {epochs done: metric}, signed so that lower is better (W&B's
        # histories of a maximized metric are negated).
        self._histories: dict[str, dict[int, float]] = {}
        self._num_stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        if not self._metric or self._mode not in ("min", "max"):
            raise ValueError(
                f"WandbHyperBand needs a metric and a mode (min or max), got "
                f"{self._metric!r} and {self._mode!r}"
            )

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        value = result.get(self._metric)
        position = result.get("training_iteration")
        if not _finite(value) or not isinstance(position, int):
            return TrialScheduler.CONTINUE
        history = self._histories.setdefault(trial.trial_id, {})
        history[position] = -value if self._mode == "max" else value
        if self.stops(trial.trial_id):
            self._num_stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def threshold(self, cut_point: int) -> float:
        """The value at ``cut_point`` a trial must not be behind (lower is better):
        the ``int(n / eta)``-th best of the ``n`` trials' values there."""
        values = sorted(h[cut_point] for h in self._histories.values() if cut_point in h)
        if not values:
            return math.inf
        return values[int((1.0 / self._eta) * len(values))]

    def stops(self, trial_id: str) -> bool:
        """Whether the trial is behind at the last cut point it has passed."""
        history = self._histories.get(trial_id, {})
        if not history:
            return False
        done = max(history)
        passed = [c for c in self._cut_points if c <= done]
        if not passed:
            return False
        cut_point = passed[-1]
        if self._strict:
            if cut_point not in history:  # not seen since a restart: nothing to compare
                return False
            value = history[cut_point]
        else:
            value = min(history.values())
        return value > self.threshold(cut_point)

    def debug_string(self) -> str:
        cuts = ", ".join(f"{c}: {self.threshold(c):.4g}" for c in self._cut_points[:8])
        return f"WandbHyperBand: num_stopped={self._num_stopped}; thresholds {cuts}"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
