"""Binary AlexNet for ImageNet, as the paper's code defines it (section 5.3, 41.1% top-1).

Every conv and dense kernel, the first 11x11 conv and the last dense included, is
binary and trained by Bop; the first conv sees the real image, every later layer
binarizes its input with ``ste_sign``. No biases. Each conv is followed by an
optional 3x3/2 max-pool and a BatchNorm with scale and shift (Keras momentum 0.9,
eps 1e-3); each dense layer by the same BatchNorm. The original code's name is
``alexnet``, kept as an alias.

Larq zoo's ``BinaryAlexNet`` has the same layers but BatchNorm without scale and
latent-weight kernels (``ste_sign`` + weight clip); here the scale stays, as in the
code the paper's numbers come from.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from bopsweep.bnn.layers import QuantConv2d, QuantLinear
from bopsweep.bnn.models import register_model
from bopsweep.bnn.models._common import batch_norm, check_side, output_size

# (name, out_channels, kernel, stride, padding, max-pool after it)
CONVS = (
    ("conv1", 64, 11, 4, 4, True),
    ("conv2", 192, 5, 1, 2, True),
    ("conv3", 384, 3, 1, 1, False),
    ("conv4", 384, 3, 1, 1, False),
    ("conv5", 256, 3, 1, 1, True),
)
DENSE_UNITS = (4096, 4096)
BN_MOMENTUM = 0.9


def _feature_side(side: int) -> int:
    for _, _, kernel, stride, padding, pool in CONVS:
        side = output_size(side, kernel, stride, padding)
        if pool:
            side = output_size(side, 3, 2)
    return side


@register_model("binary_alexnet", "alexnet")
def binary_alexnet(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    feature_h, feature_w = _feature_side(height), _feature_side(width)
    minimum = next(side for side in range(1, 1024) if _feature_side(side) >= 1)
    check_side("binary_alexnet", min(feature_h, feature_w), input_shape, minimum)

    layers: list[tuple[str, nn.Module]] = []
    in_ch = channels
    for index, (name, out_ch, kernel, stride, padding, pool) in enumerate(CONVS, start=1):
        layers.append(
            (
                name,
                QuantConv2d(
                    in_ch,
                    out_ch,
                    kernel,
                    stride,
                    padding,
                    input_quantizer=None if index == 1 else "ste_sign",
                ),
            )
        )
        if pool:
            layers.append((f"pool{index}", nn.MaxPool2d(3, 2)))
        layers.append((f"bn{index}", batch_norm(out_ch, BN_MOMENTUM)))
        in_ch = out_ch

    layers.append(("flatten", nn.Flatten()))
    in_features = in_ch * feature_h * feature_w
    # The classic names: fc6 and fc7 are the 4096-unit layers, fc8 the classifier.
    for index, units in enumerate((*DENSE_UNITS, num_classes), start=6):
        layers += [
            (f"fc{index}", QuantLinear(in_features, units)),
            (f"bn{index}", batch_norm(units, BN_MOMENTUM, dims=1)),
        ]
        in_features = units
    return nn.Sequential(OrderedDict(layers))
