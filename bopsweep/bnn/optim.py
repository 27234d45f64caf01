"""Bop, its second-order variant, and the routing of binary vs real parameters.

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
gathers tensors, a functional entry (:func:`bop`) dispatches to a
``_single_tensor_bop`` reference or the ``_multi_tensor_bop`` foreach kernel, which
have the same signature and agree bit for bit.

Only binary kernels go through Bop. :class:`CaseOptimizer` is the one optimizer
object a training loop steps: binary kernels (as marked by their layers) go to one
optimizer and every other parameter to a full-precision one (Adam in the paper).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from bopsweep.bnn.schedules import Schedule, as_schedule

__all__ = [
    "Bop",
    "Bop2ndOrder",
    "Bop2ndOrderUnbiased",
    "CaseOptimizer",
    "bop",
    "bop2",
    "bop2_unbiased",
]

# "Bop and Beyond" divides by sqrt(v) + eps with this eps.
_BOP2_EPS = 1e-10

# A rate for every tensor of a step, or one per tensor: fused trials (the members of
# one stacked model, see bopsweep.bnn.fused) pass each member's slice of a tensor
# with that member's own threshold and gamma, in the same pass.
Rate = float | Sequence[float]


def _per_tensor(value: Rate, count: int) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * count
    if len(value) != count:
        raise ValueError(f"{len(value)} rates for {count} tensors")
    return [float(v) for v in value]


# --------------------------------------------------------------------------- kernels
def _flip_single(w: Tensor, score: Tensor, threshold: float, flips: Tensor | None) -> None:
    # tf.sign semantics here (sign(0) = 0) is what makes the tie give +1 below.
    s = torch.sign(w * score - threshold)
    # Larq's sign(-s * w) with sign(0) = +1: -1 exactly where s * w > 0.
    new = torch.where(s * w > 0, -1.0, 1.0)
    if flips is not None:
        # Count binary values that changed (Larq's FlipRatio), the tie -1 -> +1 included.
        flips.add_((new * w < 0).sum())
    w.copy_(new)


# Elements per slice of the CPU flip pass: a slice's two float scratch buffers (8 MiB)
# stay in cache between the passes over it, and no step allocates full-size
# temporaries (fresh pages cost a fault each on the CPU).
_FLIP_SLICE = 1 << 20


def _flat(t: Tensor) -> Tensor | None:
    """A 1-D view of ``t`` in memory order, or None when its layout has gaps."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(-1)
    return None


def _flip_slice(
    w: Tensor,
    score: Tensor,
    threshold: float,
    new: Tensor,
    sign_w: Tensor,
    count: Tensor | None,
) -> None:
    # The decisions of _flip_single from exact operations only, each its own kernel (no
    # fused multiply-add), so the result does not depend on how a tensor is sliced.
    # Arithmetic throughout: on the CPU, bool masks and where() are several times
    # slower than vectorized float ops.
    torch.sign(w, out=sign_w)
    torch.mul(w, score, out=new).sub_(threshold).sign_()
    # 0.5 - s * sign(w): -0.5 exactly where s * w > 0, else 0.5 or 1.5 (the product
    # is -1, 0 or 1, so no rounding whether or not it is fused with the add).
    torch.addcmul(new.new_full((), 0.5), new, sign_w, value=-1.0, out=new)
    torch.sign(new, out=w)
    if count is not None:
        # w_new * sign(w_old) is +1 where a nonzero value kept its sign, -1 where it
        # changed (the tie -1 -> +1 included) and 0 for a zero: with n the nonzero
        # count, the dot product is n - 2 * changed. Sums of +-1 stay exact in float.
        flat_sign = sign_w.reshape(-1)
        nonzero = torch.dot(flat_sign, flat_sign)
        count.add_(nonzero.sub_(torch.dot(w.reshape(-1), flat_sign)).div_(2))


def _slices(*tensors: Tensor) -> Iterator[tuple[Tensor, ...]]:
    """Matching slices of same-layout tensors in memory order (the whole tensors when
    their layouts differ or have gaps)."""
    flats = [_flat(t) for t in tensors]
    if any(f is None for f in flats) or any(t.stride() != tensors[0].stride() for t in tensors):
        yield tensors
        return
    for start in range(0, flats[0].numel(), _FLIP_SLICE):
        yield tuple(f[start : start + _FLIP_SLICE] for f in flats)


def _sliced_on_cpu(ws: list[Tensor]) -> bool:
    # The flip count sums +-1 in the weights' dtype, which is exact in float32/64 only.
    return all(w.device.type == "cpu" and w.dtype in (torch.float32, torch.float64) for w in ws)


def _sliced_pass(
    ws: list[Tensor],
    scores: list[Tensor],
    threshold: Rate,
    flips: list[Tensor] | None,
    grads: list[Tensor] | None = None,
    gamma: Rate = 0.0,
) -> None:
    # On the CPU a foreach op is a loop of per-tensor ops, each a full pass over memory
    # into freshly allocated temporaries. Slice by slice (the moving average updated
    # in the same slice when ``grads`` is given), the passes over a slice stay in cache
    # and memory is read about once. lerp_ gives the same bits on a slice as on the
    # whole tensor, which the foreach == single-tensor tests pin.
    buffers: dict[str, Tensor] = {}

    def scratch(name: str, like: Tensor) -> Tensor:
        buffer = buffers.get(name)
        if buffer is None or buffer.numel() < like.numel():
            buffer = buffers[name] = torch.empty(like.numel(), dtype=like.dtype)
        return buffer[: like.numel()].view(like.shape)

    thresholds, gammas = _per_tensor(threshold, len(ws)), _per_tensor(gamma, len(ws))
    for i, (w, score) in enumerate(zip(ws, scores, strict=True)):
        count = None if flips is None else flips[i]
        tensors = (w, score) if grads is None else (w, score, grads[i])
        for parts in _slices(*tensors):
            if grads is not None:
                parts[1].lerp_(parts[2], gammas[i])
            w_part, score_part = parts[0], parts[1]
            new, sign_w = scratch("new", w_part), scratch("sign_w", w_part)
            _flip_slice(w_part, score_part, thresholds[i], new, sign_w, count)


def _flip_multi(
    ws: list[Tensor], scores: list[Tensor], threshold: Rate, flips: list[Tensor] | None
) -> None:
    if _sliced_on_cpu(ws):
        _sliced_pass(ws, scores, threshold, flips)
        return
    # Elsewhere foreach ops are fused multi-tensor kernels: few launches for many tensors.
    s = torch._foreach_mul(ws, scores)
    # A list of rates is torch's ScalarList overload: still one pass.
    torch._foreach_sub_(s, _foreach_rate(threshold))
    torch._foreach_sign_(s)
    torch._foreach_mul_(s, ws)
    torch._foreach_sign_(s)
    torch._foreach_clamp_min_(s, 0.0)  # 1 where s * w > 0, else 0
    torch._foreach_mul_(s, -2.0)
    torch._foreach_add_(s, 1.0)
    if flips is not None:
        # A binary value changed exactly where new * w < 0 (the tie -1 -> +1 included);
        # the L1 norm of that -1/0 mask is the count, kept on the device.
        changed = torch._foreach_mul(s, ws)
        torch._foreach_sign_(changed)
        torch._foreach_clamp_max_(changed, 0.0)
        torch._foreach_add_(flips, torch._foreach_norm(changed, 1))
    torch._foreach_copy_(ws, s)


def _foreach_rate(value: Rate) -> float | list[float]:
    return value if isinstance(value, (int, float)) else [float(v) for v in value]


def _single_tensor_bop(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    flips: list[Tensor] | None,
    *,
    threshold: Rate,
    gamma: Rate,
) -> None:
    thresholds, gammas = _per_tensor(threshold, len(params)), _per_tensor(gamma, len(params))
    for i, (w, g, m) in enumerate(zip(params, grads, ms, strict=True)):
        m.lerp_(g, gammas[i])
        _flip_single(w, m, thresholds[i], None if flips is None else flips[i])


def _multi_tensor_bop(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    flips: list[Tensor] | None,
    *,
    threshold: Rate,
    gamma: Rate,
) -> None:
    if not params:
        return
    if _sliced_on_cpu(params):
        _sliced_pass(params, ms, threshold, flips, grads, gamma)
        return
    torch._foreach_lerp_(ms, grads, _foreach_rate(gamma))
    _flip_multi(params, ms, threshold, flips)


def _bop2_scores_single(m: Tensor, v: Tensor) -> Tensor:
    return m / (v.sqrt() + _BOP2_EPS)


def _single_tensor_bop2(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    flips: list[Tensor] | None,
    *,
    threshold: Rate,
    gamma: Rate,
    sigma: Rate,
) -> None:
    count = len(params)
    thresholds, gammas = _per_tensor(threshold, count), _per_tensor(gamma, count)
    sigmas = _per_tensor(sigma, count)
    for i, (w, g, m, v) in enumerate(zip(params, grads, ms, vs, strict=True)):
        m.lerp_(g, gammas[i])
        v.lerp_(g * g, sigmas[i])
        flip = None if flips is None else flips[i]
        _flip_single(w, _bop2_scores_single(m, v), thresholds[i], flip)


def _multi_tensor_bop2(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    flips: list[Tensor] | None,
    *,
    threshold: Rate,
    gamma: Rate,
    sigma: Rate,
) -> None:
    if not params:
        return
    torch._foreach_lerp_(ms, grads, _foreach_rate(gamma))
    torch._foreach_lerp_(vs, torch._foreach_mul(grads, grads), _foreach_rate(sigma))
    denominators = torch._foreach_sqrt(vs)
    torch._foreach_add_(denominators, _BOP2_EPS)
    _flip_multi(params, torch._foreach_div(ms, denominators), threshold, flips)


def _bop2_unbiased_scores_single(m: Tensor, v: Tensor, gamma: float, sigma: float) -> Tensor:
    # The original's ``(m_t / gamma) / (tf.math.sqrt(v_t / sigma) + 1e-10)``, one
    # operation at a time in the same order, so the float32 roundings are its own.
    return (m / gamma) / ((v / sigma).sqrt() + _BOP2_EPS)


def _single_tensor_bop2_unbiased(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    flips: list[Tensor] | None,
    *,
    threshold: Rate,
    gamma: Rate,
    sigma: Rate,
) -> None:
    count = len(params)
    thresholds, gammas = _per_tensor(threshold, count), _per_tensor(gamma, count)
    sigmas = _per_tensor(sigma, count)
    for i, (w, g, m, v) in enumerate(zip(params, grads, ms, vs, strict=True)):
        m.lerp_(g, gammas[i])
        v.lerp_(g * g, sigmas[i])
        score = _bop2_unbiased_scores_single(m, v, gammas[i], sigmas[i])
        _flip_single(w, score, thresholds[i], None if flips is None else flips[i])


def _multi_tensor_bop2_unbiased(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    flips: list[Tensor] | None,
    *,
    threshold: Rate,
    gamma: Rate,
    sigma: Rate,
) -> None:
    if not params:
        return
    gammas, sigmas = _foreach_rate(gamma), _foreach_rate(sigma)
    torch._foreach_lerp_(ms, grads, gammas)
    torch._foreach_lerp_(vs, torch._foreach_mul(grads, grads), sigmas)
    scores = torch._foreach_div(ms, gammas)
    denominators = torch._foreach_div(vs, sigmas)
    torch._foreach_sqrt_(denominators)
    torch._foreach_add_(denominators, _BOP2_EPS)
    torch._foreach_div_(scores, denominators)
    _flip_multi(params, scores, threshold, flips)


def bop(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    flips: list[Tensor] | None = None,
    *,
    threshold: Rate,
    gamma: Rate,
    foreach: bool = True,
) -> None:
    """Functional Bop: update ``ms`` and flip ``params`` in place; each rate is one
    value or one per tensor."""
    kernel = _multi_tensor_bop if foreach else _single_tensor_bop
    kernel(params, grads, ms, flips, threshold=threshold, gamma=gamma)


def bop2(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    flips: list[Tensor] | None = None,
    *,
    threshold: Rate,
    gamma: Rate,
    sigma: Rate,
    foreach: bool = True,
) -> None:
    """Functional second-order Bop: update ``ms``, ``vs`` and flip ``params`` in place."""
    kernel = _multi_tensor_bop2 if foreach else _single_tensor_bop2
    kernel(params, grads, ms, vs, flips, threshold=threshold, gamma=gamma, sigma=sigma)


def bop2_unbiased(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    flips: list[Tensor] | None = None,
    *,
    threshold: Rate,
    gamma: Rate,
    sigma: Rate,
    foreach: bool = True,
) -> None:
    """Functional "unbiased" second-order Bop: update ``ms``, ``vs`` and flip
    ``params`` in place; the flip test divides ``m`` by ``gamma`` and ``v`` by
    ``sigma`` (the rates of this step)."""
    kernel = _multi_tensor_bop2_unbiased if foreach else _single_tensor_bop2_unbiased
    kernel(params, grads, ms, vs, flips, threshold=threshold, gamma=gamma, sigma=sigma)


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


# --------------------------------------------------------------------------- routing
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
