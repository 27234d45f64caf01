"""The routing of a model's parameters: binary kernels to Bop (or to a latent-weight
optimizer), every other parameter to a full-precision one (Adam in the paper).

:class:`CaseOptimizer` is the one optimizer object a training loop steps for one
model, as Larq's ``CaseOptimizer``; it asks the layers which kernels are binary, never
the parameter names. :class:`SignFlipCounter` counts flips for binary optimizers that
do not count their own; :func:`flip_total` reads either count. The fused members'
counterpart is :class:`bopsweep.bnn.fused.optim.FusedCaseOptimizer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from bopsweep.bnn.optim import Bop
from bopsweep.bnn.schedules import Schedule

__all__ = ["CaseOptimizer", "SignFlipCounter", "flip_total"]


class SignFlipCounter:
    """Sign changes of binary kernels over optimizer steps, for binary optimizers that
    do not count their own (Adam on latent weights; Bop does). ``count`` turns a
    kernel's boolean "sign changed" tensor into its total: a scalar for one model, one
    per member for a fused one. Totals are float64, like Bop's own."""

    def __init__(
        self,
        params: Sequence[Tensor],
        count: Callable[[Tensor], Tensor],
        shape: tuple[int, ...] = (),
    ) -> None:
        self.params = list(params)
        self.count = count
        self.totals = {
            p: torch.zeros(shape, dtype=torch.float64, device=p.device) for p in self.params
        }
        self.steps = 0

    def signs(self) -> list[Tensor]:
        """Taken before a step."""
        return [p >= 0 for p in self.params]

    def add(self, before: Sequence[Tensor]) -> None:
        """After the step: count the kernels' sign changes since ``before``."""
        for p, was_positive in zip(self.params, before, strict=True):
            self.totals[p].add_(self.count((p >= 0) != was_positive))
        self.steps += 1

    def read(self, reset: bool = True) -> list[tuple[Tensor, Tensor, int]]:
        """``(param, flipped_total, steps)`` per kernel since the last reset."""
        if not self.steps:
            return []
        out = [(p, self.totals[p].clone(), self.steps) for p in self.params]
        if reset:
            for total in self.totals.values():
                total.zero_()
            self.steps = 0
        return out


def flip_total(binary: Optimizer, counter: SignFlipCounter | None, param: Tensor):
    """The running flip count of ``param``: the sign-change counter's where a case
    optimizer keeps one (latent weights), else the binary optimizer's own (a Bop,
    plain or fused, that counts flips); see ``flip_total`` of the case optimizers."""
    if counter is not None:
        return counter.totals.get(param)
    if not binary.param_groups[0].get("count_flips"):
        return None
    state = binary.state.get(param)
    return state.get("flips") if state else None


class CaseOptimizer:
    """One optimizer object over a whole model: binary kernels to ``binary``, the rest
    to ``fp`` (Larq's ``CaseOptimizer``).

    Every trainable parameter of the model must be claimed by exactly one of the two
    optimizers; a parameter claimed by none or by both is an error, so nothing is
    silently left untrained.

    Args:
        model: the model whose parameters are checked.
        binary: the optimizer of the binary kernels (Bop, or Adam on latent weights).
        fp: the optimizer of every other parameter (``None`` if there are none).
        clip_binary: clip binary kernels to [-1, 1] after each step (latent weights).
        lr_schedule: schedule of the learning rate of every optimizer that has one:
            the fp optimizer, and the binary one on latent weights (None: constant).
        count_flips: for a non-Bop binary optimizer, count sign changes of the kernels.
    """

    def __init__(
        self,
        model: nn.Module,
        binary: Optimizer,
        fp: Optimizer | None,
        *,
        clip_binary: bool = False,
        lr_schedule: Schedule | None = None,
        count_flips: bool = True,
    ) -> None:
        self.binary = binary
        self.fp = fp
        self.clip_binary = clip_binary
        self.lr_schedule = lr_schedule
        self.step_count = 0
        self._check_claims(model)
        self._binary_params = [p for g in binary.param_groups for p in g["params"]]
        self._flips = (
            SignFlipCounter(self._binary_params, torch.sum)
            if count_flips and not isinstance(binary, Bop)
            else None
        )

    def _check_claims(self, model: nn.Module) -> None:
        owners: dict[int, list[str]] = {}
        for label, opt in (("binary", self.binary), ("fp", self.fp)):
            if opt is None:
                continue
            for group in opt.param_groups:
                for p in group["params"]:
                    owners.setdefault(id(p), []).append(label)
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            claims = owners.get(id(p), [])
            if len(claims) == 0:
                raise ValueError(f"parameter {name!r} is claimed by no optimizer")
            if len(claims) > 1:
                raise ValueError(f"parameter {name!r} is claimed by both optimizers")

    @property
    def optimizers(self) -> Sequence[Optimizer]:
        return [o for o in (self.binary, self.fp) if o is not None]

    def _lr_optimizers(self) -> list[Optimizer]:
        # Bop has no learning rate; Adam on latent weights follows the schedule too.
        return [o for o in self.optimizers if not isinstance(o, Bop)]

    def current_lr(self) -> float | None:
        lr_optimizers = self._lr_optimizers()
        if not lr_optimizers:
            return None
        if self.lr_schedule is not None:
            return self.lr_schedule(self.step_count)
        return lr_optimizers[-1].param_groups[0]["lr"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        if self.lr_schedule is not None:
            lr = self.lr_schedule(self.step_count)
            for opt in self._lr_optimizers():
                for group in opt.param_groups:
                    group["lr"] = lr
        before = self._flips.signs() if self._flips is not None else None
        for opt in self.optimizers:
            opt.step()
        if self.clip_binary:
            torch._foreach_clamp_min_(self._binary_params, -1.0)
            torch._foreach_clamp_max_(self._binary_params, 1.0)
        if before is not None:
            self._flips.add(before)
        self.step_count += 1

    def read_flips(self, reset: bool = True) -> list[tuple[Tensor, Tensor, int]]:
        """``(param, flipped_total, steps)`` per binary kernel since the last reset."""
        if isinstance(self.binary, Bop):
            return self.binary.read_flips(reset)
        return self._flips.read(reset) if self._flips is not None else []

    def flip_total(self, param: Tensor) -> Tensor | None:
        """How many of ``param``'s weights flipped since the last reset, as a running
        total on the device (the live counter: clone it to keep it); None where flips
        are not counted or ``param`` has not been stepped yet."""
        return flip_total(self.binary, self._flips, param)

    def state_dict(self) -> dict:
        return {
            "binary": self.binary.state_dict(),
            "fp": None if self.fp is None else self.fp.state_dict(),
            "step_count": self.step_count,
            "lr_schedule": None if self.lr_schedule is None else self.lr_schedule.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.binary.load_state_dict(state["binary"])
        if self.fp is not None and state["fp"] is not None:
            self.fp.load_state_dict(state["fp"])
        self.step_count = state["step_count"]
        if state.get("lr_schedule") is not None:
            self.lr_schedule = Schedule.from_dict(state["lr_schedule"])
