"""Bop and its second-order variants, as torch optimizers.

Bop (Helwegen et al., "Latent Weights Do Not Exist: Rethinking Binarized Neural
Network Optimization", NeurIPS 2019) trains binary weights without latent weights:
it keeps an exponential moving average ``m`` of the gradient and flips a weight when
``m`` agrees with it strongly enough::

    m <- m + gamma * (g - m)
    w <- -w   if w * m > threshold   else   w

The new weight is computed as Larq does, ``sign(-tf.sign(w*m - threshold) * w)``
with ``sign(0) = +1``, so every weight is exactly +-1 after a step, a weight not yet
+-1 becomes its sign, and the exact tie ``w*m == threshold`` gives +1.

The layout follows ``torch/optim/adam.py``: the optimizer class validates and
gathers tensors, a functional entry (:func:`bop`, in :mod:`bopsweep.bnn.bop_kernels`
and importable from here) dispatches to a ``_single_tensor_bop`` reference or the
``_multi_tensor_bop`` foreach kernel, which have the same signature and agree bit
for bit.

Only binary kernels go through Bop; :class:`~bopsweep.bnn.case.CaseOptimizer` routes
a model's parameters between Bop and a full-precision optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from bopsweep.bnn.bop_kernels import bop, bop2, bop2_unbiased
from bopsweep.bnn.schedules import Schedule, as_schedule

__all__ = [
    "Bop",
    "Bop2ndOrder",
    "Bop2ndOrderUnbiased",
    "bop",
    "bop2",
    "bop2_unbiased",
]


# ------------------------------------------------------------------------ optimizers
def _check_rate(name: str, schedule: Schedule) -> None:
    values = [schedule.start] + ([schedule.end] if schedule.end is not None else [])
    for value in values:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"Invalid {name}: {value} (must be in (0, 1])")


def _check_threshold(schedule: Schedule) -> None:
    values = [schedule.start] + ([schedule.end] if schedule.end is not None else [])
    for value in values:
        if value < 0.0:
            raise ValueError(f"Invalid threshold: {value} (must be >= 0)")


class Bop(Optimizer):
    """Binary optimizer (Helwegen et al., NeurIPS 2019, arXiv 1906.02107).

    Args:
        params: the binary weights (kernels marked binary by their layers).
        threshold: flip when ``w * m > threshold``; a float or a :class:`Schedule`.
        gamma: adaptivity rate of the gradient moving average ``m``, in (0, 1];
            a float or a :class:`Schedule`.
        foreach: use the multi-tensor kernel; ``None`` means yes on every device.
        count_flips: accumulate, on the device, how many weights flipped (read with
            :meth:`read_flips`); costs one reduction per tensor per step.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        threshold: float | Schedule = 1e-8,
        gamma: float | Schedule = 1e-4,
        *,
        foreach: bool | None = None,
        count_flips: bool = True,
    ) -> None:
        defaults = dict(
            threshold=as_schedule(threshold).to_dict(),
            gamma=as_schedule(gamma).to_dict(),
            foreach=foreach,
            count_flips=count_flips,
        )
        self._validate_schedules(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._validate_schedules(group)
            group.setdefault("step", 0)

    # Subclasses add their own rates here.
    def _validate_schedules(self, group: dict) -> None:
        _check_threshold(as_schedule(group["threshold"]))
        _check_rate("gamma", as_schedule(group["gamma"]))

    def _init_state(self, p: Tensor, state: dict) -> None:
        state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def current(self, name: str, group_index: int = 0) -> float:
        """The value of ``name`` (``gamma``, ``threshold``...) at the next step."""
        group = self.param_groups[group_index]
        return as_schedule(group[name])(group["step"])

    def _gather(self, group: dict) -> tuple[list[Tensor], list[Tensor], list[dict]]:
        params, grads, states = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Bop does not support sparse gradients")
            state = self.state[p]
            if not state:
                self._init_state(p, state)
                state["flips"] = torch.zeros((), dtype=torch.float64, device=p.device)
                state["flip_steps"] = 0
            params.append(p)
            grads.append(p.grad)
            states.append(state)
        return params, grads, states

    def _update(self, group, params, grads, states, flips, threshold, gamma, foreach) -> None:
        bop(
            params,
            grads,
            [s["m"] for s in states],
            flips,
            threshold=threshold,
            gamma=gamma,
            foreach=foreach,
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states = self._gather(group)
            threshold = as_schedule(group["threshold"])(group["step"])
            gamma = as_schedule(group["gamma"])(group["step"])
            foreach = True if group["foreach"] is None else group["foreach"]
            flips = None
            if group["count_flips"]:
                flips = [s["flips"] for s in states]
                for s in states:
                    s["flip_steps"] += 1
            if params:
                self._update(group, params, grads, states, flips, threshold, gamma, foreach)
            group["step"] += 1
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # torch casts floating state to the parameter's dtype; flip totals stay exact
        # counts only in float64.
        for state in self.state.values():
            if "flips" in state:
                state["flips"] = state["flips"].to(torch.float64)

    def read_flips(self, reset: bool = True) -> list[tuple[Tensor, Tensor, int]]:
        """``(param, flipped_total, steps)`` for every parameter stepped since the last
        reset; ``flipped_total`` stays on the device until the caller reads it."""
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state or not state.get("flip_steps"):
                    continue
                out.append((p, state["flips"].clone(), state["flip_steps"]))
                if reset:
                    state["flips"].zero_()
                    state["flip_steps"] = 0
        return out


class Bop2ndOrder(Bop):
    """Bop with a second raw moment ("Bop and Beyond", Suarez-Ramirez et al. 2021).

    ``v <- v + sigma * (g**2 - v)`` and a weight flips when
    ``w * m / (sqrt(v) + 1e-10) > threshold``. Arguments as for :class:`Bop`, plus

    Args:
        sigma: adaptivity rate of the second moment ``v``, in (0, 1].
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        threshold: float | Schedule = 1e-8,
        gamma: float | Schedule = 1e-4,
        sigma: float | Schedule = 1e-2,
        *,
        foreach: bool | None = None,
        count_flips: bool = True,
    ) -> None:
        self._sigma_default = as_schedule(sigma).to_dict()
        super().__init__(params, threshold, gamma, foreach=foreach, count_flips=count_flips)

    def _validate_schedules(self, group: dict) -> None:
        group.setdefault("sigma", self._sigma_default)
        super()._validate_schedules(group)
        _check_rate("sigma", as_schedule(group["sigma"]))

    def _init_state(self, p: Tensor, state: dict) -> None:
        super()._init_state(p, state)
        state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, group, params, grads, states, flips, threshold, gamma, foreach) -> None:
        bop2(
            params,
            grads,
            [s["m"] for s in states],
            [s["v"] for s in states],
            flips,
            threshold=threshold,
            gamma=gamma,
            sigma=as_schedule(group["sigma"])(group["step"]),
            foreach=foreach,
        )


class Bop2ndOrderUnbiased(Bop2ndOrder):
    """Bop2ndOrder as "Bop and Beyond"'s code names it unbiased (``Bop2ndOrder_unbiased``).

    The moving averages are the same as :class:`Bop2ndOrder`'s; the flip test
    divides each by its own rate, taken at this step (after its schedule)::

        w <- -w  if  w * (m / gamma) / (sqrt(v / sigma) + 1e-10) > threshold  else  w

    This is not Adam's bias correction, which divides by ``1 - (1 - rate)^t``: the
    two agree only on the first step, where ``m / gamma = g`` and ``v / sigma = g**2``.
    Later ``m / gamma`` keeps growing (about ``t * g`` while ``t << 1 / gamma``).
    At constant rates the test is :class:`Bop2ndOrder`'s with its threshold
    multiplied by ``gamma / sqrt(sigma)``, apart from where the 1e-10 is added.
    Arguments as for :class:`Bop2ndOrder`.
    """

    def _update(self, group, params, grads, states, flips, threshold, gamma, foreach) -> None:
        bop2_unbiased(
            params,
            grads,
            [s["m"] for s in states],
            [s["v"] for s in states],
            flips,
            threshold=threshold,
            gamma=gamma,
            sigma=as_schedule(group["sigma"])(group["step"]),
            foreach=foreach,
        )
