"""What the ImageNet models share: Keras' BatchNorm and initializers, in PyTorch terms.

The paper's models are Keras models; these helpers reproduce the Keras defaults they
rely on, so the PyTorch versions start from the same place:

* ``BatchNormalization(momentum=k, epsilon=e)`` is ``BatchNorm(momentum=1 - k, eps=e)``
  (Keras' momentum weights the old statistics, PyTorch's the new batch);
* Keras kernels start Glorot-uniform (``Conv2D``/``Dense`` default) or Glorot-normal
  (a normal truncated at two standard deviations, rescaled so the variance is
  still ``2 / (fan_in + fan_out)``); biases start at zero.

Binary kernels need none of this: their layers start them at random +-1.

Keras' ``padding="same"`` pads asymmetrically when the stride is above 1 (the extra
row goes at the bottom); the models here pad symmetrically with the amount that
gives the same output size at 224x224, as PyTorch ports of these networks do. The
windows shift by one pixel; the parameter counts and feature-map sizes are Keras'.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bopsweep.errors import UserError

# Keras' glorot_normal divides the standard deviation by the standard deviation of a
# unit normal truncated to [-2, 2], so the truncated draw keeps the Glorot variance.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def batch_norm(channels: int, keras_momentum: float, eps: float = 1e-3, dims: int = 2):
    """Keras ``BatchNormalization(momentum=keras_momentum, epsilon=eps)``, with scale."""
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return norm(channels, eps=eps, momentum=1.0 - keras_momentum)


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


@torch.no_grad()
def glorot_uniform_(weight: torch.Tensor) -> torch.Tensor:
    """Keras' default kernel initializer."""
    fan_in, fan_out = _fans(weight)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return weight.uniform_(-limit, limit)


@torch.no_grad()
def glorot_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Keras' ``glorot_normal``: a truncated normal with the Glorot variance."""
    fan_in, fan_out = _fans(weight)
    std = math.sqrt(2.0 / (fan_in + fan_out)) / _TRUNCATED_NORMAL_STD
    return nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)


def keras_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    *,
    init=glorot_uniform_,
) -> nn.Conv2d:
    """A full-precision convolution without bias, initialised as Keras would."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
    init(conv.weight)
    return conv


def keras_linear(in_features: int, out_features: int, *, bias: bool) -> nn.Linear:
    """A full-precision dense layer, Glorot-uniform kernel and zero bias as in Keras."""
    linear = nn.Linear(in_features, out_features, bias=bias)
    glorot_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


def output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, *, ceil=False) -> int:
    """The output length of a convolution or pooling window along one axis."""
    span = size + 2 * padding - kernel
    steps = -(-span // stride) if ceil else span // stride
    return steps + 1


def check_side(model: str, side: int, input_shape: tuple[int, ...], minimum: int) -> None:
    """A clear error when an image is too small for the model's fixed downsampling."""
    if side < 1:
        raise UserError(
            f"{model} needs images of at least {minimum}x{minimum} pixels (the paper "
            f"trains it on 224x224 ImageNet); this dataset gives {tuple(input_shape)}"
        )
