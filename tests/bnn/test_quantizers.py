"""ste_sign: sign with sign(0) = +1 forward, straight-through gradient backward."""

from __future__ import annotations

import pytest
import torch

from bopsweep.bnn.quantizers import QUANTIZERS, sign, ste_sign


def test_sign_maps_zero_to_plus_one():
    x = torch.tensor([-3.0, -1e-30, -0.0, 0.0, 1e-30, 2.0])
    assert sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sign_keeps_dtype(dtype):
    x = torch.tensor([-0.5, 0.5], dtype=dtype)
    assert sign(x).dtype == dtype


def test_ste_sign_forward():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    assert ste_sign(x).tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]


def test_ste_sign_gradient_passes_where_abs_at_most_one():
    x = torch.tensor([-2.0, -1.0001, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0001, 2.0], requires_grad=True)
    upstream = torch.arange(1.0, 10.0)
    ste_sign(x).backward(upstream)
    # |x| <= 1 is inclusive: -1 and +1 pass, anything beyond is blocked.
    assert x.grad.tolist() == [0.0, 0.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0, 0.0]


def test_ste_sign_gradient_through_a_sum():
    x = torch.tensor([[0.3, -4.0], [-0.9, 1.5]], requires_grad=True)
    (ste_sign(x) * torch.tensor([[2.0, 3.0], [5.0, 7.0]])).sum().backward()
    assert x.grad.tolist() == [[2.0, 0.0], [5.0, 0.0]]


def test_registry_names_ste_sign():
    assert QUANTIZERS["ste_sign"] is ste_sign
