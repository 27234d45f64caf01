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
def mlp(
    input_shape: tuple[int, ...], num_classes: int, *, dense_units: int = HIDDEN_UNITS
) -> nn.Module:
    """``dense_units``: the width of both hidden layers."""
    in_features = math.prod(input_shape)
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            dense1=QuantLinear(in_features, dense_units, input_quantizer=None),
            bn1=CenterBatchNorm1d(dense_units),
            dense2=QuantLinear(dense_units, dense_units),
            bn2=CenterBatchNorm1d(dense_units),
            dense3=QuantLinear(dense_units, num_classes),
            bn3=CenterBatchNorm1d(num_classes),
        )
    )
