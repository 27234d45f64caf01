"""Early stopping in a spec: Ray Tune's schedulers (``scheduler``: ASHA, HyperBand,
the median stopping rule) and W&B's ``early_terminate`` (its hyperband, read as the
ASHA rungs it describes), and the one-line summary ``plan`` prints of either."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from bopsweep.sweep.spec.parameters import StrictModel


# ---------------------------------------------------------------- early stopping
class SchedulerSpec(StrictModel):
    """Early stopping of poor trials, in epochs: ``asha`` (asynchronous successive
    halving), ``hyperband`` (synchronous HyperBand: pauses and resumes trials),
    ``median`` (median stopping rule) or ``fifo`` (none)."""

    type: Literal["asha", "hyperband", "median", "fifo"] = "asha"
    grace_period: int = Field(
        1, gt=0, description="asha, median: epochs before a trial may be stopped"
    )
    reduction_factor: float = Field(2.0, gt=1, description="asha, hyperband: eta")
    brackets: int = Field(1, gt=0, description="asha: brackets")
    max_t: int | None = Field(None, gt=0, description="asha, hyperband: at most this many epochs")
    min_samples_required: int = Field(
        3, gt=0, description="median: trials that must report before one is stopped"
    )


# W&B computes up to 100 cut points from min_iter; none beyond this many epochs matters.
MAX_CUT_POINT = 1_000_000


def wandb_cut_points(
    min_iter: int | None, max_iter: int | None, s: int | None, eta: float
) -> list[int]:
    """The epochs at which W&B's hyperband compares runs (its "bands"), computed and
    rounded as wandb/sweeps ``hyperband_stopping.py`` does: from ``max_iter``,
    ``int(max_iter / eta**k)`` for k = 1..s (those >= 1); else ``int(min_iter *
    eta**k)`` for k = 0, 1, ... ``max_iter`` wins when both are given."""
    bands: list[int] = []
    if max_iter is not None:
        band: float = max_iter
        for _ in range(s or 0):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
    elif min_iter is not None:
        band = min_iter
        for _ in range(100):
            bands.append(int(band))
            band *= eta
    return sorted({b for b in bands if b <= MAX_CUT_POINT})


class WandbHyperbandSpec(StrictModel):
    """W&B's hyperband stopping as bopsweep runs it (:mod:`bopsweep.sweep.hyperband`):
    at each cut point, the runs' metric there; a trial past a cut point whose value
    (strict: at the cut point; else its best so far) is behind the best ``1/eta`` of
    them stops."""

    type: Literal["wandb_hyperband"] = "wandb_hyperband"
    cut_points: list[int]
    eta: float
    strict: bool


class EarlyTerminateSpec(StrictModel):
    """W&B's ``early_terminate``: its hyperband stopping, with its meaning of every key
    (wandb/sweeps ``hyperband_stopping.py``): cut points at ``min_iter * eta**k``, or
    ``s`` of them below ``max_iter`` (``max_iter / eta**k``), rounded down."""

    type: Literal["hyperband"]
    min_iter: int | None = Field(None, ge=1, description="the first cut point, in epochs")
    max_iter: int | None = Field(
        None, gt=0, description="with s: the cut points are max_iter / eta^k, k = 1..s"
    )
    s: int | None = Field(None, gt=0, description="with max_iter: the number of cut points")
    eta: float = Field(3.0, gt=1, description="cut point multiplier; the best 1/eta go on")
    strict: bool = Field(
        True,
        description="compare a trial's value at the cut point (W&B's default since 2024), "
        "not its best so far",
    )

    @model_validator(mode="after")
    def _cut_points(self) -> EarlyTerminateSpec:
        if self.max_iter is not None and self.s is None:
            raise ValueError("max_iter needs s, the number of cut points below it (W&B's rule)")
        if self.max_iter is None and self.min_iter is None:
            raise ValueError("hyperband needs min_iter (or max_iter with s)")
        if not self.cut_points:
            raise ValueError(
                f"no cut point: max_iter {self.max_iter} / eta {self.eta:g} is below 1. "
                "Try increasing s, decreasing eta, or increasing min_iter (W&B's advice)"
            )
        return self

    @property
    def cut_points(self) -> list[int]:
        return wandb_cut_points(self.min_iter, self.max_iter, self.s, self.eta)

    def as_scheduler(self) -> WandbHyperbandSpec:
        return WandbHyperbandSpec(cut_points=self.cut_points, eta=self.eta, strict=self.strict)


def asha_rungs(stopping: SchedulerSpec, max_t: int) -> list[int]:
    """The epochs at which Ray Tune's ASHA (first bracket) may stop a trial: its
    milestones ``grace_period * reduction_factor**k`` below ``max_t``, each reached
    once a trial has trained that many epochs."""
    grace, factor = stopping.grace_period, stopping.reduction_factor
    if max_t < grace:
        return []
    count = int(math.log(max_t / grace) / math.log(factor) + 1)
    milestones = (grace * factor**k for k in range(count))
    return sorted({math.ceil(m) for m in milestones if m < max_t})


def stopping_summary(
    stopping: SchedulerSpec | WandbHyperbandSpec | None, epochs: int
) -> str | None:
    """How ``plan`` says when trials of at most ``epochs`` epochs may be stopped."""
    if stopping is None or stopping.type == "fifo":
        return None
    if isinstance(stopping, WandbHyperbandSpec):
        points = [p for p in stopping.cut_points if p < epochs]
        head = f"early stopping: W&B's hyperband (eta {stopping.eta:g}"
        head += ", strict)" if stopping.strict else ")"
        if not points:
            return f"{head}: no cut point below the trials' {epochs} epochs, none is stopped"
        value = "value at its last cut point" if stopping.strict else "best value so far"
        return (
            f"{head}: trials compared at epochs {', '.join(map(str, points))} (of {epochs}); "
            f"after each epoch from epoch {points[0]} on, a trial whose {value} is behind "
            f"the best 1/{stopping.eta:g} at that cut point is stopped"
        )
    if stopping.type == "asha":
        max_t = stopping.max_t or epochs
        rungs = asha_rungs(stopping, min(max_t, epochs))
        where = f"at epochs {', '.join(map(str, rungs))}" if rungs else "at no epoch (grace_period)"
        brackets = f", {stopping.brackets} brackets" if stopping.brackets > 1 else ""
        return (
            f"early stopping: asha{brackets}: a trial behind the best "
            f"1/{stopping.reduction_factor:g} may be stopped {where}"
            + (f"; trials end at max_t {max_t}" if max_t < epochs else "")
        )
    if stopping.type == "median":
        return (
            f"early stopping: median: from epoch {stopping.grace_period} on, any epoch "
            f"(once {stopping.min_samples_required} trials reported)"
        )
    return f"early stopping: {stopping.type} (Ray Tune's synchronous HyperBand: pauses trials)"
