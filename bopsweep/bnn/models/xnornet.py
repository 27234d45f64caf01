"""XNOR-Net for ImageNet, as the paper's code defines it (section 5.3, 45.9% top-1).

An AlexNet-shaped network (Rastegari et al. 2016). The first 11x11 conv and the
last dense layer are full precision (Glorot-uniform, no bias; the hparams sets put
the paper's L2 on them as ``weight_decay``); a ReLU follows the first and precedes
the last, the only real-valued activations. The four convolutions in between and
the two "fully connected" layers written as convolutions (6x6 valid, then 1x1) have
binary kernels and binarize their inputs with ``ste_sign``. A BatchNorm with scale
and shift sits before each binarized input and before the last ReLU (Keras momentum
0.9; eps as in the original code: 1e-5 after the first conv, 1e-3 before the last
ReLU, 1e-4 elsewhere).

No scaling factors: the paper trains the +-1 kernels directly with Bop, and every
binary conv feeds a BatchNorm that would absorb a per-channel scale anyway. Larq
zoo's ``XNORNet`` (latent weights) scales each filter by its mean absolute value
and drops the BatchNorm scale; the layer shapes are the same.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from bopsweep.bnn.layers import QuantConv2d
from bopsweep.bnn.models import register_model
from bopsweep.bnn.models._common import (
    batch_norm,
    check_side,
    keras_conv2d,
    keras_linear,
    output_size,
)

BN_MOMENTUM = 0.9
BN_EPS = 1e-4


def _feature_side(side: int) -> int:
    side = output_size(side, 11, 4, 4)  # conv1
    for _ in range(3):  # pool1, pool2, pool5 (the convs between keep the size)
        side = output_size(side, 3, 2)
    return output_size(side, 6)  # fc6, a 6x6 valid convolution


@register_model("xnornet")
def xnornet(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    side_h, side_w = _feature_side(height), _feature_side(width)
    minimum = next(side for side in range(1, 1024) if _feature_side(side) >= 1)
    check_side("xnornet", min(side_h, side_w), input_shape, minimum)

    def bn(features: int, eps: float = BN_EPS) -> nn.BatchNorm2d:
        return batch_norm(features, BN_MOMENTUM, eps)

    layers = OrderedDict(
        conv1=keras_conv2d(channels, 96, 11, 4, 4),
        bn1=bn(96, 1e-5),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(3, 2),
        bn2=bn(96),
        conv2=QuantConv2d(96, 256, 5, padding=2),
        pool2=nn.MaxPool2d(3, 2),
        bn3=bn(256),
        conv3=QuantConv2d(256, 384, 3, padding=1),
        bn4=bn(384),
        conv4=QuantConv2d(384, 384, 3, padding=1),
        bn5=bn(384),
        conv5=QuantConv2d(384, 256, 3, padding=1),
        pool5=nn.MaxPool2d(3, 2),
        bn6=bn(256),
        fc6=QuantConv2d(256, 4096, 6),
        bn7=bn(4096),
        fc7=QuantConv2d(4096, 4096, 1),
        bn8=bn(4096, 1e-3),
        relu8=nn.ReLU(),
        flatten=nn.Flatten(),
        fc8=keras_linear(4096 * side_h * side_w, num_classes, bias=False),
    )
    return nn.Sequential(layers)
