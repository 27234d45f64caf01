"""Schedules for Bop's gamma and threshold and for the full-precision learning rate.

The paper's settings use three shapes, all evaluated at the optimizer's step count
(the number of steps already taken, as Keras' ``optimizer.iterations``):

* ``constant``;
* ``exponential``: staircase decay, ``start * factor ** (step // steps)``
  (section 5.2: gamma x0.1 every 100 epochs);
* ``linear``: ``start -> end`` over ``steps`` steps, then ``end`` (section 5.3:
  Keras' ``PolynomialDecay`` with power 1).

A schedule is a small frozen value that serialises to a plain dict, so it travels in
``state_dict()`` and in checkpoints loaded with ``weights_only=True``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

ScheduleKind = Literal["constant", "exponential", "linear"]
SCHEDULE_KINDS: tuple[str, ...] = ("constant", "exponential", "linear")


@dataclass(frozen=True)
class Schedule:
    """A value that depends on the optimizer step.

    Args:
        kind: ``constant``, ``exponential`` (staircase) or ``linear``.
        start: the value at step 0.
        end: the final value of a linear schedule.
        steps: decay period (``exponential``: multiply by ``factor`` every ``steps``
            steps) or length (``linear``: reach ``end`` after ``steps`` steps).
        factor: the decay factor of an exponential schedule.
    """

    kind: ScheduleKind = "constant"
    start: float = 0.0
    end: float | None = None
    steps: int | None = None
    factor: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(
                f"unknown schedule kind {self.kind!r}; valid kinds: {', '.join(SCHEDULE_KINDS)}"
            )
        if not math.isfinite(self.start):
            raise ValueError(f"schedule start must be finite, got {self.start}")
        if self.kind == "exponential":
            if self.factor is None or self.steps is None:
                raise ValueError("an exponential schedule needs 'factor' and 'steps'")
            if self.steps < 1 or self.factor <= 0:
                raise ValueError("an exponential schedule needs steps >= 1 and factor > 0")
        if self.kind == "linear":
            if self.end is None or self.steps is None:
                raise ValueError("a linear schedule needs 'end' and 'steps'")
            if self.steps < 1:
                raise ValueError("a linear schedule needs steps >= 1")

    def __call__(self, step: int) -> float:
        if self.kind == "exponential":
            return self.start * self.factor ** (step // self.steps)
        if self.kind == "linear":
            progress = min(step, self.steps) / self.steps
            return self.start + (self.end - self.start) * progress
        return self.start

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> Schedule:
        return cls(**data)


def as_schedule(value: float | Schedule | dict) -> Schedule:
    """Accept a plain number (a constant), a Schedule or its dict form."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, dict):
        return Schedule.from_dict(value)
    return Schedule("constant", float(value))
