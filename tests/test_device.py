"""GPU counting, a trial's memory cap for its share of a GPU, and TF32 products.

The arithmetic and the plumbing are checked on any machine (torch.cuda stood in for
where there is no GPU); the tests marked "needs CUDA" check the real thing and run
in scripts/gpu_smoke.sh on a GPU machine.
"""

from __future__ import annotations

import pytest
import torch

from bopsweep import device
from bopsweep.device import (
    CUDA_CONTEXT_BYTES,
    enable_tf32,
    gpu_memory_fraction,
    limit_gpu_memory,
    visible_gpu_count,
)

GIB = 2**30
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def four_gpus(monkeypatch):
    """A machine whose NVIDIA driver lists four GPUs."""
    listed = [f"/proc/driver/nvidia/gpus/0000:0{i}:00.0" for i in range(4)]
    monkeypatch.setattr(device.glob, "glob", lambda pattern: listed)


@pytest.mark.parametrize(
    ("visible", "count"),
    [(None, 4), ("", 0), ("-1", 0), ("0,1", 2), ("2", 1), ("0,-1,1", 1), ("0,1,2,3,4,5", 4)],
)
def test_visible_gpus_follow_cuda_visible_devices(four_gpus, monkeypatch, visible, count):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert visible_gpu_count() == count


def test_no_driver_no_gpus(monkeypatch):
    monkeypatch.setattr(device.glob, "glob", lambda pattern: [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert visible_gpu_count() == 0


def test_a_share_of_a_gpu_caps_memory_at_the_share_less_a_context():
    total = 80 * GIB
    assert gpu_memory_fraction(0.25, total) == pytest.approx(
        (20 * GIB - CUDA_CONTEXT_BYTES) / total
    )
    assert gpu_memory_fraction(0.5, total, context_bytes=0) == 0.5
    # Four trials of 0.25: their caps and contexts fit in the GPU together.
    assert 4 * (gpu_memory_fraction(0.25, total) * total + CUDA_CONTEXT_BYTES) <= total
    # No share (a CPU trial) or whole GPUs (no other trial on them): no cap.
    for share in (0.0, 1.0, 2.0):
        assert gpu_memory_fraction(share, total) is None
    # A share smaller than a context still gets a sliver (torch then names the cap).
    assert gpu_memory_fraction(0.001, 16 * GIB) == 0.01


def test_the_cap_is_set_through_torch(monkeypatch):
    calls = []

    class Properties:
        total_memory = 40 * GIB

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Properties)
    monkeypatch.setattr(
        torch.cuda,
        "set_per_process_memory_fraction",
        lambda fraction, device=None: calls.append(fraction),
    )
    assert limit_gpu_memory(0.5) == gpu_memory_fraction(0.5, 40 * GIB)
    assert calls == [gpu_memory_fraction(0.5, 40 * GIB)]
    assert limit_gpu_memory(1.0) is None and len(calls) == 1


def test_no_cap_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert limit_gpu_memory(0.25) is None


@pytest.fixture
def restore_tf32():
    before = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def test_tf32_is_the_cuda_matmul_flag_alone(restore_tf32):
    mkldnn_before = torch.backends.mkldnn.matmul.fp32_precision
    enable_tf32()
    assert torch.backends.cuda.matmul.allow_tf32
    # The CPU's oneDNN products stay float32, and torch.compile's autotuning can still
    # read the precision (mixing the old and the new TF32 APIs makes that raise).
    assert torch.backends.mkldnn.matmul.fp32_precision == mkldnn_before
    assert torch.get_float32_matmul_precision() == "high"


@needs_cuda
def test_tf32_products_of_plus_minus_one_are_exact(restore_tf32):
    generator = torch.Generator("cuda").manual_seed(0)
    shape = (512, 4096)
    a = torch.randint(0, 2, shape, generator=generator, device="cuda").float() * 2 - 1
    b = torch.randint(0, 2, shape[::-1], generator=generator, device="cuda").float() * 2 - 1
    torch.backends.cuda.matmul.allow_tf32 = False
    strict = a @ b
    enable_tf32()
    assert torch.equal(a @ b, strict)
    # Real-valued operands are rounded: TF32 is really in use.
    x = torch.randn(shape, generator=generator, device="cuda")
    y = torch.randn(shape[::-1], generator=generator, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    exact = x @ y
    enable_tf32()
    if torch.cuda.get_device_capability()[0] >= 8:
        assert not torch.equal(x @ y, exact)


@needs_cuda
def test_the_cap_holds_on_a_real_gpu():
    before = torch.cuda.get_per_process_memory_fraction()
    try:
        fraction = limit_gpu_memory(0.25)
        assert fraction == pytest.approx(torch.cuda.get_per_process_memory_fraction())
        total = torch.cuda.get_device_properties(0).total_memory
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(0.3 * total), dtype=torch.uint8, device="cuda")
        held = torch.empty(int(0.2 * total), dtype=torch.uint8, device="cuda")
        del held
    finally:
        torch.cuda.set_per_process_memory_fraction(before)
        torch.cuda.empty_cache()
