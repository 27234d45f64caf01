"""The optimizers of a fused model: each member trained as if it were alone.

* :class:`FusedBop`: Bop, or Bop2ndOrder when given sigmas, over fused binary
  kernels. Each member's slice of every kernel is stepped with that member's own
  threshold, gamma and sigma schedules, and all slices of all members go through the
  functional kernels of :mod:`bopsweep.bnn.optim` in one pass (torch's ScalarList
  foreach ops on a GPU, the cache-sized CPU pass elsewhere): the same operations on
  the same values as K separate steps, so the result is bit-identical to them.
* :class:`MemberOptimizers`: one stock torch optimizer (Adam, SGD) per member over
  that member's views of the fused parameters, so each member keeps its own learning
  rate, weight decay and moments, computed exactly as torch computes them.
* :class:`SharedOptimizer`: one torch optimizer over the whole fused parameters when
  every member has the same settings (a threshold x gamma grid): elementwise the
  same update, in one pass.
* :class:`FusedCaseOptimizer`: the one optimizer object the fused loop steps, as
  :class:`~bopsweep.bnn.case.CaseOptimizer` is for one model, with per-member
  learning-rate schedules, flip counts and freezing (a member that diverged stops
  moving while the others go on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from bopsweep.bnn.bop_kernels import _BOP2_EPS, _flat, bop, bop2
from bopsweep.bnn.case import SignFlipCounter, flip_total
from bopsweep.bnn.fused.layers import FusedModel, member_view
from bopsweep.bnn.optim import Bop, _check_rate, _check_threshold
from bopsweep.bnn.schedules import Schedule, as_schedule

__all__ = [
    "FusedBop",
    "FusedCaseOptimizer",
    "MemberOptimizers",
    "SharedOptimizer",
]

Rates = Sequence[float | Schedule]


def _rows(t: Tensor, members: int) -> Tensor | None:
    """``t`` as ``[K, n]`` in memory order (member k's slice is row k), or None."""
    flat = _flat(t)
    return None if flat is None else flat.view(members, -1)


def _member_bop(
    w: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor | None,
    rates: dict[str, Tensor],
    flips: Tensor | None,
    scratch: tuple[Tensor, Tensor],
) -> None:
    # The operations of bopsweep.bnn.optim's _flip_slice on every member at once, each
    # member's rates broadcast along its row: lerp with a tensor weight, subtraction
    # and products of signs are the same exactly rounded operations elementwise.
    m.lerp_(g, rates["gamma"])
    score = m
    if v is not None:
        v.lerp_(g * g, rates["sigma"])
        score = m / (v.sqrt() + _BOP2_EPS)
    sign_w, new = scratch
    torch.sign(w, out=sign_w)
    torch.mul(w, score, out=new).sub_(rates["threshold"]).sign_()
    torch.addcmul(new.new_full((), 0.5), new, sign_w, value=-1.0, out=new)
    torch.sign(new, out=w)
    if flips is not None:
        # As in _flip_slice: per row, (nonzero count - sum of new * sign(old)) / 2, as
        # batched dot products. Sums of +-1 are exact in float32 up to 2**24 terms a
        # row (the whole sum and every partial one), in float64 beyond.
        exact = torch.float32 if w.shape[1] < 2**24 else torch.float64
        rows = sign_w.to(exact).unsqueeze(1)
        nonzero = torch.bmm(rows, rows.transpose(1, 2)).view(-1)
        kept = torch.bmm(w.to(exact).unsqueeze(1), rows.transpose(1, 2)).view(-1)
        flips.add_(nonzero.sub_(kept).div_(2))


class FusedBop(Optimizer):
    """Bop over fused binary kernels, each member with its own schedules.

    Args:
        params: fused binary kernels (dim 0 is K times the unfused dim 0).
        members: K.
        threshold, gamma: one value or :class:`Schedule` per member.
        sigma: one per member for Bop2ndOrder ("Bop and Beyond"); None for Bop.
        foreach, count_flips: as for :class:`~bopsweep.bnn.optim.Bop`; flips are
            counted per member.
        one_pass: every member's rows at once with broadcast rates (the default), or
            each member's slices in turn, as its own Bop would step them.
    """

    def __init__(
        self,
        params,
        members: int,
        threshold: Rates,
        gamma: Rates,
        sigma: Rates | None = None,
        *,
        foreach: bool | None = None,
        count_flips: bool = True,
        one_pass: bool | None = None,
    ) -> None:
        rates = {"threshold": threshold, "gamma": gamma}
        if sigma is not None:
            rates["sigma"] = sigma
        for name, values in rates.items():
            if len(values) != members:
                raise ValueError(f"{len(values)} {name} values for {members} members")
        defaults = {name: [as_schedule(v).to_dict() for v in vs] for name, vs in rates.items()}
        defaults.update(foreach=foreach, count_flips=count_flips)
        super().__init__(params, defaults)
        self.members = members
        self.second_order = sigma is not None
        self.frozen: set[int] = set()
        self.one_pass = one_pass
        self._buffers: dict = {}
        # Each group's per-member rate columns, rebuilt only when a schedule changes a
        # value: a fresh host-to-device copy every step would wait for the GPU each time.
        self._rates: dict[int, tuple[tuple, dict[str, Tensor]]] = {}
        for group in self.param_groups:
            for entry in group["threshold"]:
                _check_threshold(as_schedule(entry))
            for name in ("gamma", "sigma"):
                for entry in group.get(name) or []:
                    _check_rate(name, as_schedule(entry))
            group.setdefault("step", 0)

    def current(self, name: str, member: int, group_index: int = 0) -> float:
        """Member ``member``'s ``gamma`` / ``threshold`` / ``sigma`` at the next step."""
        group = self.param_groups[group_index]
        return as_schedule(group[name][member])(group["step"])

    def freeze(self, member: int) -> None:
        """Stop stepping ``member`` (it diverged, or was stopped early)."""
        self.frozen.add(member)

    def _state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if self.second_order:
                state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["flips"] = torch.zeros(self.members, dtype=torch.float64, device=p.device)
            state["flip_steps"] = 0
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Every member's rows in one pass of broadcast ops (on the CPU with two reused
        # scratch buffers: 8.5 ms against 10.1 ms a step for member slices in turn,
        # 5 MLP members on digits); member by member once some are frozen.
        one_pass = True if self.one_pass is None else self.one_pass
        if not self.frozen and one_pass and self._step_rows():
            return loss
        active = [k for k in range(self.members) if k not in self.frozen]
        for group in self.param_groups:
            rates = {
                name: [as_schedule(group[name][k])(group["step"]) for k in active]
                for name in ("threshold", "gamma", "sigma")
                if group.get(name) is not None
            }
            weights, grads, ms, vs, flips = [], [], [], [], []
            per_tensor: dict[str, list[float]] = {name: [] for name in rates}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                views = [member_view(t, self.members) for t in (p, p.grad, state["m"])]
                v_view = member_view(state["v"], self.members) if self.second_order else None
                for position, k in enumerate(active):
                    weights.append(views[0][k])
                    grads.append(views[1][k])
                    ms.append(views[2][k])
                    if v_view is not None:
                        vs.append(v_view[k])
                    flips.append(state["flips"][k])
                    for name, values in rates.items():
                        per_tensor[name].append(values[position])
                if group["count_flips"]:
                    state["flip_steps"] += 1
            if weights:
                foreach = True if group["foreach"] is None else group["foreach"]
                counts = flips if group["count_flips"] else None
                if self.second_order:
                    bop2(weights, grads, ms, vs, counts, foreach=foreach, **per_tensor)
                else:
                    bop(weights, grads, ms, counts, foreach=foreach, **per_tensor)
            group["step"] += 1
        return loss

    def _scratch(self, like: Tensor) -> tuple[Tensor, Tensor]:
        # Two buffers of the largest kernel's size, reused by every kernel and step:
        # fresh full-size temporaries cost a page fault per page on the CPU.
        key = (like.dtype, like.device)
        buffers = self._buffers.get(key)
        if buffers is None or buffers[0].numel() < like.numel():
            buffers = tuple(
                torch.empty(like.numel(), dtype=like.dtype, device=like.device) for _ in range(2)
            )
            self._buffers[key] = buffers
        return tuple(b[: like.numel()].view(like.shape) for b in buffers)

    def _step_rows(self) -> bool:
        """Every member at once, its rates broadcast along its row of each tensor;
        False (nothing done) when a tensor's layout has gaps."""
        planned = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                tensors = [p, p.grad, state["m"]] + ([state["v"]] if self.second_order else [])
                if any(t.stride() != p.stride() for t in tensors):
                    return False
                rows = [_rows(t, self.members) for t in tensors]
                if any(r is None for r in rows):
                    return False
                planned.append((group, state, rows))
        for group, state, rows in planned:
            rates = self._group_rates(group, rows[0])
            counts = state["flips"] if group["count_flips"] else None
            w, g, m = rows[:3]
            scratch = self._scratch(w)
            v = rows[3] if self.second_order else None
            _member_bop(w, g, m, v, rates, counts, scratch)
            if group["count_flips"]:
                state["flip_steps"] += 1
        for group in self.param_groups:
            group["step"] += 1
        return True

    def _group_rates(self, group: dict, like: Tensor) -> dict[str, Tensor]:
        """This step's rates of ``group``, one column of K values per rate."""
        values = {
            name: tuple(as_schedule(e)(group["step"]) for e in group[name])
            for name in ("threshold", "gamma", "sigma")
            if group.get(name) is not None
        }
        key = (tuple(values.items()), like.dtype, like.device)
        cached = self._rates.get(id(group))
        if cached is None or cached[0] != key:
            columns = {
                name: torch.tensor(v, dtype=like.dtype, device=like.device).view(-1, 1)
                for name, v in values.items()
            }
            cached = self._rates[id(group)] = (key, columns)
        return cached[1]

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._rates.clear()
        for state in self.state.values():
            if "flips" in state:
                state["flips"] = state["flips"].to(torch.float64)

    # Bop's own: the state keeps "flips" ([K] here) and "flip_steps" the same way.
    read_flips = Bop.read_flips


class MemberOptimizers:
    """One torch optimizer per member, over that member's views of fused parameters.

    ``factory(member, views)`` builds member ``member``'s optimizer; the views are
    leaf tensors sharing the fused parameters' memory, so the optimizer's in-place
    updates land in the fused model. Before each step the members' slices of the
    fused gradients are attached to the views.
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        members: int,
        factory: Callable[[int, list[Tensor]], Optimizer],
    ) -> None:
        self.params = list(params)
        self.members = members
        self.views = [
            [member_view(p.detach(), members)[k] for p in self.params] for k in range(members)
        ]
        self.optimizers = [factory(k, self.views[k]) for k in range(members)]
        self.frozen: set[int] = set()

    def freeze(self, member: int) -> None:
        self.frozen.add(member)

    def set_lr(self, member: int, lr: float) -> None:
        for group in self.optimizers[member].param_groups:
            group["lr"] = lr

    def lr(self, member: int) -> float:
        return self.optimizers[member].param_groups[0]["lr"]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        for views in self.views:
            for view in views:
                view.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            grads = None if p.grad is None else member_view(p.grad, self.members)
            for k in range(self.members):
                self.views[k][i].grad = None if grads is None else grads[k]
        for k, optimizer in enumerate(self.optimizers):
            if k not in self.frozen:
                optimizer.step()

    def state_dict(self) -> list[dict]:
        return [optimizer.state_dict() for optimizer in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for optimizer, state in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(state)


class SharedOptimizer:
    """One torch optimizer over whole fused parameters, for members that share its
    settings (learning rate and its schedule, weight decay): the same elementwise
    update as :class:`MemberOptimizers` in one pass instead of K. A frozen member's
    slices are put back after each step."""

    def __init__(self, params: Sequence[nn.Parameter], members: int, optimizer: Optimizer):
        self.params = list(params)
        self.members = members
        self.optimizer = optimizer
        self.frozen: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def freeze(self, member: int) -> None:
        self.frozen[member] = [
            (view, view.detach().clone())
            for p in self.params
            for view in [member_view(p.detach(), self.members)[member]]
        ]

    def set_lr(self, member: int, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def lr(self, member: int) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.step()
        for kept in self.frozen.values():
            for view, value in kept:
                view.copy_(value)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


class FusedCaseOptimizer:
    """Binary kernels to ``binary`` (FusedBop, or per-member Adam on latent weights),
    every other parameter to ``fp``; each member with its own learning-rate schedule.

    Every trainable parameter of the model must be claimed by exactly one of the two.
    """

    def __init__(
        self,
        model: FusedModel,
        binary: FusedBop | MemberOptimizers | SharedOptimizer,
        fp: MemberOptimizers | SharedOptimizer | None,
        *,
        clip_binary: bool = False,
        lr_schedules: Sequence[Schedule] | None = None,
        count_flips: bool = True,
    ) -> None:
        self.members = model.members
        self.binary = binary
        self.fp = fp
        self.clip_binary = clip_binary
        self.lr_schedules = list(lr_schedules) if lr_schedules is not None else None
        self.step_count = 0
        self.frozen: set[int] = set()
        self._binary_params = (
            [p for g in binary.param_groups for p in g["params"]]
            if isinstance(binary, FusedBop)
            else list(binary.params)
        )
        self._check_claims(model)
        self._flips = (
            SignFlipCounter(
                self._binary_params,
                lambda changed: member_view(changed, self.members).flatten(1).sum(1),
                (self.members,),
            )
            if count_flips and not isinstance(binary, FusedBop)
            else None
        )

    def _check_claims(self, model: nn.Module) -> None:
        claims: dict[int, int] = {}
        fp_params = self.fp.params if self.fp is not None else []
        for p in [*self._binary_params, *fp_params]:
            claims[id(p)] = claims.get(id(p), 0) + 1
        for name, p in model.named_parameters():
            if p.requires_grad and claims.get(id(p), 0) != 1:
                who = "no optimizer" if not claims.get(id(p)) else "both optimizers"
                raise ValueError(f"parameter {name!r} is claimed by {who}")

    def _lr_optimizers(self) -> list[MemberOptimizers | SharedOptimizer]:
        return [o for o in (self.binary, self.fp) if o is not None and not isinstance(o, FusedBop)]

    def current_lr(self, member: int) -> float | None:
        optimizers = self._lr_optimizers()
        if not optimizers:
            return None
        if self.lr_schedules is not None:
            return self.lr_schedules[member](self.step_count)
        return optimizers[-1].lr(member)

    def freeze(self, member: int) -> None:
        self.frozen.add(member)
        for optimizer in (self.binary, self.fp):
            if optimizer is not None:
                optimizer.freeze(member)

    def zero_grad(self) -> None:
        self.binary.zero_grad()
        if self.fp is not None:
            self.fp.zero_grad()

    @torch.no_grad()
    def step(self) -> None:
        if self.lr_schedules is not None:
            for optimizer in self._lr_optimizers():
                for k, schedule in enumerate(self.lr_schedules):
                    optimizer.set_lr(k, schedule(self.step_count))
        before = self._flips.signs() if self._flips is not None else None
        self.binary.step()
        if self.fp is not None:
            self.fp.step()
        if self.clip_binary:
            torch._foreach_clamp_min_(self._binary_params, -1.0)
            torch._foreach_clamp_max_(self._binary_params, 1.0)
        if before is not None:
            self._flips.add(before)
        self.step_count += 1

    def read_flips(self, reset: bool = True) -> list[tuple[Tensor, Tensor, int]]:
        """``(param, flipped_totals [K], steps)`` per binary kernel since the last reset."""
        if isinstance(self.binary, FusedBop):
            return self.binary.read_flips(reset)
        return self._flips.read(reset) if self._flips is not None else []

    def flip_total(self, param: Tensor) -> Tensor | None:
        """As :meth:`bopsweep.bnn.case.CaseOptimizer.flip_total`, one count per member."""
        return flip_total(self.binary, self._flips, param)

    def state_dict(self) -> dict:
        return {
            "binary": self.binary.state_dict(),
            "fp": None if self.fp is None else self.fp.state_dict(),
            "step_count": self.step_count,
            "frozen": sorted(self.frozen),
        }

    def load_state_dict(self, state: dict) -> None:
        self.binary.load_state_dict(state["binary"])
        if self.fp is not None and state["fp"] is not None:
            self.fp.load_state_dict(state["fp"])
        self.step_count = state["step_count"]
        for member in state.get("frozen", []):
            self.freeze(member)
