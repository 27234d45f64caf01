"""Bop's update as functions over lists of tensors, as ``torch/optim/adam.py`` has them:
a ``_single_tensor_*`` reference and a ``_multi_tensor_*`` foreach kernel for each rule
(Bop, its second-order variant and the "unbiased" one), with the same signature and
bit-identical results, behind the functional entries :func:`bop`, :func:`bop2` and
:func:`bop2_unbiased`. The optimizer classes (:mod:`bopsweep.bnn.optim`) and the
fused members' optimizer (:mod:`bopsweep.bnn.fused.optim`) call them.

A weight flips to ``sign(-sign(w * score - threshold) * w)`` with ``sign(0) = +1``
(Larq's formulation), so every weight is exactly +-1 after a step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

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
