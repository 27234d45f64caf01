"""Binarized layers: the binary marker, input/kernel quantizers, latent weights and
BatchNorm without scale."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bopsweep.bnn.layers import (
    CenterBatchNorm1d,
    CenterBatchNorm2d,
    QuantConv2d,
    QuantLinear,
    binary_layers,
    binary_parameters,
    use_latent_weights,
)
from bopsweep.bnn.quantizers import sign

pytestmark = pytest.mark.usefixtures("one_thread")


def _is_binary(t: torch.Tensor) -> bool:
    return bool(torch.all(t.abs() == 1.0))


def test_binary_kernels_start_at_plus_minus_one():
    torch.manual_seed(0)
    dense = QuantLinear(40, 30)
    conv = QuantConv2d(4, 8, 3)
    for layer in (dense, conv):
        assert _is_binary(layer.weight)
        # Both signs occur: the init is random, not a constant.
        assert (layer.weight > 0).any() and (layer.weight < 0).any()
        assert layer.bias is None


def test_full_precision_layer_is_not_marked_and_keeps_real_init():
    torch.manual_seed(0)
    dense = QuantLinear(40, 30, binary_kernel=False, input_quantizer=None)
    assert not _is_binary(dense.weight)
    assert binary_parameters(nn.Sequential(dense)) == []


def test_binary_parameters_follow_the_marker_not_the_name():
    model = nn.Sequential(
        OrderedDict(
            binary_looking=nn.Linear(4, 4),
            fc=QuantLinear(4, 4),
            conv=QuantConv2d(1, 2, 3),
            fp_quant=QuantLinear(4, 4, binary_kernel=False),
        )
    )
    assert [name for name, _ in binary_layers(model)] == ["fc", "conv"]
    params = binary_parameters(model)
    assert len(params) == 2
    assert params[0] is model.fc.weight
    assert params[1] is model.conv.weight


def test_quant_linear_binarizes_its_input():
    torch.manual_seed(0)
    layer = QuantLinear(6, 3)
    x = torch.randn(5, 6)
    assert torch.equal(layer(x), F.linear(sign(x), layer.weight))
    assert not torch.equal(layer(x), F.linear(x, layer.weight))


def test_quant_linear_without_input_quantizer_sees_real_input():
    torch.manual_seed(0)
    layer = QuantLinear(6, 3, input_quantizer=None)
    x = torch.randn(5, 6)
    assert torch.equal(layer(x), F.linear(x, layer.weight))


@pytest.mark.parametrize("padding", [0, 1, "same"])
def test_quant_conv_binarizes_its_input(padding):
    torch.manual_seed(0)
    layer = QuantConv2d(3, 4, 3, padding=padding)
    x = torch.randn(2, 3, 7, 7)
    expected = F.conv2d(sign(x), layer.weight, padding=padding)
    assert torch.equal(layer(x), expected)


def test_quant_conv_first_layer_sees_real_input():
    torch.manual_seed(0)
    layer = QuantConv2d(3, 4, 3, input_quantizer=None)
    x = torch.randn(2, 3, 7, 7)
    assert torch.equal(layer(x), F.conv2d(x, layer.weight))


def test_input_gradient_is_straight_through():
    layer = QuantLinear(3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 1.0]]))
    x = torch.tensor([[0.5, -2.0, 1.0]], requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0, 1.0]]


def test_use_latent_weights_switches_to_ste_sign_kernels():
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(conv=QuantConv2d(3, 16, 3), fc=QuantLinear(64, 32), head=nn.Linear(32, 2))
    )
    head_before = model.head.weight.detach().clone()
    use_latent_weights(model)
    # Glorot-uniform limits, computed here from the shapes.
    limits = {"conv": math.sqrt(6 / (3 * 9 + 16 * 9)), "fc": math.sqrt(6 / (64 + 32))}
    for name, layer in binary_layers(model):
        assert layer.kernel_quantizer == "ste_sign"
        assert layer.weight.abs().max() <= limits[name]
        assert layer.weight.abs().max() > 0.5 * limits[name]
        assert not _is_binary(layer.weight)
    assert torch.equal(model.head.weight, head_before)

    x = torch.randn(4, 64)
    assert torch.equal(model.fc(x), F.linear(sign(x), sign(model.fc.weight)))


def test_latent_kernel_gradient_is_straight_through():
    layer = QuantLinear(3, 1, input_quantizer=None, kernel_quantizer="ste_sign")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.5, 1.0]]))
    layer(torch.tensor([[2.0, 3.0, 4.0]])).sum().backward()
    assert layer.weight.grad.tolist() == [[2.0, 0.0, 4.0]]


@pytest.mark.parametrize(
    ("cls", "shape"), [(CenterBatchNorm1d, (8, 5)), (CenterBatchNorm2d, (8, 5, 3, 3))]
)
def test_center_batchnorm_has_beta_but_no_gamma(cls, shape):
    bn = cls(5)
    # The scale is a fixed 1: not a parameter, not in the state dict.
    assert torch.equal(bn.weight, torch.ones(5)) and not bn.weight.requires_grad
    assert [name for name, _ in bn.named_parameters()] == ["bias"]
    assert "weight" not in bn.state_dict()
    assert bn.momentum == pytest.approx(0.01)  # Keras momentum 0.99
    assert bn.eps == pytest.approx(1e-3)
    with torch.no_grad():
        bn.bias.copy_(torch.arange(5.0))
    x = torch.randn(*shape) * 3 + 2
    out = bn(x)
    dims = [0, *range(2, len(shape))]
    view = [1, 5, *[1] * (len(shape) - 2)]
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-3) + torch.arange(5.0).view(view)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
