"""Sign quantizers with the straight-through estimator (STE).

Larq's ``ste_sign``: the forward pass is ``sign(x)`` with ``sign(0) = +1`` (so every
binary value is exactly +-1, never 0), and the backward pass lets the gradient
through where ``|x| <= 1`` and blocks it elsewhere (Courbariaux et al. 2016).

Bi-Real Net binarizes its activations with Larq's ``approx_sign``: the same forward
pass, and the gradient of a piecewise-quadratic approximation of sign,
``2 - 2|x|`` where ``|x| <= 1`` (Liu et al. 2018).
"""

from __future__ import annotations

import torch


def sign(x: torch.Tensor) -> torch.Tensor:
    """``sign`` with ``sign(0) = +1``: the binarization used everywhere in bopsweep."""
    # Larq's own formulation, sign(sign(x) + 0.1): plain vectorized float ops in x's
    # dtype, several times faster than a comparison and where() (bf16 especially).
    return torch.sign(x).add_(0.5).sign_()


def _ste_gate(grad_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # grad where |x| <= 1, else 0, in one fused kernel: hardtanh's backward passes the
    # gradient strictly inside (min, max), and no value of x's dtype lies strictly
    # between 1 and 1 + eps.
    bound = 1.0 + torch.finfo(x.dtype).eps
    return torch.ops.aten.hardtanh_backward(grad_output, x, -bound, bound)


class _SteSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return _ste_gate(grad_output, x)


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """Binarize ``x`` to +-1; gradients pass straight through where ``|x| <= 1``."""
    return _SteSign.apply(x)


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        abs_x = x.abs()
        return torch.where(abs_x <= 1, (2 - 2 * abs_x) * grad_output, 0.0).to(grad_output.dtype)


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Binarize ``x`` to +-1; gradient ``(2 - 2|x|)`` where ``|x| <= 1``, else 0."""
    return _ApproxSign.apply(x)


QUANTIZERS = {"ste_sign": ste_sign, "approx_sign": approx_sign}
