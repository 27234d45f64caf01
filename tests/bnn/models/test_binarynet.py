"""BinaryNet for CIFAR-10: the architecture of the paper's code, checked layer by layer."""

from __future__ import annotations

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
)
from bopsweep.bnn.models import build_model
from bopsweep.bnn.quantizers import sign
from bopsweep.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

# The architecture as paper.md lists it: (kind, output width), kernel size 3.
ARCHITECTURE = [
    ("conv", 128),
    ("conv", 128),
    ("conv", 256),
    ("conv", 256),
    ("conv", 512),
    ("conv", 512),
    ("dense", 1024),
    ("dense", 1024),
    ("dense", 10),
]


def _expected_counts(channels=3, side=32, kernel=3) -> tuple[int, int]:
    """Binary kernel weights and BatchNorm betas, from the architecture alone."""
    binary = betas = 0
    in_features = channels
    # valid 3x3 conv: 32 -> 30; then three 2x2 max pools: 30 -> 15 -> 7 -> 3
    flat_side = side - (kernel - 1)
    for _ in range(3):
        flat_side //= 2
    first_dense = True
    for kind, width in ARCHITECTURE:
        if kind == "conv":
            binary += in_features * width * kernel * kernel
        else:
            if first_dense:
                in_features *= flat_side * flat_side
                first_dense = False
            binary += in_features * width
        betas += width  # one BatchNorm (beta only) after every layer
        in_features = width
    return binary, betas


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("binarynet", (3, 32, 32), 10)


def test_expected_counts_match_the_paper():
    assert _expected_counts() == (10_352_000, 3_850)


def test_parameter_count(model):
    binary, betas = _expected_counts()
    kernels = sum(layer.weight.numel() for _, layer in binary_layers(model))
    bn_betas = sum(
        m.bias.numel()
        for m in model.modules()
        if isinstance(m, CenterBatchNorm1d | CenterBatchNorm2d)
    )
    assert kernels == binary
    assert bn_betas == betas
    assert sum(p.numel() for p in model.parameters()) == binary + betas


def test_forward_shape(model):
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert model(x).shape == (2, 10)
    model.eval()
    assert model(x).shape == (2, 10)


def test_no_biases_and_batchnorm_without_scale(model):
    for name, _ in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if name.endswith(".bias"):
            assert isinstance(module, CenterBatchNorm1d | CenterBatchNorm2d), name
        else:
            assert name.endswith(".weight")
            assert isinstance(module, QuantConv2d | QuantLinear), name
    for module in model.modules():
        if isinstance(module, QuantConv2d | QuantLinear):
            assert module.bias is None
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            assert "weight" not in dict(module.named_parameters())
            assert module.momentum == pytest.approx(0.01)
            assert module.eps == pytest.approx(1e-3)


def test_all_nine_kernels_are_binary(model):
    layers = list(binary_layers(model))
    assert len(layers) == 9
    quant = [m for m in model.modules() if isinstance(m, QuantConv2d | QuantLinear)]
    assert len(quant) == 9
    for _, layer in layers:
        assert layer.kernel_quantizer is None  # Bop: the kernel is +-1 as it is
        assert torch.all(layer.weight.abs() == 1.0)
    widths = [layer.weight.shape[0] for _, layer in layers]
    assert widths == [width for _, width in ARCHITECTURE]
    kernels = [tuple(layer.weight.shape[2:]) for _, layer in layers[:6]]
    assert kernels == [(3, 3)] * 6


def test_only_the_first_layer_sees_a_real_input(model):
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    layers = dict(binary_layers(model))

    def hook(name):
        def record(module, args, output):
            inputs[name] = args[0].detach()
            outputs[name] = output.detach()

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        model.eval()
        model(torch.randn(2, 3, 32, 32) * 2)
    finally:
        for handle in handles:
            handle.remove()
    first = next(iter(layers))
    for name, layer in layers.items():
        x = inputs[name]
        if name == first:
            assert layer.input_quantizer is None
            assert x.abs().max() > 1  # a real input reaches it unchanged...
            expected = F.conv2d(x, layer.weight)  # ...through a valid conv
        else:
            assert layer.input_quantizer == "ste_sign"
            # The layer's input is real (BatchNorm / pool output); it binarizes it.
            assert not torch.all(x.abs() == 1.0)
            if isinstance(layer, QuantConv2d):
                expected = F.conv2d(sign(x), layer.weight, padding=1)
            else:
                expected = F.linear(sign(x), layer.weight)
        assert torch.equal(outputs[name], expected), name


def test_spatial_sizes(model):
    sizes = []
    handles = [
        m.register_forward_hook(lambda m, a, out: sizes.append(tuple(out.shape[1:])))
        for m in model.modules()
        if isinstance(m, nn.MaxPool2d | QuantConv2d)
    ]
    try:
        model.eval()
        model(torch.randn(1, 3, 32, 32))
    finally:
        for handle in handles:
            handle.remove()
    assert sizes == [
        (128, 30, 30),
        (128, 30, 30),
        (128, 15, 15),
        (256, 15, 15),
        (256, 15, 15),
        (256, 7, 7),
        (512, 7, 7),
        (512, 7, 7),
        (512, 3, 3),
    ]


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match=r"unknown model 'resnet'; choose from: .*binarynet"):
        build_model("resnet", (3, 32, 32), 10)
