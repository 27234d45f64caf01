"""Bi-Real Net-18 for ImageNet, as the paper's code defines it (section 5.3, 56.6% top-1).

Liu et al. 2018: a ResNet-18 whose 16 inner 3x3 convolutions are binary (inputs
binarized with ``approx_sign``, kernels +-1 and trained by Bop), each wrapped by its
own real-valued shortcut, so every block is ``BN(conv(sign(x))) + shortcut(x)``.
Where a block halves the resolution and doubles the channels, the shortcut is a
2x2/2 average pool, a full-precision 1x1 conv and a BatchNorm. The stem (7x7/2
conv, BatchNorm, 3x3/2 max-pool) and the classifier (global average pool, dense
layer with bias) are full precision. No ReLU anywhere: the next block's sign is the
non-linearity. BatchNorm with scale and shift, Keras momentum 0.8, eps 1e-3; the
full-precision kernels start Glorot-normal, as in the original code.

Larq zoo's ``BiRealNet`` has the same layers, trained with latent weights and a
magnitude-aware sign on the kernels; with Bop the kernels are plain +-1.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from bopsweep.bnn.layers import QuantConv2d
from bopsweep.bnn.models import register_model
from bopsweep.bnn.models._common import batch_norm, glorot_normal_, keras_conv2d, keras_linear

STEM_CHANNELS = 64
BLOCKS_PER_STAGE = 4
STAGES = 4
BN_MOMENTUM = 0.8


def _bn(channels: int) -> nn.BatchNorm2d:
    return batch_norm(channels, BN_MOMENTUM)


class BiRealBlock(nn.Module):
    """One binary 3x3 convolution with its real-valued shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        downsample = in_channels != out_channels
        self.conv = QuantConv2d(
            in_channels,
            out_channels,
            3,
            2 if downsample else 1,
            1,
            input_quantizer="approx_sign",
        )
        self.bn = _bn(out_channels)
        if downsample:
            # ceil_mode averages a trailing odd row over what is there, as Keras'
            # "same" pooling does; at 224x224 every map is even and it changes nothing.
            self.shortcut: nn.Module = nn.Sequential(
                OrderedDict(
                    pool=nn.AvgPool2d(2, 2, ceil_mode=True),
                    conv=keras_conv2d(in_channels, out_channels, 1, init=glorot_normal_),
                    bn=_bn(out_channels),
                )
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)


@register_model("birealnet")
def birealnet(
    input_shape: tuple[int, ...], num_classes: int, *, filters: int = STEM_CHANNELS
) -> nn.Module:
    """``filters``: the stem's channels (the original's ``filters``), doubled per stage."""
    channels = input_shape[0]
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", keras_conv2d(channels, filters, 7, 2, 3, init=glorot_normal_)),
        ("bn1", _bn(filters)),
        ("pool1", nn.MaxPool2d(3, 2, padding=1)),
    ]
    in_ch = filters
    for stage in range(1, STAGES + 1):
        out_ch = filters * 2 ** (stage - 1)
        # Named stageN.K, so per-layer metrics read "flip_ratio/stage3.0.conv".
        blocks = []
        for _ in range(BLOCKS_PER_STAGE):
            blocks.append(BiRealBlock(in_ch, out_ch))
            in_ch = out_ch
        layers.append((f"stage{stage}", nn.Sequential(*blocks)))
    layers += [
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", keras_linear(in_ch, num_classes, bias=True)),
    ]
    return nn.Sequential(OrderedDict(layers))
