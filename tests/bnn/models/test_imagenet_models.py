"""The ImageNet models of section 5.3: Binary AlexNet, XNOR-Net and Bi-Real Net-18.

Parameter counts are worked out here from the architectures (layer by layer, as the
paper's code defines them), not read from the models, and tied to the published
Larq zoo summaries, which count BatchNorm's moving statistics as parameters and,
for AlexNet and XNOR-Net, build BatchNorm without its scale.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bopsweep.bnn.layers import QuantConv2d, QuantLinear, binary_layers, binary_parameters
from bopsweep.bnn.models import build_model, canonical_model_name
from bopsweep.errors import UserError

IMAGENET = (3, 224, 224)
CLASSES = 1000


def _conv(in_ch: int, out_ch: int, kernel: int) -> int:
    return kernel * kernel * in_ch * out_ch


# ------------------------------------------------------------ independent counts
def _alexnet_counts() -> dict[str, int]:
    convs = [(3, 64, 11), (64, 192, 5), (192, 384, 3), (384, 384, 3), (384, 256, 3)]
    # 224 -> conv1/4 -> 56 -> pool 27 -> pool 13 -> pool 6: 256 * 6 * 6 features.
    dense = [(256 * 6 * 6, 4096), (4096, 4096), (4096, CLASSES)]
    binary = sum(_conv(*c) for c in convs) + sum(i * o for i, o in dense)
    bn_channels = [out for _, out, _ in convs] + [out for _, out in dense]
    return {"binary": binary, "fp": 0, "bn_channels": sum(bn_channels)}


def _xnornet_counts() -> dict[str, int]:
    binary_convs = [
        (96, 256, 5),
        (256, 384, 3),
        (384, 384, 3),
        (384, 256, 3),
        (256, 4096, 6),  # fc6: 6x6 valid on the 6x6 map
        (4096, 4096, 1),  # fc7
    ]
    binary = sum(_conv(*c) for c in binary_convs)
    fp = _conv(3, 96, 11) + 4096 * CLASSES  # conv1 and fc8, no biases
    bn_channels = [96, 96, 256, 384, 384, 256, 4096, 4096]
    return {"binary": binary, "fp": fp, "bn_channels": sum(bn_channels)}


def _birealnet_counts() -> dict[str, int]:
    binary = fp = bn = 0
    fp += _conv(3, 64, 7)
    bn += 64
    in_ch = 64
    for out_ch in (64, 128, 256, 512):
        for _ in range(4):
            binary += _conv(in_ch, out_ch, 3)
            bn += out_ch
            if in_ch != out_ch:
                fp += _conv(in_ch, out_ch, 1)  # the shortcut's 1x1 conv
                bn += out_ch
            in_ch = out_ch
    fp += 512 * CLASSES + CLASSES  # dense with bias
    return {"binary": binary, "fp": fp, "bn_channels": bn}


COUNTS = {
    "binary_alexnet": _alexnet_counts(),
    "xnornet": _xnornet_counts(),
    "birealnet": _birealnet_counts(),
}

# Larq zoo's published totals (model summaries / docs), BatchNorm statistics included.
LARQ_ZOO_TOTAL = {"binary_alexnet": 61_859_192, "xnornet": 62_396_768, "birealnet": 11_699_112}
# Larq zoo's AlexNet and XNOR-Net drop the BatchNorm scale that the paper's code keeps.
LARQ_ZOO_BN_SCALE = {"binary_alexnet": False, "xnornet": False, "birealnet": True}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name, IMAGENET, CLASSES) for name in COUNTS}


def _numel(params) -> int:
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("name", list(COUNTS))
def test_forward_backward(models, name):
    model = models[name]
    x = torch.randn(2, *IMAGENET)
    labels = torch.tensor([3, 999])
    for mode in ("train", "eval"):
        model.train(mode == "train")
        logits = model(x)
        assert logits.shape == (2, CLASSES)
        assert torch.isfinite(logits).all()
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        for param_name, param in model.named_parameters():
            assert param.grad is not None, param_name
            assert torch.isfinite(param.grad).all(), param_name
            # A training-mode BatchNorm over a batch of two passes back nothing (its
            # two normalised values are about +-1 whatever the input); in eval mode every
            # parameter must be reached.
            if mode == "eval":
                assert param.grad.abs().sum() > 0, f"{param_name} got no gradient"
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts(models, name):
    model, expected = models[name], COUNTS[name]
    binary = _numel(binary_parameters(model))
    total = _numel(model.parameters())
    # BatchNorm with scale and shift: two trainable values per channel.
    expected_fp = expected["fp"] + 2 * expected["bn_channels"]
    assert binary == expected["binary"]
    assert total - binary == expected_fp
    assert total == expected["binary"] + expected_fp

    # Keras counts the moving mean and variance too (two per channel).
    statistics = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    assert statistics == 2 * expected["bn_channels"]
    keras_total = total + statistics
    if not LARQ_ZOO_BN_SCALE[name]:
        keras_total -= expected["bn_channels"]
    assert keras_total == LARQ_ZOO_TOTAL[name]


def test_published_binary_counts(models):
    # The 1-bit column of Larq zoo's summaries.
    assert _numel(binary_parameters(models["binary_alexnet"])) == 61_827_776
    assert _numel(binary_parameters(models["birealnet"])) == 10_985_472


def test_binary_alexnet_every_kernel_binary_first_input_real(models):
    model = models["binary_alexnet"]
    layers = dict(binary_layers(model))
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert list(layers) == names
    assert [layers[n].input_quantizer for n in names] == [None] + ["ste_sign"] * 7
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(
        m, (QuantConv2d, QuantLinear)) for m in model.modules())  # fmt: skip
    for module in model.modules():
        if isinstance(module, (QuantConv2d, QuantLinear)):
            assert module.bias is None
            assert torch.all(module.weight.abs() == 1.0)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.momentum == pytest.approx(0.1) and module.eps == 1e-3
            assert module.weight is not None and module.bias is not None
    assert model.fc6.weight.shape == (4096, 256 * 6 * 6)
    assert canonical_model_name("alexnet") == "binary_alexnet"


def test_xnornet_first_and_last_full_precision(models):
    model = models["xnornet"]
    assert list(dict(binary_layers(model))) == [
        "conv2",
        "conv3",
        "conv4",
        "conv5",
        "fc6",
        "fc7",
    ]
    assert type(model.conv1) is nn.Conv2d and model.conv1.bias is None
    assert type(model.fc8) is nn.Linear and model.fc8.bias is None
    assert model.conv1.weight.shape == (96, 3, 11, 11)
    assert all(layer.input_quantizer == "ste_sign" for _, layer in binary_layers(model))
    assert [model.bn1.eps, model.bn2.eps, model.bn8.eps] == [1e-5, 1e-4, 1e-3]
    # Glorot-uniform: every value within sqrt(6 / (fan_in + fan_out)).
    limit = (6 / (3 * 121 + 96 * 121)) ** 0.5
    assert model.conv1.weight.abs().max() <= limit


def test_birealnet_shortcuts_and_ends_full_precision(models):
    model = models["birealnet"]
    layers = dict(binary_layers(model))
    assert len(layers) == 16
    assert list(layers)[:2] == ["stage1.0.conv", "stage1.1.conv"]
    assert all(layer.input_quantizer == "approx_sign" for layer in layers.values())
    assert all(layer.weight.shape[-2:] == (3, 3) for layer in layers.values())
    assert type(model.conv1) is nn.Conv2d and model.conv1.weight.shape == (64, 3, 7, 7)
    assert type(model.fc) is nn.Linear and model.fc.bias is not None
    shortcut_convs = [m for n, m in model.named_modules() if n.endswith("shortcut.conv")]
    assert [tuple(c.weight.shape[:2]) for c in shortcut_convs] == [
        (128, 64),
        (256, 128),
        (512, 256),
    ]
    assert all(type(c) is nn.Conv2d for c in shortcut_convs)
    for stage in (model.stage2, model.stage3, model.stage4):
        assert isinstance(stage[0].shortcut, nn.Sequential)
    assert isinstance(model.stage1[0].shortcut, nn.Identity)


def test_birealnet_block_adds_the_real_shortcut():
    torch.manual_seed(0)
    model = build_model("birealnet", (3, 64, 64), 10).eval()
    block = model.stage2[0]
    x = torch.randn(2, 64, 16, 16)
    expected = block.bn(block.conv(x)) + block.shortcut.bn(
        block.shortcut.conv(torch.nn.functional.avg_pool2d(x, 2))
    )
    assert torch.equal(block(x), expected)


@pytest.mark.parametrize("name", ["binary_alexnet", "xnornet"])
def test_too_small_images_are_a_clear_error(name):
    with pytest.raises(UserError, match=rf"{name} needs images of at least \d+x\d+"):
        build_model(name, (3, 32, 32), 10)
