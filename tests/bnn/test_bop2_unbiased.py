"""Bop2ndOrderUnbiased against the published code ("Bop and Beyond", Bop2ndOrder repo,
branch ``conference``, ``bnn_optimization/optimizers.py``, class ``Bop2ndOrder_unbiased``)::

    m_t = m.assign_add(gamma * (grad - m))
    v_t = v.assign_add(sigma * (tf.math.square(grad) - v))
    var_t = lq.math.sign(-tf.sign(var * ((m_t / gamma) / (tf.math.sqrt(v_t / sigma) + 1e-10))
                                  - threshold) * var)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bopsweep.bnn import bop_kernels
from bopsweep.bnn.optim import Bop2ndOrder, Bop2ndOrderUnbiased
from bopsweep.bnn.schedules import Schedule


def _param(values) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float32))


def _step(optimizer, params, grads) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else torch.as_tensor(g, dtype=p.dtype)
    optimizer.step()


def _original_step(w, m, v, g, *, threshold, gamma, sigma):
    """The original's ``_resource_apply_dense`` transcribed to NumPy float32: the
    hyperparameters cast to the variable's dtype, ``tf.sign`` (sign(0) = 0) inside and
    ``lq.math.sign`` (``sign(sign(x) + 0.1)``, never 0) outside. Also returns the
    margin ``w * score - threshold`` of each decision."""
    f32 = np.float32
    gamma, sigma, threshold = f32(gamma), f32(sigma), f32(threshold)
    m = m + gamma * (g - m)
    v = v + sigma * (np.square(g) - v)
    score = (m / gamma) / (np.sqrt(v / sigma) + f32(1e-10))
    margin = w * score - threshold
    x = -np.sign(margin) * w
    w = np.sign(np.sign(x) + f32(0.1)).astype(f32)
    return w, m, v, margin


def _bias_corrected_flips(w, m, v, t, *, threshold, gamma, sigma):
    """Adam-style bias correction of the same moments instead, to show the test tells
    the two rules apart."""
    f32 = np.float32
    m_hat = m / f32(1 - (1 - gamma) ** t)
    v_hat = v / f32(1 - (1 - sigma) ** t)
    return w * m_hat / (np.sqrt(v_hat) + f32(1e-10)) > f32(threshold)


SHAPES = [(16, 8, 3, 3), (64, 32), (10,)]
# Away from 1 at the first step, where every score is +-1 up to rounding.
THRESHOLD = Schedule("linear", 0.3, end=1.5, steps=30)
GAMMA = Schedule("exponential", 3e-2, factor=0.5, steps=10)
SIGMA = Schedule("linear", 1e-2, end=1e-1, steps=30)


@pytest.mark.parametrize("foreach", [False, True])
def test_every_step_matches_the_original(foreach):
    gen = torch.Generator().manual_seed(0)
    params = [
        nn.Parameter(torch.where(torch.rand(s, generator=gen) < 0.5, -1.0, 1.0)) for s in SHAPES
    ]
    opt = Bop2ndOrderUnbiased(params, THRESHOLD, GAMMA, SIGMA, foreach=foreach)
    moments = [(np.zeros(s, np.float32), np.zeros(s, np.float32)) for s in SHAPES]
    flipped = differs_from_corrected = near_ties = 0
    for step in range(30):
        # Gradients of realistic size: the rescaled score does not depend on their scale.
        grads = [torch.randn(s, generator=gen) * 1e-3 for s in SHAPES]
        rates = dict(threshold=THRESHOLD(step), gamma=GAMMA(step), sigma=SIGMA(step))
        before = [p.detach().numpy().copy() for p in params]
        _step(opt, params, grads)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            # m and v do not depend on w, so the original steps from this step's w.
            w, m, v, margin = _original_step(before[i], *moments[i], g.numpy(), **rates)
            moments[i] = (m, v)
            state = opt.state[p]
            # lerp rounds once where TF rounds twice (and torch's float32 sqrt on the
            # CPU is not always correctly rounded): a few ulps of the moments' scale.
            for got, want in ((state["m"].numpy(), m), (state["v"].numpy(), v)):
                scale = np.abs(want).max()
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)
            ours = p.detach().numpy()
            # Every decision is the original's, but for a margin within rounding of 0.
            tie = np.abs(margin) <= 1e-5 * rates["threshold"]
            assert np.array_equal(ours[~tie], w[~tie]), (step, i)
            near_ties += int(tie.sum())
            flipped += int((ours != before[i]).sum())
            corrected = _bias_corrected_flips(before[i], m, v, step + 1, **rates)
            differs_from_corrected += int((corrected != (w != before[i])).sum())
    total = sum(int(np.prod(s)) for s in SHAPES)
    # Enough flips, and decisions the bias-corrected rule would not take, to mean something.
    assert flipped > total
    assert differs_from_corrected > total // 10
    assert near_ties < 5


@pytest.mark.parametrize("foreach", [False, True])
def test_two_steps_by_hand(foreach):
    w = _param([1.0, -1.0])
    opt = Bop2ndOrderUnbiased([w], threshold=0.5, gamma=0.5, sigma=0.5, foreach=foreach)
    # m = [-1, -1], v = [2, 2]: score (-1 / 0.5) / sqrt(2 / 0.5) = -1; index 1 has
    # w * score = 1 > 0.5 and flips.
    _step(opt, [w], [[-2.0, -2.0]])
    assert w.tolist() == [1.0, 1.0]
    _step(opt, [w], [[4.0, 1.0]])
    # m = [1.5, 0], v = [9, 1.5]: scores 3 / sqrt(18) = 0.707 (flips) and 0 (kept).
    assert opt.state[w]["m"].tolist() == [1.5, 0.0]
    assert opt.state[w]["v"].tolist() == [9.0, 1.5]
    assert w.tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("foreach", [False, True])
def test_a_constant_gradient_scores_higher_every_step(foreach):
    # g = 1 and gamma = sigma = 0.5: m = v = 0.5, 0.75, 0.875, so the score
    # sqrt(m / 0.5) is 1, 1.22, 1.32. Adam's correction would give 1 every step and
    # the biased rule sqrt(m) < 1: neither ever passes 1.1; this one does on step 2.
    w = _param([1.0])
    opt = Bop2ndOrderUnbiased([w], threshold=1.1, gamma=0.5, sigma=0.5, foreach=foreach)
    _step(opt, [w], [[1.0]])
    assert w.tolist() == [1.0]
    _step(opt, [w], [[1.0]])
    assert w.tolist() == [-1.0]
    w_biased = _param([1.0])
    biased = Bop2ndOrder([w_biased], threshold=1.1, gamma=0.5, sigma=0.5, foreach=foreach)
    for _ in range(5):
        _step(biased, [w_biased], [[1.0]])
    assert w_biased.tolist() == [1.0]


def test_at_constant_rates_it_is_bop2_with_a_rescaled_threshold():
    # w * (m / gamma) / sqrt(v / sigma) > t  <=>  w * m / sqrt(v) > t * gamma / sqrt(sigma)
    # (up to where 1e-10 is added and float rounding): Bop is elementwise, so an element
    # whose decision rounds the other way once leaves every other element alone.
    gamma, sigma, threshold = 1e-3, 1e-2, 0.3
    gen = torch.Generator().manual_seed(1)
    init = torch.where(torch.rand(4096, generator=gen) < 0.5, -1.0, 1.0)
    w_a, w_b = nn.Parameter(init.clone()), nn.Parameter(init.clone())
    unbiased = Bop2ndOrderUnbiased([w_a], threshold, gamma, sigma)
    biased = Bop2ndOrder([w_b], threshold * gamma / sigma**0.5, gamma, sigma)
    for _ in range(20):
        g = torch.randn(4096, generator=gen)
        _step(unbiased, [w_a], [g])
        _step(biased, [w_b], [g])
    assert (w_a != init).sum() > 100
    assert (w_a != w_b).sum() <= 4


def test_a_rate_of_one_scores_the_gradient_sign():
    w = _param([1.0, -1.0])
    opt = Bop2ndOrderUnbiased([w], threshold=0.5, gamma=1.0, sigma=1.0)
    _step(opt, [w], [[1.0, 1.0]])
    assert w.tolist() == [-1.0, -1.0]


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
        sigma=Schedule("linear", 0.1, end=0.3, steps=4),
        foreach=foreach,
    )
    history = []
    for step in range(6):
        grads = [torch.randn(s, generator=gen) * 10.0 ** (i - 2) for i, s in enumerate(shapes)]
        if step == 2:
            grads[0] = None  # skipped this step
        _step(opt, params, grads)
        history.append([p.detach().clone() for p in params])
    states = [dict(opt.state[p]) for p in params]
    return history, states, [(t.item(), n) for _, t, n in opt.read_flips()]


@pytest.mark.parametrize("slice_size", [7, 1 << 20])
def test_foreach_matches_single_tensor_bit_for_bit(monkeypatch, slice_size):
    monkeypatch.setattr(bop_kernels, "_FLIP_SLICE", slice_size)
    single_history, single_states, single_flips = _run(foreach=False)
    multi_history, multi_states, multi_flips = _run(foreach=True)
    for single_step, multi_step in zip(single_history, multi_history, strict=True):
        for a, b in zip(single_step, multi_step, strict=True):
            assert torch.equal(a, b)
    for a, b in zip(single_states, multi_states, strict=True):
        assert a.keys() == b.keys()
        for key in ("m", "v", "flips"):
            assert torch.equal(a[key], b[key]), key
    assert single_flips == multi_flips
    assert sum(total for total, _ in single_flips) > 0
    assert all(torch.all(p.abs() == 1.0) for p in single_history[-1])


def test_state_dict_round_trip_continues_identically():
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(4, 3, generator=gen) for _ in range(6)]

    def make():
        w = nn.Parameter(torch.ones(4, 3))
        sigma = Schedule("linear", 0.1, end=0.2, steps=6)
        return w, Bop2ndOrderUnbiased([w], threshold=0.5, gamma=0.2, sigma=sigma)

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
    assert torch.equal(opt_a.state[w_a]["v"], opt_c.state[w_c]["v"])
