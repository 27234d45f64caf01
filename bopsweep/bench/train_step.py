"""Bench section ``train_step``: what binarization costs in a training step, and how
the step compares with the original Larq + TensorFlow stack.

A BinaryNet training step at batch 100 through the real
:class:`~bopsweep.train.Trainer` (Bop + Adam) against the same network in full
precision with Adam, in float32 and, where the device computes bf16 natively, under
bfloat16 autocast (emulated bf16 is ~20x slower and measuring it would only make the
bench long); and against the Larq figure measured on a 2-core AMD EPYC of the same
vector width (:data:`LARQ_IMAGES_PER_S`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from bopsweep.bench.common import (
    BATCH_SIZE,
    Context,
    Row,
    binarynet_config,
    interleaved,
    ms,
    target,
)

# Larq 0.14 + TensorFlow 2.21 (Bop + Adam through Larq's CaseOptimizer) training the
# same BinaryNet at batch 100 on CIFAR-shaped data, 2 threads on a 2-core AMD EPYC:
# one with AVX-512 (and avx512_bf16), one with AVX2 only. TensorFlow, like torch,
# runs about 4x slower on the second, so each CPU is compared with its own kind.
LARQ_IMAGES_PER_S = {"AVX512": 48.7, "AVX2": 12.2}
LARQ_GOAL_FACTOR = 1.5


def larq_anchor(device: torch.device) -> tuple[float, str]:
    """Larq's figure for this kind of CPU (its AVX-512 one off the CPU), and which."""
    capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else ""
    kind = "AVX2" if device.type == "cpu" and "AVX512" not in capability else "AVX512"
    return LARQ_IMAGES_PER_S[kind], kind


def full_precision_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same network with real-valued kernels and no input binarization: ordinary
    convolutions and dense layers with the same shapes, BatchNorm unchanged."""
    from bopsweep.bnn.layers import binary_layers

    model = copy.deepcopy(model)
    for _, layer in list(binary_layers(model)):
        layer.binary_kernel = False
        layer.input_quantizer = None
        layer.kernel_quantizer = None
        layer.reset_parameters()
    return model


def _trainers(device: torch.device, precision: str):
    from bopsweep.bnn.optim import CaseOptimizer
    from bopsweep.data import make_synthetic
    from bopsweep.train import Trainer

    config = binarynet_config(device.type, precision)
    # One batch per epoch: each train_epoch() is one step of the real loop.
    data = make_synthetic(n_train=BATCH_SIZE, n_val=2)
    bnn = Trainer(config, data, device=device)
    fp = Trainer(config, data, device=device)
    fp.model = full_precision_copy(fp.model)
    fp.optimizer = CaseOptimizer(
        fp.model,
        torch.optim.Adam(fp.model.parameters(), lr=fp.hparams.lr),
        None,
        count_flips=False,
    )
    return bnn, fp


def measure(context: Context) -> dict[str, Any]:
    device, plan = context.device, context.plan
    precisions = ("fp32", "bf16") if context.native_bf16 else ("fp32",)
    candidates = {}
    for precision in precisions:
        bnn, fp = _trainers(device, precision)
        candidates[f"bnn_{precision}"] = bnn.train_epoch
        candidates[f"fp_{precision}"] = fp.train_epoch
    timings = interleaved(
        candidates,
        plan.train_rounds,
        warmup=plan.train_warmup,
        device=device,
        budget_s=plan.train_budget_s,
    )
    out: dict[str, Any] = {"batch_size": BATCH_SIZE, "precisions": list(precisions), **timings}
    if "bf16" not in precisions:
        out["bf16"] = context.not_native()
    for name, timing in timings.items():
        out[f"{name}_images_per_s"] = BATCH_SIZE / timing["median_s"]
    larq, larq_cpu = larq_anchor(context.device)
    for precision in precisions:
        ratio = timings[f"bnn_{precision}"]["median_s"] / timings[f"fp_{precision}"]["median_s"]
        out[f"bnn_vs_fp_{precision}"] = ratio
        out[f"bnn_{precision}_vs_larq"] = out[f"bnn_{precision}_images_per_s"] / larq
    best = max(precisions, key=lambda p: out[f"bnn_{p}_images_per_s"])
    best_rate = out[f"bnn_{best}_images_per_s"]
    out["larq_images_per_s"], out["larq_cpu"] = larq, larq_cpu
    out["best_precision"] = best
    targets = {
        f"bnn_vs_fp_{precision}": target(
            out[f"bnn_vs_fp_{precision}"],
            1.25,
            "<=",
            "BNN step / full-precision step, "
            + ("float32" if precision == "fp32" else "bf16 autocast"),
        )
        for precision in precisions
    }
    targets["vs_larq"] = target(
        best_rate / larq,
        LARQ_GOAL_FACTOR,
        ">=",
        f"BNN images/s ({best}) / Larq's {larq} (a {larq_cpu} CPU figure)",
    )
    out["targets"] = targets
    return out


def rows(section: dict[str, Any]) -> list[Row]:
    name = "train_step"
    out: list[Row] = []
    for precision in section.get("precisions", ("fp32", "bf16")):
        for kind in ("bnn", "fp"):
            key = f"{kind}_{precision}"
            rate = section[f"{key}_images_per_s"]
            out.append((name, f"{key} images/s", f"{rate:.1f} ({ms(section[key])}/step)", "", ""))
    if "bf16" in section:
        out.append((name, "bnn_bf16, fp_bf16", section["bf16"], "", ""))
    return out
