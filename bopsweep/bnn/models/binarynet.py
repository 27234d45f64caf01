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


def _conv(in_ch: int, out_ch: int, *, first: bool = False) -> QuantConv2d:
    return QuantConv2d(
        in_ch,
        out_ch,
        3,
        # The first conv is "valid" (32 -> 30), the rest keep their size.
        padding=0 if first else "same",
        input_quantizer=None if first else "ste_sign",
    )


@register_model("binarynet")
def binarynet(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    # Named layers, so per-layer metrics read "flip_ratio/conv3", not "flip_ratio/7".
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", _conv(channels, 128, first=True)),
        ("bn1", CenterBatchNorm2d(128)),
        ("conv2", _conv(128, 128)),
        ("pool2", nn.MaxPool2d(2)),
        ("bn2", CenterBatchNorm2d(128)),
    ]
    in_ch = 128
    for index, out_ch in ((3, 256), (5, 512)):
        layers += [
            (f"conv{index}", _conv(in_ch, out_ch)),
            (f"bn{index}", CenterBatchNorm2d(out_ch)),
            (f"conv{index + 1}", _conv(out_ch, out_ch)),
            (f"pool{index + 1}", nn.MaxPool2d(2)),
            (f"bn{index + 1}", CenterBatchNorm2d(out_ch)),
        ]
        in_ch = out_ch
    # Spatial size after the valid conv and three 2x2 pools (floor), e.g. 32 -> 3.
    side_h, side_w = height - 2, width - 2
    for _ in range(3):
        side_h, side_w = side_h // 2, side_w // 2
    layers += [
        ("flatten", nn.Flatten()),
        ("dense1", QuantLinear(in_ch * side_h * side_w, 1024)),
        ("bn7", CenterBatchNorm1d(1024)),
        ("dense2", QuantLinear(1024, 1024)),
        ("bn8", CenterBatchNorm1d(1024)),
        ("dense3", QuantLinear(1024, num_classes)),
        ("bn9", CenterBatchNorm1d(num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))
