"""Bop2ndOrder with bias correction ("Bop and Beyond", unbiased) on hand-computed values.

m <- m + gamma * (g - m),        m_hat = m / (1 - (1 - gamma)^t)
v <- v + sigma * (g**2 - v),     v_hat = v / (1 - (1 - sigma)^t)
w <- -w  if  w * m_hat / (sqrt(v_hat) + 1e-10) > threshold  else  w
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bopsweep.bnn import optim
from bopsweep.bnn.optim import Bop2ndOrder, Bop2ndOrderUnbiased
from bopsweep.bnn.schedules import Schedule


def _param(values) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float32))


def _step(optimizer, params, grads) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else torch.as_tensor(g, dtype=p.dtype)
    optimizer.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_first_step_scores_the_gradient_sign(foreach):
    # After one step m_hat = g and v_hat = g**2, so the score is g / (|g| + 1e-10),
    # +-1 for any gradient; the biased rule scores (g / 2) / (|g| / sqrt(2)) = +-0.707.
    w = _param([1.0, 1.0, -1.0, -1.0])
    opt = Bop2ndOrderUnbiased([w], threshold=0.9, gamma=0.5, sigma=0.5, foreach=foreach)
    _step(opt, [w], [[4.0, -1e-3, 0.25, -0.5]])
    # w * score = [1, -1, -1, 1]: indices 0 and 3 exceed 0.9 and flip.
    assert w.tolist() == [-1.0, 1.0, -1.0, 1.0]
    w_biased = _param([1.0, 1.0, -1.0, -1.0])
    biased = Bop2ndOrder([w_biased], threshold=0.9, gamma=0.5, sigma=0.5, foreach=foreach)
    _step(biased, [w_biased], [[4.0, -1e-3, 0.25, -0.5]])
    assert w_biased.tolist() == [1.0, 1.0, -1.0, -1.0]


@pytest.mark.parametrize("foreach", [False, True])
def test_two_steps_by_hand(foreach):
    w = _param([1.0, -1.0])
    opt = Bop2ndOrderUnbiased([w], threshold=0.5, gamma=0.5, sigma=0.5, foreach=foreach)
    _step(opt, [w], [[-2.0, -2.0]])  # score -1: index 1 (w = -1) has w * score = 1 > 0.5
    assert w.tolist() == [1.0, 1.0]
    _step(opt, [w], [[4.0, 1.0]])
    # m = [-2 / 4 + 4 / 2, -2 / 4 + 1 / 2] = [1.5, 0], corrected by 1 - 0.25 = 0.75:
    # m_hat = [2, 0]; v = [4 / 4 + 16 / 2, 4 / 4 + 1 / 2] = [9, 1.5], v_hat = [12, 2].
    state = opt.state[w]
    assert state["m"].tolist() == [1.5, 0.0]
    assert state["v"].tolist() == [9.0, 1.5]
    assert math.expm1(state["log_m_decay"]) == pytest.approx(-0.75)
    # Scores: 2 / sqrt(12) = 0.577 > 0.5 flips index 0; index 1 scores 0 and is kept.
    assert w.tolist() == [-1.0, 1.0]
    # The biased rule scores 1.5 / sqrt(9) = 0.5 there: not above the threshold.
    w_biased = _param([1.0, -1.0])
    biased = Bop2ndOrder([w_biased], threshold=0.5, gamma=0.5, sigma=0.5, foreach=foreach)
    _step(biased, [w_biased], [[-2.0, -2.0]])
    _step(biased, [w_biased], [[4.0, 1.0]])
    assert w_biased.tolist() == [1.0, 1.0]


def test_correction_matches_the_closed_form_at_constant_rates():
    gamma, sigma, steps = 1e-3, 1e-2, 50
    w = _param([1.0])
    opt = Bop2ndOrderUnbiased([w], threshold=1e9, gamma=gamma, sigma=sigma)
    for _ in range(steps):
        _step(opt, [w], [[1.0]])
    state = opt.state[w]
    assert -math.expm1(state["log_m_decay"]) == pytest.approx(1 - (1 - gamma) ** steps, rel=1e-12)
    assert -math.expm1(state["log_v_decay"]) == pytest.approx(1 - (1 - sigma) ** steps, rel=1e-12)
    # A constant gradient of 1: the corrected moments are exactly what they average, 1.
    m_hat = state["m"].item() / (1 - (1 - gamma) ** steps)
    v_hat = state["v"].item() / (1 - (1 - sigma) ** steps)
    assert m_hat == pytest.approx(1.0, rel=1e-5)
    assert v_hat == pytest.approx(1.0, rel=1e-5)


def test_a_rate_of_one_needs_no_correction():
    w = _param([1.0, -1.0])
    opt = Bop2ndOrderUnbiased([w], threshold=0.5, gamma=1.0, sigma=1.0)
    _step(opt, [w], [[1.0, 1.0]])
    assert w.tolist() == [-1.0, -1.0]
    assert opt.state[w]["log_m_decay"] == -math.inf


# ---------------------------------------------------------- foreach == for-loop
def _run(foreach: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (0,), (4, 2, 3, 3), (7,)]
    params = [
        nn.Parameter(torch.where(torch.rand(s, generator=gen) < 0.5, -1.0, 1.0)) for s in shapes
    ]
    opt = Bop2ndOrderUnbiased(
        params,
        threshold=Schedule("linear", 0.9, end=0.5, steps=4),
        gamma=Schedule("exponential", 0.2, factor=0.5, steps=2),
        sigma=0.1,
        foreach=foreach,
    )
    history = []
    for step in range(6):
        grads = [torch.randn(s, generator=gen) * 10.0 ** (i - 2) for i, s in enumerate(shapes)]
        if step == 2:
            grads[0] = None  # skipped this step: its correction counts 5 steps, not 6
        _step(opt, params, grads)
        history.append([p.detach().clone() for p in params])
    states = [dict(opt.state[p]) for p in params]
    return history, states, [(t.item(), n) for _, t, n in opt.read_flips()]


@pytest.mark.parametrize("slice_size", [7, 1 << 20])
def test_foreach_matches_single_tensor_bit_for_bit(monkeypatch, slice_size):
    monkeypatch.setattr(optim, "_FLIP_SLICE", slice_size)
    single_history, single_states, single_flips = _run(foreach=False)
    multi_history, multi_states, multi_flips = _run(foreach=True)
    for single_step, multi_step in zip(single_history, multi_history, strict=True):
        for a, b in zip(single_step, multi_step, strict=True):
            assert torch.equal(a, b)
    for a, b in zip(single_states, multi_states, strict=True):
        assert a.keys() == b.keys()
        for key in ("m", "v", "flips"):
            assert torch.equal(a[key], b[key]), key
        assert (a["log_m_decay"], a["log_v_decay"]) == (b["log_m_decay"], b["log_v_decay"])
    assert single_flips == multi_flips
    assert sum(total for total, _ in single_flips) > 0
    assert all(torch.all(p.abs() == 1.0) for p in single_history[-1])
    # The skipped step: tensor 0's m correction is over 5 steps, tensor 2's over 6.
    assert single_states[0]["log_m_decay"] > single_states[2]["log_m_decay"]


def test_state_dict_round_trip_continues_identically():
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(4, 3, generator=gen) for _ in range(6)]

    def make():
        w = nn.Parameter(torch.ones(4, 3))
        return w, Bop2ndOrderUnbiased([w], threshold=0.5, gamma=0.2, sigma=0.1)

    w_a, opt_a = make()
    for g in grads:
        _step(opt_a, [w_a], [g])
    w_b, opt_b = make()
    for g in grads[:3]:
        _step(opt_b, [w_b], [g])
    w_c, opt_c = make()
    with torch.no_grad():
        w_c.copy_(w_b)
    opt_c.load_state_dict(opt_b.state_dict())
    for g in grads[3:]:
        _step(opt_c, [w_c], [g])
    assert torch.equal(w_a, w_c)
    assert opt_a.state[w_a]["log_v_decay"] == opt_c.state[w_c]["log_v_decay"]
