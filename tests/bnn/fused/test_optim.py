"""Fused Bop / Bop2ndOrder against K separate optimizers: bit for bit.

Each member's slice of every fused kernel must end exactly where that member's own
Bop (or Bop2ndOrder) puts it from the same gradients, with its own threshold, gamma,
sigma and schedules, including ties (``w * m == threshold``) and weights not yet +-1,
with the flip counts per member; and the per-member full-precision optimizers must
step each member as torch's optimizer steps it alone.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bopsweep.bnn.fused import FusedBop, MemberOptimizers, SharedOptimizer, member_view
from bopsweep.bnn.optim import Bop, Bop2ndOrder
from bopsweep.bnn.schedules import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(6, 5), (4, 3, 3, 3), (7,)]
THRESHOLDS = [0.0, 1e-6, Schedule("linear", 1e-5, end=0.0, steps=3)]
GAMMAS = [1e-2, Schedule("exponential", 1e-1, steps=2, factor=0.5), 1.0]
SIGMAS = [1e-3, 0.5, 1.0]


def _members(seed: int, channels_last: bool) -> list[list[nn.Parameter]]:
    generator = torch.Generator().manual_seed(seed)
    members = []
    for _ in range(len(THRESHOLDS)):
        params = []
        for shape in SHAPES:
            w = torch.randint(0, 2, shape, generator=generator).float() * 2 - 1
            # A few weights not yet +-1 (they become their sign) and zeros.
            w.view(-1)[:2] = torch.tensor([0.25, 0.0])
            if channels_last and w.dim() == 4:
                w = w.contiguous(memory_format=torch.channels_last)
            params.append(nn.Parameter(w))
        members.append(params)
    return members


def _grads(step: int, members: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(100 + step)
    grads = []
    for _ in range(members):
        member = []
        for shape in SHAPES:
            g = torch.randn(shape, generator=generator) * 1e-3
            # Exact ties after the first step with gamma 1: w * m == threshold == 0.
            g.view(-1)[2] = 0.0
            member.append(g)
        grads.append(member)
    return grads


@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("one_pass", [False, True])
def test_fused_bop_is_bit_identical_to_separate_steps(
    second_order, foreach, channels_last, one_pass
):
    members = _members(0, channels_last)
    k = len(members)
    fused = [
        nn.Parameter(
            torch.cat([m[i].detach() for m in members]).contiguous(
                memory_format=torch.channels_last
                if members[0][i].dim() == 4 and channels_last
                else torch.contiguous_format
            )
        )
        for i in range(len(SHAPES))
    ]
    sigmas = SIGMAS if second_order else None
    fused_opt = FusedBop(fused, k, THRESHOLDS, GAMMAS, sigmas, foreach=foreach, one_pass=one_pass)
    separate = [
        Bop2ndOrder(params, THRESHOLDS[i], GAMMAS[i], SIGMAS[i], foreach=foreach)
        if second_order
        else Bop(params, THRESHOLDS[i], GAMMAS[i], foreach=foreach)
        for i, params in enumerate(members)
    ]
    for step in range(4):
        grads = _grads(step, k)
        for i, p in enumerate(fused):
            p.grad = torch.cat([grads[m][i] for m in range(k)])
        for m, params in enumerate(members):
            for p, g in zip(params, grads[m], strict=True):
                p.grad = g.clone()
        fused_opt.step()
        for opt in separate:
            opt.step()
        for i, p in enumerate(fused):
            for m in range(k):
                assert torch.equal(member_view(p, k)[m], members[m][i]), (step, i, m)
                state = separate[m].state[members[m][i]]
                assert torch.equal(member_view(fused_opt.state[p]["m"], k)[m], state["m"])
                if second_order:
                    assert torch.equal(member_view(fused_opt.state[p]["v"], k)[m], state["v"])
    fused_flips = fused_opt.read_flips()
    for m, opt in enumerate(separate):
        for (_, totals, steps), (_, total, own_steps) in zip(
            fused_flips, opt.read_flips(), strict=True
        ):
            assert totals[m].item() == total.item()
            assert steps == own_steps == 4
    assert fused_opt.current("threshold", 2) == THRESHOLDS[2](4)


def test_a_frozen_member_stops_changing_while_the_others_step():
    members = _members(1, False)
    k = len(members)
    fused = [nn.Parameter(torch.cat([m[i].detach() for m in members])) for i in range(3)]
    opt = FusedBop(fused, k, [0.0] * k, [1.0] * k)
    reference = Bop(members[0], 0.0, 1.0)
    opt.freeze(1)
    before = [member_view(p, k)[1].clone() for p in fused]
    for step in range(3):
        grads = _grads(step, k)
        for i, p in enumerate(fused):
            g = torch.cat([grads[m][i] for m in range(k)])
            member_view(g, k)[1].fill_(float("nan"))  # a diverged member's gradients
            p.grad = g
        for p, g in zip(members[0], grads[0], strict=True):
            p.grad = g.clone()
        opt.step()
        reference.step()
    for i, p in enumerate(fused):
        assert torch.equal(member_view(p, k)[1], before[i])
        assert torch.equal(member_view(p, k)[0], members[0][i])
    assert [totals[1].item() for _, totals, _ in opt.read_flips()] == [0.0, 0.0, 0.0]


def test_rates_are_validated_per_member():
    p = nn.Parameter(torch.ones(4, 2))
    with pytest.raises(ValueError, match="gamma"):
        FusedBop([p], 2, [0.0, 0.0], [1e-3, 2.0])
    with pytest.raises(ValueError, match="2 threshold values for 3 members"):
        FusedBop([nn.Parameter(torch.ones(6, 2))], 3, [0.0, 0.0], [1e-3] * 3)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_member_optimizers_step_each_member_as_torch_does_alone(kind):
    k, lrs = 3, [1e-2, 1e-3, 0.5]
    generator = torch.Generator().manual_seed(0)
    alone = [
        [
            nn.Parameter(torch.randn(4, 3, generator=generator)),
            nn.Parameter(torch.randn(4, generator=generator)),
        ]
        for _ in range(k)
    ]
    fused = [nn.Parameter(torch.cat([a[i].detach() for a in alone])) for i in range(2)]

    def make(params, lr):
        if kind == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9)
        return torch.optim.Adam(params, lr=lr, weight_decay=1e-4)

    members = MemberOptimizers(fused, k, lambda m, views: make(views, lrs[m]))
    separate = [make(params, lrs[m]) for m, params in enumerate(alone)]
    for _ in range(3):
        grads = [
            [torch.randn(4, 3, generator=generator), torch.randn(4, generator=generator)]
            for _ in range(k)
        ]
        for i, p in enumerate(fused):
            p.grad = torch.cat([grads[m][i] for m in range(k)])
        for m, params in enumerate(alone):
            for p, g in zip(params, grads[m], strict=True):
                p.grad = g
        members.step()
        for opt in separate:
            opt.step()
    for i, p in enumerate(fused):
        for m in range(k):
            assert torch.equal(member_view(p, k)[m], alone[m][i])


def test_a_shared_optimizer_steps_members_as_their_own_would_and_keeps_frozen_ones():
    k = 3
    generator = torch.Generator().manual_seed(1)
    start = [torch.randn(k * 4, 3, generator=generator), torch.randn(k * 4, generator=generator)]
    shared_params = [nn.Parameter(t.clone()) for t in start]
    member_params = [nn.Parameter(t.clone()) for t in start]
    shared = SharedOptimizer(shared_params, k, torch.optim.Adam(shared_params, lr=1e-2))
    members = MemberOptimizers(member_params, k, lambda m, views: torch.optim.Adam(views, lr=1e-2))
    shared.freeze(2)
    members.freeze(2)
    for _ in range(3):
        grads = [
            torch.randn(k * 4, 3, generator=generator),
            torch.randn(k * 4, generator=generator),
        ]
        for p, q, g in zip(shared_params, member_params, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        shared.step()
        members.step()
    for p, q, first in zip(shared_params, member_params, start, strict=True):
        assert torch.equal(p, q)
        assert torch.equal(member_view(p, k)[2], member_view(first, k)[2])
