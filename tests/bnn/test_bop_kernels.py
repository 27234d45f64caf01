"""The CPU flip pass of the foreach Bop kernel works slice by slice on flat views of
each tensor; whatever the slicing and the memory layout, it must agree bit for bit
with the single-tensor reference (weights, moments and flip counts)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bopsweep.bnn import bop_kernels
from bopsweep.bnn.optim import Bop, Bop2ndOrder


def _params(gen: torch.Generator) -> list[nn.Parameter]:
    conv = torch.randn(6, 5, 3, 3, generator=gen).sign()
    params = [
        nn.Parameter(conv.contiguous(memory_format=torch.channels_last)),
        nn.Parameter(torch.randn(37, 11, generator=gen).sign()),
        # Not dense in memory order: the pass takes the whole tensor at once.
        nn.Parameter(torch.randn(9, 13, generator=gen).sign().t()),
        nn.Parameter(torch.randn(3, generator=gen)),  # not binary yet
        nn.Parameter(torch.zeros(0)),
    ]
    with torch.no_grad():
        params[1][0, :4] = torch.tensor([0.0, -0.0, 0.3, -2.0])
    return params


def _run(cls, foreach: bool, **hparams):
    gen = torch.Generator().manual_seed(99)
    params = _params(gen)
    opt = cls(params, foreach=foreach, **hparams)
    totals = []
    for _ in range(5):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        totals.append([t.item() for _, t, _ in opt.read_flips()])
    return params, opt, totals


@pytest.mark.parametrize("slice_size", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize(
    ("cls", "hparams"),
    [
        (Bop, dict(threshold=0.2, gamma=0.5)),
        (Bop, dict(threshold=0.0, gamma=1.0)),
        (Bop2ndOrder, dict(threshold=0.5, gamma=0.4, sigma=0.3)),
    ],
)
def test_sliced_flip_pass_matches_single_tensor(monkeypatch, slice_size, cls, hparams):
    monkeypatch.setattr(bop_kernels, "_FLIP_SLICE", slice_size)
    params_s, opt_s, totals_s = _run(cls, foreach=False, **hparams)
    params_f, opt_f, totals_f = _run(cls, foreach=True, **hparams)
    for p_s, p_f in zip(params_s, params_f, strict=True):
        assert torch.equal(p_s, p_f)
        assert torch.all(p_f.abs() == 1.0)
        assert p_s.stride() == p_f.stride()
        assert torch.equal(opt_s.state[p_s]["m"], opt_f.state[p_f]["m"])
    assert totals_s == totals_f
    assert sum(map(sum, totals_f)) > 20


def test_zero_weights_become_plus_one_and_count_as_unchanged():
    w = nn.Parameter(torch.tensor([0.0, -0.0, 0.0, 1.0]))
    opt = Bop([w], threshold=0.0, gamma=1.0)
    w.grad = torch.tensor([1.0, -1.0, 0.0, 1.0])
    opt.step()
    assert w.tolist() == [1.0, 1.0, 1.0, -1.0]
    assert torch.all(torch.signbit(w[:3]) == 0)
    ((_, total, _),) = opt.read_flips()
    assert total.item() == 1.0
