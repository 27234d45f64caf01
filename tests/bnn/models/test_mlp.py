"""The binarized MLP used for quick sweeps on digits and MNIST."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from bopsweep.bnn.layers import CenterBatchNorm1d, QuantLinear, binary_layers
from bopsweep.bnn.models import build_model, model_names
from bopsweep.bnn.models.mlp import HIDDEN_UNITS
from bopsweep.bnn.quantizers import sign

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 4, 5)])
def test_shapes(shape):
    torch.manual_seed(0)
    model = build_model("mlp", shape, 7)
    assert model(torch.randn(4, *shape)).shape == (4, 7)
    layers = dict(binary_layers(model))
    assert list(layers) == ["dense1", "dense2", "dense3"]
    assert [tuple(layer.weight.shape) for layer in layers.values()] == [
        (HIDDEN_UNITS, math.prod(shape)),
        (HIDDEN_UNITS, HIDDEN_UNITS),
        (7, HIDDEN_UNITS),
    ]


def test_every_kernel_binary_no_bias_first_input_real():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    quant = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(quant) == 3
    assert [m.input_quantizer for m in quant] == [None, "ste_sign", "ste_sign"]
    for m in quant:
        assert m.binary_kernel and m.bias is None
        assert torch.all(m.weight.abs() == 1.0)
    bns = [m for m in model.modules() if isinstance(m, CenterBatchNorm1d)]
    assert len(bns) == 3
    assert all("weight" not in dict(bn.named_parameters()) for bn in bns)
    names = [name for name, _ in model.named_parameters()]
    assert names == [
        "dense1.weight",
        "bn1.bias",
        "dense2.weight",
        "bn2.bias",
        "dense3.weight",
        "bn3.bias",
    ]


def test_forward_is_sign_between_layers():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10).eval()
    x = torch.randn(5, 1, 8, 8)
    h = model.bn1(F.linear(x.flatten(1), model.dense1.weight))
    h = model.bn2(F.linear(sign(h), model.dense2.weight))
    expected = model.bn3(F.linear(sign(h), model.dense3.weight))
    assert torch.equal(model(x), expected)


def test_registry():
    assert {"mlp", "binarynet"} <= set(model_names())
