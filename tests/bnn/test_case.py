"""The routing of binary and full-precision parameters: CaseOptimizer's claims, its
state dict, learning-rate schedules, and the latent-weight baseline it steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bopsweep.bnn.case import CaseOptimizer
from bopsweep.bnn.layers import binary_parameters
from bopsweep.bnn.models import build_model
from bopsweep.bnn.optim import Bop, Bop2ndOrder, Bop2ndOrderUnbiased
from bopsweep.bnn.schedules import Schedule
from bopsweep.hparams import HParams
from bopsweep.train import build_optimizer
from tests.bnn.test_optim import (
    _assert_same_state,
    _batches,
    _flip_totals,
    _param,
    _round_trip,
    _small_bnn,
    _train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _groups(optimizer) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def _make_case(model, latent: bool = False) -> CaseOptimizer:
    binary = binary_parameters(model)
    others = [model.bn1.bias, model.bn2.bias]
    lr = Schedule("linear", 0.05, end=0.01, steps=5)
    if latent:
        bin_opt = torch.optim.Adam(binary, lr=lr(0))
    else:
        bin_opt = Bop(
            binary, threshold=1e-4, gamma=Schedule("exponential", 0.2, steps=2, factor=0.5)
        )
    return CaseOptimizer(
        model, bin_opt, torch.optim.Adam(others, lr=lr(0)), lr_schedule=lr, clip_binary=latent
    )


@pytest.mark.parametrize("latent", [False, True])
def test_case_optimizer_state_dict_round_trip_continues_identically(latent):
    batches = _batches(6)
    model = _small_bnn(0)
    opt = _make_case(model, latent)
    _train(model, opt, batches)

    first = _small_bnn(0)
    first_opt = _make_case(first, latent)
    _train(first, first_opt, batches[:3])
    saved = _round_trip({"model": first.state_dict(), "optimizer": first_opt.state_dict()})
    resumed = _small_bnn(123)
    resumed_opt = _make_case(resumed, latent)
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["optimizer"])
    assert resumed_opt.step_count == 3
    assert resumed_opt.current_lr() == pytest.approx(0.05 - 3 * 0.008)
    _train(resumed, resumed_opt, batches[3:])

    for (name, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
    for (name, b), c in zip(model.named_buffers(), resumed.buffers(), strict=True):
        assert torch.equal(b, c), name
    for inner, resumed_inner in zip(opt.optimizers, resumed_opt.optimizers, strict=True):
        # Hyperparameters, schedules and step counters of every group.
        assert _groups(inner) == _groups(resumed_inner)
        own = [p for g in inner.param_groups for p in g["params"]]
        other = [p for g in resumed_inner.param_groups for p in g["params"]]
        for p, q in zip(own, other, strict=True):
            _assert_same_state(inner.state[p], resumed_inner.state[q])
    assert not torch.equal(first.bn1.bias, resumed.bn1.bias)


# ---------------------------------------------------------------------- routing
def _routing_model() -> nn.Module:
    return _small_bnn(0)


def test_case_optimizer_rejects_a_parameter_claimed_by_both():
    model = _routing_model()
    binary = binary_parameters(model)
    with pytest.raises(ValueError, match=r"'dense1.weight' is claimed by both optimizers"):
        CaseOptimizer(model, Bop(binary), torch.optim.Adam(list(model.parameters())))


def test_case_optimizer_rejects_a_parameter_claimed_by_none():
    model = _routing_model()
    with pytest.raises(ValueError, match=r"'bn2.bias' is claimed by no optimizer"):
        CaseOptimizer(model, Bop(binary_parameters(model)), torch.optim.Adam([model.bn1.bias]))


def test_case_optimizer_ignores_frozen_parameters():
    model = _routing_model()
    model.bn1.bias.requires_grad_(False)
    model.bn2.bias.requires_grad_(False)
    CaseOptimizer(model, Bop(binary_parameters(model)), None)


def test_case_optimizer_applies_the_lr_schedule_to_fp_params():
    model = _routing_model()
    opt = _make_case(model)
    lrs = []
    for x, y in _batches(6):
        lrs.append(opt.current_lr())
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        assert opt.fp.param_groups[0]["lr"] == lrs[-1]
    assert lrs == pytest.approx([0.05, 0.042, 0.034, 0.026, 0.018, 0.01])


@pytest.mark.parametrize("optimizer", ["bop", "bop2", "bop2_unbiased"])
def test_build_optimizer_routes_binary_kernels_to_bop(optimizer):
    model = build_model("mlp", (1, 8, 8), 10)
    hp = HParams(optimizer=optimizer, threshold=1e-6, gamma=1e-3, sigma=0.05)
    opt = build_optimizer(model, hp, steps_per_epoch=10)
    classes = {"bop": Bop, "bop2": Bop2ndOrder, "bop2_unbiased": Bop2ndOrderUnbiased}
    assert type(opt.binary) is classes[optimizer]
    binary = {id(p) for p in binary_parameters(model)}
    assert {id(p) for p in opt.binary.param_groups[0]["params"]} == binary
    fp = {id(p) for g in opt.fp.param_groups for p in g["params"]}
    assert fp == {id(p) for p in model.parameters()} - binary
    assert isinstance(opt.fp, torch.optim.Adam)
    assert opt.binary.current("gamma") == 1e-3
    assert opt.binary.current("threshold") == 1e-6
    if optimizer != "bop":
        assert opt.binary.param_groups[0]["sigma"]["start"] == 0.05
    assert not opt.clip_binary


def test_latent_baseline_clips_ste_sign_kernels():
    from bopsweep.bnn.layers import binary_layers, use_latent_weights

    torch.manual_seed(0)
    model = use_latent_weights(build_model("mlp", (1, 8, 8), 10))
    opt = build_optimizer(model, HParams(optimizer="latent", lr=0.5), steps_per_epoch=10)
    assert not isinstance(opt.binary, Bop)
    assert opt.clip_binary
    for _, layer in binary_layers(model):
        assert layer.kernel_quantizer == "ste_sign"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 8, 8, generator=gen)
    y = torch.randint(10, (32,), generator=gen)
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for p in binary_parameters(model):
        assert p.abs().max() == 1.0  # lr 0.5 pushes some weights onto the clip
        assert (p.abs() < 1.0).any()  # still real-valued latent weights
    # Forward uses the sign of the latent weights.
    plain = build_model("mlp", (1, 8, 8), 10)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in binary_parameters(plain):
            p.copy_(torch.where(p >= 0, 1.0, -1.0))
    model.eval()
    plain.eval()
    assert torch.equal(model(x), plain(x))


def test_latent_flip_counting_counts_sign_changes():
    w = _param([0.1, -0.1, 0.2])
    model = nn.Module()
    model.w = w
    opt = CaseOptimizer(model, torch.optim.SGD([w], lr=0.5), None, clip_binary=True)
    w.grad = torch.tensor([1.0, 1.0, -4.0])
    opt.step()
    # 0.1 - 0.5 -> -0.4 (flip); -0.1 - 0.5 -> -0.6 (no); 0.2 + 2 -> clipped to 1 (no)
    assert w.tolist() == pytest.approx([-0.4, -0.6, 1.0])
    w.grad = torch.tensor([-2.0, 0.0, 0.0])
    opt.step()  # -0.4 + 1 -> 0.6: flip back
    assert _flip_totals(opt) == [(2.0, 2)]
    assert opt.read_flips() == []


def test_latent_lr_schedule_reaches_the_binary_kernels():
    model = _small_bnn(0)
    binary = binary_parameters(model)
    lr = Schedule("linear", 0.1, end=0.02, steps=4)
    opt = CaseOptimizer(
        model,
        torch.optim.Adam(binary, lr=lr(0)),
        torch.optim.Adam([model.bn1.bias, model.bn2.bias], lr=lr(0)),
        clip_binary=True,
        lr_schedule=lr,
    )
    for x, y in _batches(5):
        expected = opt.current_lr()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        assert opt.binary.param_groups[0]["lr"] == expected
        assert opt.fp.param_groups[0]["lr"] == expected
    assert expected == pytest.approx(0.02)
