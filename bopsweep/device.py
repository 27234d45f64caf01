"""What a run asks of its GPU besides the device itself: how many there are, how much
of one's memory it may take, and how float32 products are computed on it.

* :func:`visible_gpu_count`: the GPUs this process may use, from the NVIDIA driver's
  listing and ``CUDA_VISIBLE_DEVICES``, without importing torch (``bopsweep plan``
  and the sweep's preflight must not pay for it).
* :func:`limit_gpu_memory`: Ray's ``resources.gpu: 0.25`` is scheduling arithmetic
  only; nothing stops one of four trials sharing a GPU from taking all of its memory
  and failing the other three. The trial caps its own caching allocator at its share
  (:func:`gpu_memory_fraction`), less the CUDA context each process holds outside
  that allocator.
* :func:`enable_tf32`: float32 matrix products on tensor cores (Ampere and later).
  TF32 keeps float32's exponent and 10 bits of mantissa, so +-1 operands are exact and
  a product of binary activations and binary kernels accumulated in float32 is the
  same number as in strict float32. Only layers with real-valued inputs (the first
  layer, the classifier) round their operands; cuDNN's convolutions already run in
  TF32 by default, this extends it to the dense layers.

A sweep's trial caps its memory as it starts (it knows its share from Ray); every run
on CUDA, in a sweep or not, enables TF32 where its trainer picks the device. Nothing
here imports Ray or MLflow, and torch only when a function needs it.
"""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# What each CUDA process holds outside torch's caching allocator (the context, cuBLAS
# and cuDNN handles, kernel images; with CUDA's lazy module loading a few hundred MiB):
# left out of each share, so that the shares' contexts and allocations together fit.
# scripts/gpu_smoke.py measures it on the GPU at hand (cuda_context_mib): 610 MiB on an
# H200 after a first kernel (torch 2.11, CUDA 13), before cuBLAS and cuDNN add theirs.
CUDA_CONTEXT_BYTES = 768 * 2**20


def visible_gpu_count() -> int:
    """GPUs this process (and a local Ray instance it starts) would find: the NVIDIA
    driver's devices, narrowed by ``CUDA_VISIBLE_DEVICES`` where it is set."""
    found = len(glob.glob("/proc/driver/nvidia/gpus/*"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    # CUDA stops at the first invalid entry ("-1" is the usual way to hide all).
    ids = []
    for entry in visible.split(","):
        entry = entry.strip()
        if not entry or entry == "-1":
            break
        ids.append(entry)
    return min(len(ids), found)


def gpu_memory_fraction(
    share: float, total_bytes: int, context_bytes: int = CUDA_CONTEXT_BYTES
) -> float | None:
    """The fraction of a GPU's memory a process with ``share`` of the GPU may allocate
    (``torch.cuda.set_per_process_memory_fraction``), or None for no cap: ``share`` 0
    (no GPU) or a whole GPU or more (no other trial is placed on it)."""
    if not 0 < share < 1:
        return None
    allowed = share * total_bytes - context_bytes
    # A share too small to hold its context still gets a sliver: the trial fails
    # with torch's own out-of-memory message, which names the cap.
    return max(allowed / total_bytes, 0.01)


def limit_gpu_memory(share: float, device: torch.device | int | None = None) -> float | None:
    """Cap this process's CUDA caching allocator at its ``share`` of ``device`` (see
    :func:`gpu_memory_fraction`); returns the fraction set, None when none was."""
    import torch

    if not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = gpu_memory_fraction(share, total)
    if fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def enable_tf32() -> None:
    """Let float32 matrix products use TF32 tensor cores (see the module docstring)."""
    import torch

    # The flag of the CUDA matmul backend alone: torch.set_float32_matmul_precision
    # would switch the CPU's oneDNN matmuls as well, and the newer per-backend
    # fp32_precision API, once used, makes torch.get_float32_matmul_precision (which
    # torch.compile's autotuning reads) raise for mixing the two APIs.
    torch.backends.cuda.matmul.allow_tf32 = True
