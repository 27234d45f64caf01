"""Bop2ndOrder ("Bop and Beyond", Suarez-Ramirez et al. 2021) on hand-computed vectors.

    m <- m + gamma * (g - m)
    v <- v + sigma * (g**2 - v)
    w <- -w  if  w * m / (sqrt(v) + 1e-10) > threshold  else  w

The rates are powers of two so that m and v are exact in float32; the scores are
irrational and checked to float32 precision.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bopsweep.bnn.optim import Bop2ndOrder
from bopsweep.bnn.schedules import Schedule


def _param(values) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float32))


def _step(optimizer, params, grads) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else torch.as_tensor(g, dtype=p.dtype)
    optimizer.step()


def _score(m: float, v: float) -> float:
    return m / (math.sqrt(v) + 1e-10)


@pytest.mark.parametrize("foreach", [False, True])
def test_three_steps_by_hand(foreach):
    w = _param([1.0, 1.0, -1.0, -1.0])
    opt = Bop2ndOrder([w], threshold=0.5, gamma=0.5, sigma=0.5, foreach=foreach)
    state = opt.state

    # Step 1: m = g / 2, v = g**2 / 2, so |m| / sqrt(v) = 1 / sqrt(2) for any g != 0:
    # the 16x smaller gradient of index 2 scores as high as index 0.
    _step(opt, [w], [[4.0, -4.0, 0.25, 0.0]])
    assert state[w]["m"].tolist() == [2.0, -2.0, 0.125, 0.0]
    assert state[w]["v"].tolist() == [8.0, 8.0, 0.03125, 0.0]
    # w * score = [0.707, -0.707, -0.707, 0]: only index 0 exceeds 0.5 and flips.
    assert w.tolist() == [-1.0, 1.0, -1.0, -1.0]

    # Step 2: m = [3, -3, -0.0625, 0], v = [12, 12, 0.046875, 0];
    # w * score = [-0.866, -0.866, 0.289, 0]: nothing flips.
    _step(opt, [w], [[4.0, -4.0, -0.25, 0.0]])
    assert state[w]["m"].tolist() == [3.0, -3.0, -0.0625, 0.0]
    assert state[w]["v"].tolist() == [12.0, 12.0, 0.046875, 0.0]
    assert w.tolist() == [-1.0, 1.0, -1.0, -1.0]

    # Step 3: m = [-0.5, -3.5, -0.15625, 0.5], v = [14, 14, 0.0546875, 0.5];
    # w * score = [0.134, -0.935, 0.668, -0.707]: index 2 flips, index 0 (0.134) not.
    _step(opt, [w], [[-4.0, -4.0, -0.25, 1.0]])
    m, v = state[w]["m"], state[w]["v"]
    assert m.tolist() == [-0.5, -3.5, -0.15625, 0.5]
    assert v.tolist() == [14.0, 14.0, 0.0546875, 0.5]
    scores = [_score(mi, vi) for mi, vi in zip(m.tolist(), v.tolist(), strict=True)]
    assert scores == pytest.approx([-0.13363062, -0.93541435, -0.66815310, 0.70710678])
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0]

    # One flip in step 1, one in step 3, over 4 weights and 3 steps.
    ((_, total, steps),) = opt.read_flips()
    assert (total.item(), steps) == (2.0, 3)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("threshold", "flips"), [(0.0098, True), (0.0100, False)])
def test_epsilon_is_1e_10(foreach, threshold, flips):
    # gamma = sigma = 1: m = g = 1e-12 and sqrt(v) = 1e-12, so the score is
    # 1e-12 / (1e-12 + 1e-10) = 0.0099 (1 without the epsilon, 1e-4 with 1e-8).
    w = _param([1.0])
    opt = Bop2ndOrder([w], threshold=threshold, gamma=1.0, sigma=1.0, foreach=foreach)
    _step(opt, [w], [[1e-12]])
    assert w.item() == (-1.0 if flips else 1.0)


@pytest.mark.parametrize("foreach", [False, True])
def test_zero_gradient_history_scores_zero_and_ties_give_plus_one(foreach):
    # m = v = 0 gives a score of 0 / 1e-10 = 0; at threshold 0 that is Larq's tie
    # (w * score == threshold), which makes every such weight +1.
    w = _param([1.0, -1.0])
    opt = Bop2ndOrder([w], threshold=0.0, gamma=0.5, sigma=0.5, foreach=foreach)
    _step(opt, [w], [[0.0, 0.0]])
    assert w.tolist() == [1.0, 1.0]
    assert opt.state[w]["v"].tolist() == [0.0, 0.0]


def test_scale_invariance_is_what_differs_from_bop():
    # The same gradient direction at scales 1e-6 and 1: Bop2ndOrder flips both.
    w = _param([1.0, 1.0])
    opt = Bop2ndOrder([w], threshold=0.5, gamma=0.5, sigma=0.5)
    _step(opt, [w], [[1e-6, 1.0]])
    assert w.tolist() == [-1.0, -1.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sigma": 0.0}, r"Invalid sigma: 0.0 \(must be in \(0, 1\]\)"),
        ({"sigma": 1.5}, r"Invalid sigma: 1.5"),
        ({"gamma": 0.0}, r"Invalid gamma: 0.0"),
        ({"threshold": -1e-9}, r"Invalid threshold: -1e-09 \(must be >= 0\)"),
        ({"sigma": Schedule("linear", 1e-2, end=0.0, steps=10)}, r"Invalid sigma: 0.0"),
    ],
)
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Bop2ndOrder([_param([1.0])], **kwargs)


# ---------------------------------------------------------- foreach == for-loop
def _run(foreach: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (0,), (4, 2, 3, 3), (7,)]
    params = [
        nn.Parameter(torch.where(torch.rand(s, generator=gen) < 0.5, -1.0, 1.0)) for s in shapes
    ]
    opt = Bop2ndOrder(
        params,
        threshold=Schedule("linear", 0.3, end=0.05, steps=4),
        gamma=Schedule("exponential", 0.2, factor=0.5, steps=2),
        sigma=0.1,
        foreach=foreach,
    )
    history = []
    for step in range(6):
        grads = [torch.randn(s, generator=gen) * 10.0 ** (i - 2) for i, s in enumerate(shapes)]
        if step == 2:
            grads[0] = None  # a parameter without a gradient is skipped this step
        _step(opt, params, grads)
        history.append([p.detach().clone() for p in params])
    states = [
        {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()} for p in params
    ]
    return history, states, [(t.item(), n) for _, t, n in opt.read_flips()]


def test_foreach_matches_single_tensor_bit_for_bit():
    single_history, single_states, single_flips = _run(foreach=False)
    multi_history, multi_states, multi_flips = _run(foreach=True)
    for single_step, multi_step in zip(single_history, multi_history, strict=True):
        for a, b in zip(single_step, multi_step, strict=True):
            assert torch.equal(a, b)
    for a, b in zip(single_states, multi_states, strict=True):
        assert a.keys() == b.keys() == {"m", "v", "flips", "flip_steps"}
        for key in ("m", "v", "flips"):
            assert torch.equal(a[key], b[key]), key
        assert a["flip_steps"] == b["flip_steps"]
    assert single_flips == multi_flips
    # The run did flip weights, and every binary weight stayed exactly +-1.
    assert sum(total for total, _ in single_flips) > 0
    assert all(torch.all(p.abs() == 1.0) for p in single_history[-1])
    # The parameter without a gradient in step 3 was stepped 5 times, not 6.
    assert single_flips[0][1] == 5
