"""Which precision a run's forward passes use: ``auto``, ``fp32`` or ``bf16``.

bfloat16 autocast is a large win only where the hardware multiplies in bf16: CUDA GPUs
with bf16 tensor cores (compute capability 8.0 and later) and CPUs with AVX512-BF16 or
AMX (BinaryNet trains about twice as fast there). Elsewhere it is a trap: on an
AVX2-only CPU oneDNN emulates bf16 and a BinaryNet step runs about 20x slower than in
float32. So ``auto`` needs to know what the hardware does, and this module is the one
place that asks it: the Trainer resolves its precision here and the bench decides
here whether bf16 is worth measuring.

There is no float16 precision. GPUs before compute capability 8.0 (V100, T4) have
float16 tensor cores but no bf16 (and no TF32): runs there use fp32. float16's narrow
exponent range needs loss scaling, and Bop reads gradient magnitudes: its moving
average is compared with a threshold, so the gradients must be unscaled before Bop
steps, and a step whose gradients overflowed skipped for both optimizers of the
:class:`~bopsweep.bnn.case.CaseOptimizer`, which ``torch.amp.GradScaler.step`` does
not accept (it steps one ``torch.optim.Optimizer``). An fp16 precision needs that in
the training loop (``scaler.scale(loss).backward()``, ``scaler.unscale_`` of each
optimizer, a skipped step on inf/NaN, ``scaler.update()``) and its scaler's state in
checkpoints; until then those GPUs train in float32.

The probe can be overridden with the environment variable ``BOPSWEEP_NATIVE_BF16``:
``0`` makes every device "not native" (what an AVX2-only machine sees), ``1`` makes
every device native; unset or empty, the hardware is probed.
"""

from __future__ import annotations

import functools
import os
import platform
import warnings
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_ENV = "BOPSWEEP_NATIVE_BF16"

# CPU flags (as /proc/cpuinfo spells them) of instructions that multiply bf16 natively.
_X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> frozenset[str]:
    """The ``flags`` (x86) or ``Features`` (Arm) of the first CPU in /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def _cpu_native_bf16() -> bool:
    # torch's own probes (cpuinfo: CPUID plus the OS's consent to the AVX-512 / AMX
    # state) where this torch has them; every CPU with AMX tiles so far has AMX-BF16.
    # Not torch.ops.mkldnn._is_mkldnn_bf16_supported: it says yes on any AVX-512 CPU
    # (BW + VL + DQ), including those without BF16, where oneDNN emulates it slowly.
    probes = [
        getattr(torch.cpu, f"{name}_supported", None)
        for name in ("_is_avx512_bf16", "_is_amx_tile")
    ]
    flags = _cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags  # Armv8.6 BFloat16 (Graviton3, Neoverse V1 and later)
    if all(callable(probe) for probe in probes):
        return any(probe() for probe in probes)
    return bool(flags & _X86_BF16_FLAGS)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes in bfloat16 natively (see the module docstring for
    the ``BOPSWEEP_NATIVE_BF16`` override)."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced:
        return forced not in ("0", "false", "no", "off")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:
            return True
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return _cpu_native_bf16()
    return False


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


@functools.cache
def _warn_not_native(device_type: str) -> None:
    """Once per process and device type: a bf16 run on hardware that emulates it."""
    kind = {"cpu": "CPU", "cuda": "GPU"}.get(device_type, device_type)
    warnings.warn(
        f"precision bf16 asked for, but this {kind} has no native bfloat16 "
        "(no AVX512-BF16 or AMX on a CPU, compute capability < 8.0 on a GPU): it is "
        "emulated and can be many times slower than fp32; precision auto picks fp32 here",
        RuntimeWarning,
        stacklevel=3,
    )


def resolve_precision(requested: str, device: torch.device, model: nn.Module) -> str:
    """``fp32`` or ``bf16`` for a run of ``model`` on ``device``.

    ``auto`` is bf16 where the device computes bf16 natively and the model has
    convolutions, fp32 otherwise: a dense-only model (the MLP) spends its time in
    small matrix products and in autocast's casts, and is slower under bf16 autocast
    than in float32 even on a native CPU. An explicit ``bf16`` is obeyed, with a
    warning once per process where it is not native.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; valid precisions: {PRECISIONS}")
    native = native_bf16(device)
    if requested == "auto":
        return "bf16" if native and has_convolutions(model) else "fp32"
    if requested == "bf16" and not native:
        _warn_not_native(device.type)
    return requested
