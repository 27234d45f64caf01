"""Bop, its second-order variant and the binary / full-precision routing.

The expected values are worked out by hand from the rule in the paper:

    m <- m + gamma * (g - m)
    w <- -w  if  w * m > threshold  else  w

with Larq's way of computing the new weight, ``sign(-sign(w*m - threshold) * w)`` and
``sign(0) = +1``.
"""

from __future__ import annotations

import io
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bopsweep.bnn import bop_kernels
from bopsweep.bnn.layers import CenterBatchNorm1d, QuantLinear, binary_parameters
from bopsweep.bnn.optim import Bop, Bop2ndOrder
from bopsweep.bnn.schedules import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def _param(values) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float32))


def _step(optimizer, params, grads) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else torch.as_tensor(g, dtype=p.dtype)
    optimizer.step()


def _flip_totals(optimizer, reset: bool = True) -> list[tuple[float, int]]:
    return [(total.item(), steps) for _, total, steps in optimizer.read_flips(reset)]


# ----------------------------------------------------------------- Bop by hand
@pytest.mark.parametrize("foreach", [False, True])
def test_flips_no_flips_and_ties(foreach):
    w = _param([1.0, 1.0, -1.0, -1.0, 1.0, -1.0])
    opt = Bop([w], threshold=0.5, gamma=1.0, foreach=foreach)
    # gamma = 1: m = g after one step, so w * m = [1, -1, 1, -1, 0.5, 0.5].
    _step(opt, [w], [[1.0, -1.0, -1.0, 1.0, 0.5, -0.5]])
    assert opt.state[w]["m"].tolist() == [1.0, -1.0, -1.0, 1.0, 0.5, -0.5]
    # Indices 0 and 2 exceed the threshold and flip; 1 and 3 disagree and stay;
    # 4 and 5 are exact ties (w * m == threshold): +1, whatever w was.
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0, 1.0]
    # The count is of values that changed: 0, 2 and the tie at 5 (-1 -> +1).
    assert _flip_totals(opt) == [(3.0, 1)]


@pytest.mark.parametrize("foreach", [False, True])
def test_threshold_zero_flips_on_any_agreement(foreach):
    w = _param([1.0, -1.0, 1.0, -1.0, -1.0])
    opt = Bop([w], threshold=0.0, gamma=1.0, foreach=foreach)
    _step(opt, [w], [[1e-30, 1e-30, -1e-30, -1e-30, 0.0]])
    # w * m = [1e-30, -1e-30, -1e-30, 1e-30, 0]: the last is a tie at 0 -> +1.
    assert w.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    assert _flip_totals(opt) == [(3.0, 1)]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 1e-6])
def test_sign_of_zero_is_plus_one(foreach, threshold):
    w = _param([0.0, 0.0, 1.0, -1.0])
    opt = Bop([w], threshold=threshold, gamma=0.5, foreach=foreach)
    _step(opt, [w], [[0.0, 5.0, 0.0, 0.0]])
    # w = 0 gives w * m = 0 whatever m is; m = 0 gives w * m = 0 whatever w is.
    expected_last = 1.0 if threshold == 0.0 else -1.0  # tie only when threshold is 0
    assert w.tolist() == [1.0, 1.0, 1.0, expected_last]
    assert torch.all(w.abs() == 1.0)


@pytest.mark.parametrize("foreach", [False, True])
def test_weights_not_yet_binary_become_their_sign(foreach):
    w = _param([0.3, -0.7, 2.5, -1e-3, 0.3, -0.7])
    opt = Bop([w], threshold=0.5, gamma=1.0, foreach=foreach)
    # w * m = [-0.3, -0.7, -2.5, -1e-3, 0.6, 1.4]: only the last two exceed 0.5.
    _step(opt, [w], [[-1.0, 1.0, -1.0, 1.0, 2.0, -2.0]])
    assert w.tolist() == [1.0, -1.0, 1.0, -1.0, -1.0, 1.0]


@pytest.mark.parametrize("foreach", [False, True])
def test_params_without_grad_are_skipped(foreach):
    a = _param([1.0, -1.0])
    b = _param([0.3, -0.7])  # not binary: a step would change it
    opt = Bop([a, b], threshold=0.0, gamma=1.0, foreach=foreach)
    _step(opt, [a, b], [[1.0, 1.0], None])
    assert a.tolist() == [-1.0, -1.0]
    assert b.tolist() == pytest.approx([0.3, -0.7])
    assert b not in opt.state
    assert opt.param_groups[0]["step"] == 1
    flips = opt.read_flips()
    assert len(flips) == 1 and flips[0][0] is a


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls", [Bop, Bop2ndOrder])
def test_empty_parameter(cls, foreach):
    empty = nn.Parameter(torch.zeros(0))
    w = _param([1.0, -1.0])
    opt = cls([empty, w], threshold=0.0, gamma=1.0, foreach=foreach)
    for _ in range(2):
        _step(opt, [empty, w], [torch.zeros(0), [1.0, 1.0]])
    assert empty.shape == (0,)
    assert opt.state[empty]["m"].shape == (0,)
    # w: [1, -1] -> [-1, -1] at the first step, then w * m = -1 keeps it.
    assert w.tolist() == [-1.0, -1.0]
    assert _flip_totals(opt) == [(0.0, 2), (1.0, 2)]


@pytest.mark.parametrize("foreach", [False, True])
def test_momentum_is_an_ema_from_zero(foreach):
    w = _param([1.0])
    opt = Bop([w], threshold=1e9, gamma=0.25, foreach=foreach)
    expected = []
    m = 0.0
    for g in (4.0, -8.0, 2.0, 0.0):
        m = m + 0.25 * (g - m)  # exact in binary floating point for these values
        expected.append(m)
    assert expected == [1.0, -1.25, -0.4375, -0.328125]
    for g, m in zip((4.0, -8.0, 2.0, 0.0), expected, strict=True):
        _step(opt, [w], [[g]])
        assert opt.state[w]["m"].item() == m
    assert w.item() == 1.0  # the threshold is never reached


@pytest.mark.parametrize("foreach", [False, True])
def test_momentum_with_a_small_gamma(foreach):
    w = _param([1.0, -1.0])
    opt = Bop([w], threshold=1e9, gamma=0.1, foreach=foreach)
    grads = [[1.0, -3.0], [2.0, 5.0], [-1.0, 0.5]]
    m = [0.0, 0.0]
    for g in grads:
        m = [mi + 0.1 * (gi - mi) for mi, gi in zip(m, g, strict=True)]
        _step(opt, [w], [g])
    # m = 0.1 * [1, -3] -> [0.29, 0.23] -> [0.161, 0.257]
    assert m == pytest.approx([0.161, 0.257])
    assert opt.state[w]["m"].tolist() == pytest.approx(m, rel=1e-6)


@pytest.mark.parametrize("foreach", [False, True])
def test_bop_flips_after_momentum_builds_up(foreach):
    w = _param([1.0, -1.0])
    opt = Bop([w], threshold=0.6, gamma=0.5, foreach=foreach)
    history = []
    for _ in range(3):
        _step(opt, [w], [[1.0, 1.0]])
        history.append(w.tolist())
    # m = 0.5, 0.75, 0.875: w[0] = +1 flips at step 2 (0.75 > 0.6) and then
    # w * m = -0.875 keeps it; w[1] = -1 never agrees with m > 0.
    assert history == [[1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]]


# ------------------------------------------------------------ second order, by hand
@pytest.mark.parametrize("foreach", [False, True])
def test_bop2_second_moment_is_an_ema_from_zero(foreach):
    w = _param([1.0])
    opt = Bop2ndOrder([w], threshold=1e9, gamma=0.5, sigma=0.25, foreach=foreach)
    v = 0.0
    for g in (2.0, 4.0, 0.0):
        v = v + 0.25 * (g * g - v)
        _step(opt, [w], [[g]])
        assert opt.state[w]["v"].item() == v
    assert v == 3.5625
    assert opt.state[w]["m"].item() == 1.25  # 0 -> 1 -> 2.5 -> 1.25


@pytest.mark.parametrize("foreach", [False, True])
def test_bop2_normalises_by_the_second_moment(foreach):
    # gamma = sigma = 1: m = g, v = g^2, so the score is ~sign(g) whatever the scale.
    small, large = _param([1.0, 1.0, -1.0]), _param([1.0, 1.0, -1.0])
    grads = [[0.02, -0.02, 0.02], [200.0, -200.0, 200.0]]
    opt2 = Bop2ndOrder([small], threshold=0.5, gamma=1.0, sigma=1.0, foreach=foreach)
    _step(opt2, [small], [grads[0]])
    assert small.tolist() == [-1.0, 1.0, -1.0]
    assert opt2.state[small]["v"].tolist() == (torch.tensor(grads[0]) ** 2).tolist()
    # Plain Bop with the same threshold ignores the small gradient...
    opt1 = Bop([large], threshold=0.5, gamma=1.0, foreach=foreach)
    _step(opt1, [large], [grads[0]])
    assert large.tolist() == [1.0, 1.0, -1.0]
    # ...and flips on the large one, as the second-order variant does on both.
    _step(opt1, [large], [grads[1]])
    assert large.tolist() == [-1.0, 1.0, -1.0]


# -------------------------------------------------------- foreach == single tensor
SHAPES = [(3, 4), (5,), (2, 3, 3, 3), (0,), (7, 1), (1,)]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]


def _kernel_params(gen: torch.Generator, device: str) -> list[nn.Parameter]:
    """Tensors of several shapes and memory layouts, one of them empty."""
    params = [torch.randn(shape, generator=gen).sign() for shape in SHAPES]
    params += [
        torch.randn(6, 4, generator=gen).sign().t(),  # not contiguous
        torch.randn(4, 3, 3, 3, generator=gen).sign().to(memory_format=torch.channels_last),
        torch.randn(300, generator=gen).sign(),
    ]
    params = [nn.Parameter(p.to(device)) for p in params]
    # One weight that is not binary yet, to cover the "becomes its sign" path.
    with torch.no_grad():
        params[0][0, 0] = 0.3
    return params


def _run_kernel(cls, foreach: bool, device: str = "cpu", steps: int = 6, **hparams):
    gen = torch.Generator().manual_seed(1234)
    params = _kernel_params(gen, device)
    opt = cls(params, foreach=foreach, **hparams)
    flips = []
    for step in range(steps):
        for index, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=gen).to(device)
            if step == 2 and index in (1, 2):
                p.grad = None  # skipped in this step only
            if step == 4 and index == 4:
                p.grad = None
        opt.step()
        flips.append([(t.cpu(), n) for _, t, n in opt.read_flips()])
    return params, opt, flips


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("slice_size", [None, 5])
@pytest.mark.parametrize(
    ("cls", "hparams"),
    [
        (Bop, dict(threshold=0.3, gamma=0.5)),
        (Bop, dict(threshold=0.0, gamma=1e-2)),
        (Bop2ndOrder, dict(threshold=0.5, gamma=0.3, sigma=0.2)),
        (Bop2ndOrder, dict(threshold=1e-3, gamma=1e-2, sigma=1e-3)),
    ],
)
def test_foreach_matches_single_tensor_bit_for_bit(cls, hparams, slice_size, device, monkeypatch):
    if slice_size is not None:
        # The CPU kernel works through large tensors slice by slice: make the slices
        # small enough to cut through these tensors.
        monkeypatch.setattr(bop_kernels, "_FLIP_SLICE", slice_size)
    params_s, opt_s, flips_s = _run_kernel(cls, False, device, **hparams)
    params_f, opt_f, flips_f = _run_kernel(cls, True, device, **hparams)
    keys = ["m", "v"] if cls is Bop2ndOrder else ["m"]
    for p_s, p_f in zip(params_s, params_f, strict=True):
        assert torch.equal(p_s, p_f)
        assert p_s.stride() == p_f.stride()
        assert torch.all(p_s.abs() == 1.0)
        for key in keys:
            assert torch.equal(opt_s.state[p_s][key], opt_f.state[p_f][key])
    total_flips = 0.0
    for step_s, step_f in zip(flips_s, flips_f, strict=True):
        assert len(step_s) == len(step_f)
        for (t_s, n_s), (t_f, n_f) in zip(step_s, step_f, strict=True):
            assert n_s == n_f == 1
            assert t_s.dtype == t_f.dtype == torch.float64
            assert torch.equal(t_s, t_f)
            total_flips += t_s.item()
    # The comparison is only meaningful if weights did flip.
    assert total_flips > 10
    # Steps 2 and 4 skipped some tensors.
    assert [len(step) for step in flips_s] == [9, 9, 7, 9, 8, 9]


def test_flip_counts_match_sign_changes():
    gen = torch.Generator().manual_seed(7)
    params = _kernel_params(gen, "cpu")
    opt = Bop(params, threshold=1e-2, gamma=0.2)
    changed = [0] * len(params)
    for _ in range(5):
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        for i, (p, b) in enumerate(zip(params, before, strict=True)):
            changed[i] += int(((p >= 0) != (b >= 0)).sum())  # binary values
    totals = {id(p): (t.item(), n) for p, t, n in opt.read_flips()}
    assert [totals[id(p)] for p in params] == [(float(c), 5) for c in changed]
    assert sum(changed) > 0


# -------------------------------------------------------------- flip bookkeeping
def test_read_flips_accumulates_and_resets():
    w = _param([1.0, 1.0, -1.0, -1.0])
    v = _param([1.0, -1.0])
    opt = Bop([{"params": [w]}, {"params": [v], "threshold": 0.25}], threshold=0.5, gamma=1.0)
    _step(opt, [w, v], [[1.0, 1.0, 0.0, 0.0], [1.0, 0.0]])  # w: 2 flips; v: 1 flip
    _step(opt, [w, v], [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0]])  # w: 1 flip; v: 1 flip
    assert w.tolist() == [1.0, -1.0, -1.0, -1.0]
    assert v.tolist() == [-1.0, 1.0]
    assert _flip_totals(opt, reset=False) == [(3.0, 2), (2.0, 2)]
    assert _flip_totals(opt, reset=True) == [(3.0, 2), (2.0, 2)]
    assert opt.read_flips() == []
    _step(opt, [w, v], [[0.0, 0.0, 0.0, 0.0], [-1.0, 0.0]])  # v[0] = -1, m = -1 -> flip
    assert _flip_totals(opt) == [(0.0, 1), (1.0, 1)]


def test_read_flips_totals_stay_on_the_device_until_read():
    w = _param([1.0, 1.0])
    opt = Bop([w], threshold=0.0, gamma=1.0)
    _step(opt, [w], [[1.0, -1.0]])
    ((param, total, steps),) = opt.read_flips()
    assert param is w and steps == 1
    assert isinstance(total, torch.Tensor) and total.device == w.device
    assert total.item() == 1.0


def test_count_flips_off():
    w = _param([1.0, 1.0])
    opt = Bop([w], threshold=0.0, gamma=1.0, count_flips=False)
    _step(opt, [w], [[1.0, 1.0]])
    assert w.tolist() == [-1.0, -1.0]
    assert opt.read_flips() == []


# --------------------------------------------------------------- hyperparameters
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(threshold=-1e-6), r"Invalid threshold: -1e-06 \(must be >= 0\)"),
        (dict(gamma=0.0), r"Invalid gamma: 0.0 \(must be in \(0, 1\]\)"),
        (dict(gamma=1.5), r"Invalid gamma: 1.5 \(must be in \(0, 1\]\)"),
        (dict(gamma=-0.1), r"Invalid gamma: -0.1"),
        (dict(gamma=Schedule("linear", 1e-3, end=0.0, steps=10)), r"Invalid gamma: 0.0"),
        (dict(threshold=Schedule("linear", 1e-6, end=-1.0, steps=10)), "Invalid threshold: -1.0"),
    ],
)
@pytest.mark.parametrize("cls", [Bop, Bop2ndOrder])
def test_invalid_hyperparameters(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls([_param([1.0])], **kwargs)


@pytest.mark.parametrize("sigma", [0.0, 1.01, -1.0])
def test_invalid_sigma(sigma):
    with pytest.raises(ValueError, match=rf"Invalid sigma: {sigma} \(must be in \(0, 1\]\)"):
        Bop2ndOrder([_param([1.0])], sigma=sigma)


def test_invalid_hyperparameters_in_a_param_group():
    with pytest.raises(ValueError, match=r"Invalid gamma: 2\.0"):
        Bop([{"params": [_param([1.0])], "gamma": 2.0}])
    with pytest.raises(ValueError, match=r"Invalid sigma: 0\.0"):
        Bop2ndOrder([{"params": [_param([1.0])], "sigma": 0.0}])


def test_boundary_hyperparameters_are_valid():
    Bop([_param([1.0])], threshold=0.0, gamma=1.0)
    Bop2ndOrder([_param([1.0])], threshold=0.0, gamma=1.0, sigma=1.0)


# ------------------------------------------------------------------- schedules
@pytest.mark.parametrize("foreach", [False, True])
def test_gamma_schedule_is_evaluated_at_the_optimizer_step(foreach):
    w = _param([1.0])
    gamma = Schedule("exponential", 0.5, steps=1, factor=0.5)  # 0.5, 0.25, 0.125
    opt = Bop([w], threshold=1e9, gamma=gamma, foreach=foreach)
    seen = []
    for g in (4.0, 8.0, 0.0):
        seen.append(opt.current("gamma"))
        _step(opt, [w], [[g]])
    assert seen == [0.5, 0.25, 0.125]
    assert opt.param_groups[0]["step"] == 3
    # m = 0 + 0.5 * 4 = 2;  2 + 0.25 * (8 - 2) = 3.5;  3.5 + 0.125 * (0 - 3.5) = 3.0625
    assert opt.state[w]["m"].item() == 3.0625


@pytest.mark.parametrize("cls", [Bop, Bop2ndOrder])
def test_threshold_schedule_is_evaluated_at_the_optimizer_step(cls):
    w = _param([1.0])
    threshold = Schedule("linear", 3.0, end=0.0, steps=3)  # 3, 2, 1, 0, 0, ...
    opt = cls([w], threshold=threshold, gamma=1.0)
    if cls is Bop2ndOrder:
        opt.param_groups[0]["sigma"] = {"kind": "constant", "start": 1.0}
    thresholds, weights = [], []
    for _ in range(4):
        thresholds.append(opt.current("threshold"))
        _step(opt, [w], [[2.0]])
        weights.append(w.item())
        with torch.no_grad():
            w.fill_(1.0)  # keep w * m constant from step to step
    assert thresholds == [3.0, 2.0, 1.0, 0.0]
    if cls is Bop:
        # w * m = 2: 2 > 3 no, 2 > 2 no (strict), 2 > 1 yes, 2 > 0 yes.
        assert weights == [1.0, 1.0, -1.0, -1.0]
    else:
        # w * m / (sqrt(v) + 1e-10) = 2 / 2 = 1 in float32: it exceeds only threshold 0.
        assert weights == [1.0, 1.0, 1.0, -1.0]


def test_sigma_schedule():
    w = _param([1.0])
    opt = Bop2ndOrder(
        [w], threshold=1e9, gamma=0.5, sigma=Schedule("exponential", 0.5, steps=1, factor=0.5)
    )
    for g in (2.0, 2.0):
        _step(opt, [w], [[g]])
    # v = 0.5 * 4 = 2;  2 + 0.25 * (4 - 2) = 2.5
    assert opt.state[w]["v"].item() == 2.5


# ---------------------------------------------------------- state_dict round trip
def _small_bnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            dense1=QuantLinear(10, 16, input_quantizer=None),
            bn1=CenterBatchNorm1d(16),
            dense2=QuantLinear(16, 3),
            bn2=CenterBatchNorm1d(3),
        )
    )


def _batches(n: int):
    gen = torch.Generator().manual_seed(99)
    return [(torch.randn(16, 10, generator=gen), torch.randint(3, (16,), generator=gen))
            for _ in range(n)]  # fmt: skip


def _train(model, optimizer, batches) -> None:
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _make_bop(cls, model):
    hparams = dict(threshold=1e-4, gamma=Schedule("exponential", 0.2, steps=2, factor=0.5))
    if cls is Bop2ndOrder:
        hparams["sigma"] = Schedule("linear", 0.5, end=0.1, steps=4)
    return cls(binary_parameters(model), **hparams)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("cls", [Bop, Bop2ndOrder])
def test_bop_state_dict_round_trip_continues_identically(cls):
    batches = _batches(6)
    # Uninterrupted: 6 steps (only the binary kernels train; BN betas are frozen).
    model = _small_bnn(0)
    model.bn1.bias.requires_grad_(False)
    model.bn2.bias.requires_grad_(False)
    opt = _make_bop(cls, model)
    _train(model, opt, batches)

    # Interrupted after 3 steps; a fresh model and optimizer continue from the dicts.
    first = _small_bnn(0)
    first_opt = _make_bop(cls, first)
    _train(first, first_opt, batches[:3])
    saved = _round_trip({"model": first.state_dict(), "optimizer": first_opt.state_dict()})
    resumed = _small_bnn(123)
    resumed_opt = _make_bop(cls, resumed)
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["optimizer"])
    assert resumed_opt.param_groups[0]["step"] == 3
    assert resumed_opt.current("gamma") == pytest.approx(0.1)
    _train(resumed, resumed_opt, batches[3:])

    for (name, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
    for p, q in zip(binary_parameters(model), binary_parameters(resumed), strict=True):
        _assert_same_state(opt.state[p], resumed_opt.state[q])
    # The run flipped weights after the interruption: the comparison has teeth.
    assert not torch.equal(first.dense1.weight, resumed.dense1.weight)


@pytest.mark.parametrize("variant", ["bop", "bop2", "bop2_unbiased", "latent"])
def test_variant_trains_a_small_bnn(check_bnn_trains, variant):
    check_bnn_trains(variant)
