"""A small binarized MLP for 8x8 digits and 28x28 MNIST: the model that makes a
whole 3x3 sweep take minutes on a laptop CPU while showing the same flip trends.

Flatten - QDense(hidden, real input) - BN - QDense(hidden) - BN - QDense(classes) - BN,
every kernel binary, BinaryNet's conventions otherwise.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from bopsweep.bnn.layers import CenterBatchNorm1d, QuantLinear
from bopsweep.bnn.models import register_model

HIDDEN_UNITS = 256


@register_model("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    in_features = math.prod(input_shape)
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            dense1=QuantLinear(in_features, HIDDEN_UNITS, input_quantizer=None),
            bn1=CenterBatchNorm1d(HIDDEN_UNITS),
            dense2=QuantLinear(HIDDEN_UNITS, HIDDEN_UNITS),
            bn2=CenterBatchNorm1d(HIDDEN_UNITS),
            dense3=QuantLinear(HIDDEN_UNITS, num_classes),
            bn3=CenterBatchNorm1d(num_classes),
        )
    )
