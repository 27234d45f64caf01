"""Binarized layers: convolutions and dense layers whose kernels are binary.

A layer marks its own kernel as binary (``binary_kernel=True``); the optimizer
routing in :mod:`bopsweep.bnn.case` asks the layers, never the parameter names.

Two ways of training a binary kernel are supported, as in the paper:

* **Bop** (the default): the kernel *is* binary, exactly +-1, and Bop flips it.
  The forward pass uses it as it is.
* **Latent weights** (the baseline): the kernel is a real-valued latent weight,
  binarized in the forward pass by ``ste_sign`` and clipped to [-1, 1] after each
  step. :func:`use_latent_weights` switches a model to this mode.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from bopsweep.bnn.quantizers import QUANTIZERS, sign


def _quantizer(name: str | None):
    if name is None:
        return None
    return QUANTIZERS[name]


class _QuantMixin:
    """What QuantConv2d and QuantLinear share: quantizers and the binary marker."""

    weight: nn.Parameter
    binary_kernel: bool
    input_quantizer: str | None
    kernel_quantizer: str | None

    def _init_quant(
        self, input_quantizer: str | None, binary_kernel: bool, kernel_quantizer: str | None
    ) -> None:
        self.input_quantizer = input_quantizer
        self.binary_kernel = binary_kernel
        self.kernel_quantizer = kernel_quantizer
        if binary_kernel:
            self.reset_binary_kernel()

    @torch.no_grad()
    def reset_binary_kernel(self) -> None:
        """Random +-1 kernel: Bop needs binary weights from the first step."""
        self.weight.copy_(sign(torch.randn_like(self.weight)))

    def _quantized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        input_fn = _quantizer(self.input_quantizer)
        kernel_fn = _quantizer(self.kernel_quantizer)
        if input_fn is not None:
            x = input_fn(x)
        kernel = self.weight if kernel_fn is None else kernel_fn(self.weight)
        return x, kernel

    def _quant_repr(self) -> str:
        return (
            f", input_quantizer={self.input_quantizer}, binary_kernel={self.binary_kernel}"
            f", kernel_quantizer={self.kernel_quantizer}"
        )


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """A 2-D convolution with an optional input quantizer and a binary kernel.

    Args:
        input_quantizer: ``"ste_sign"`` to binarize the input, ``None`` to keep it real
            (the first layer of BinaryNet sees the real image).
        binary_kernel: mark the kernel as binary (trained by Bop, or by the latent-weight
            baseline); ``False`` makes this an ordinary full-precision convolution.
        kernel_quantizer: ``None`` for Bop (the kernel is already +-1) or ``"ste_sign"``
            for latent weights.
        bias: no bias by default, as in every model of the paper.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | str = 0,
        *,
        input_quantizer: str | None = "ste_sign",
        binary_kernel: bool = True,
        kernel_quantizer: str | None = None,
        bias: bool = False,
        groups: int = 1,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, bias=bias, groups=groups
        )
        self._init_quant(input_quantizer, binary_kernel, kernel_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, kernel = self._quantized(x)
        return self._conv_forward(x, kernel, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


class QuantLinear(_QuantMixin, nn.Linear):
    """A dense layer with an optional input quantizer and a binary kernel.

    Arguments as for :class:`QuantConv2d`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        input_quantizer: str | None = "ste_sign",
        binary_kernel: bool = True,
        kernel_quantizer: str | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_quant(input_quantizer, binary_kernel, kernel_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, kernel = self._quantized(x)
        return F.linear(x, kernel, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


class _CenterOnly:
    """BatchNorm with a learned shift (beta) but no scale (gamma), as Keras'
    ``BatchNormalization(scale=False)``: before a sign, a scale changes nothing.

    The scale is a fixed 1 (a buffer, out of the state dict) rather than absent: CUDA's
    batch-norm backward with no weight but a bias returns an empty bias gradient
    ("invalid gradient at index 2 - got [0]"), while with a weight that takes no
    gradient it runs cuDNN's kernels. Times 1 is exact, so results are unchanged."""

    def _drop_scale(self) -> None:
        del self.weight
        self.register_buffer("weight", torch.ones(self.num_features), persistent=False)


class CenterBatchNorm1d(_CenterOnly, nn.BatchNorm1d):
    """1-D BatchNorm without scale; Keras defaults (momentum 0.99, eps 1e-3)."""

    def __init__(self, num_features: int, momentum: float = 0.01, eps: float = 1e-3) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self._drop_scale()


class CenterBatchNorm2d(_CenterOnly, nn.BatchNorm2d):
    """2-D BatchNorm without scale; Keras defaults (momentum 0.99, eps 1e-3)."""

    def __init__(self, num_features: int, momentum: float = 0.01, eps: float = 1e-3) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self._drop_scale()


def binary_layers(model: nn.Module) -> Iterator[tuple[str, _QuantMixin]]:
    """The (name, layer) pairs of every layer whose kernel is binary."""
    for name, module in model.named_modules():
        if isinstance(module, _QuantMixin) and module.binary_kernel:
            yield name, module


def binary_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The binary kernels of ``model``, as marked by their layers."""
    return [layer.weight for _, layer in binary_layers(model)]


@torch.no_grad()
def use_latent_weights(model: nn.Module) -> nn.Module:
    """Switch every binary kernel to a real latent weight binarized by ``ste_sign``.

    The latent weights start from Keras' default Glorot-uniform initializer (the
    original baseline's), which keeps them well inside the [-1, 1] clip.
    """
    for _, layer in binary_layers(model):
        layer.kernel_quantizer = "ste_sign"
        weight = layer.weight
        receptive = weight[0][0].numel() if weight.dim() > 2 else 1
        fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        weight.uniform_(-limit, limit)
    return model
