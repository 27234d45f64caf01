"""BinaryNet for CIFAR-10 (Courbariaux et al. 2016), exactly as the paper's code.

No biases; BatchNorm with a shift but no scale and Keras' defaults; the first
layer sees the real image, every later layer binarizes its input with ``ste_sign``,
which is also the only non-linearity. Every conv/dense kernel, first and last
included, is binary and trained by Bop.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from bopsweep.bnn.layers import CenterBatchNorm1d, CenterBatchNorm2d, QuantConv2d, QuantLinear
from bopsweep.bnn.models import register_model


def _conv(in_ch: int, out_ch: int, kernel_size: int, *, first: bool = False) -> QuantConv2d:
    return QuantConv2d(
        in_ch,
        out_ch,
        kernel_size,
        # The first conv is "valid" (32 -> 30), the rest keep their size.
        padding=0 if first else "same",
        input_quantizer=None if first else "ste_sign",
    )


@register_model("binarynet")
def binarynet(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    filters: int = 128,
    dense_units: int = 1024,
    kernel_size: int = 3,
) -> nn.Module:
    """The original's architecture hparams: ``filters`` (doubled twice over the conv
    blocks), ``dense_units`` and ``kernel_size``; the defaults are its ``bop`` sets'."""
    channels, height, width = input_shape
    # Named layers, so per-layer metrics read "flip_ratio/conv3", not "flip_ratio/7".
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", _conv(channels, filters, kernel_size, first=True)),
        ("bn1", CenterBatchNorm2d(filters)),
        ("conv2", _conv(filters, filters, kernel_size)),
        ("pool2", nn.MaxPool2d(2)),
        ("bn2", CenterBatchNorm2d(filters)),
    ]
    in_ch = filters
    for index, out_ch in ((3, 2 * filters), (5, 4 * filters)):
        layers += [
            (f"conv{index}", _conv(in_ch, out_ch, kernel_size)),
            (f"bn{index}", CenterBatchNorm2d(out_ch)),
            (f"conv{index + 1}", _conv(out_ch, out_ch, kernel_size)),
            (f"pool{index + 1}", nn.MaxPool2d(2)),
            (f"bn{index + 1}", CenterBatchNorm2d(out_ch)),
        ]
        in_ch = out_ch
    # Spatial size after the valid conv and three 2x2 pools (floor), e.g. 32 -> 3.
    side_h, side_w = height - kernel_size + 1, width - kernel_size + 1
    for _ in range(3):
        side_h, side_w = side_h // 2, side_w // 2
    layers += [
        ("flatten", nn.Flatten()),
        ("dense1", QuantLinear(in_ch * side_h * side_w, dense_units)),
        ("bn7", CenterBatchNorm1d(dense_units)),
        ("dense2", QuantLinear(dense_units, dense_units)),
        ("bn8", CenterBatchNorm1d(dense_units)),
        ("dense3", QuantLinear(dense_units, num_classes)),
        ("bn9", CenterBatchNorm1d(num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))
