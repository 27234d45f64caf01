"""Bench section ``train_step``: what binarization costs in a training step, and how
close the step comes to what the hardware can do.

A BinaryNet training step at batch 100 (10 in ``--quick``'s smoke run) through the real
:class:`~bopsweep.train.Trainer` (Bop + Adam) against the same network in full
precision with Adam, in float32 and, where the device computes bf16 natively, under
bfloat16 autocast (emulated bf16 is ~20x slower and measuring it would only make the
bench long); and the float32 step against its roofline, measured in the same run: the
step's FLOPs (counted by torch's ``FlopCounterMode``) at the best FLOP/s of a large
sgemm and a large convolution on the same threads. A figure from another stack (Larq +
TensorFlow) was the anchor once; measured side by side it varied 2x between runs of the
same machine, while the roofline needs no other stack and moves with the machine it is
measured on.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from bopsweep.bench.common import (
    Context,
    Row,
    binarynet_config,
    interleaved,
    ms,
    target,
)

# The float32 step's share of the roofline it must reach: the rest is what is not
# matrix products (BatchNorm, the sign functions, Bop's update, the data's flips).
ROOFLINE_GOAL = 0.9
# sgemm of this size: large enough for the BLAS to reach its peak on a CPU's cores
# (a 2-core EPYC: within 2% of 4096), small enough to time in a fraction of a second.
SGEMM_SIZE = 2048
# A 3x3 convolution as BinaryNet's widest blocks (512 channels at 8x8, NHWC, batch 64):
# oneDNN's convolutions can outrun the BLAS's sgemm (MKL takes its AVX2 code path on
# AMD CPUs: 200 against 550 GFLOP/s on an AVX-512 EPYC), and the roofline is the
# faster of the two, what torch reaches on this machine at all.
CONV_SHAPE = (64, 512, 8, 8)


def _best_time(run, device: torch.device, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds + 1):  # the first builds the library's buffers
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def peak_flops_per_s(device: torch.device, rounds: int = 5) -> dict[str, float]:
    """The best float32 FLOP/s over ``rounds`` of an ``SGEMM_SIZE`` matrix product
    (``sgemm``) and of a ``CONV_SHAPE`` 3x3 convolution (``conv``)."""
    n = SGEMM_SIZE
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    sgemm = 2 * n**3 / _best_time(lambda: torch.mm(a, b, out=out), device, rounds)
    batch, channels, height, width = CONV_SHAPE
    x = torch.randn(CONV_SHAPE, device=device).to(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, device=device)
    w = w.to(memory_format=torch.channels_last)
    conv_flops = 2 * batch * channels * channels * 9 * height * width
    conv = conv_flops / _best_time(
        lambda: torch.nn.functional.conv2d(x, w, padding=1), device, rounds
    )
    return {"sgemm": sgemm, "conv": conv}


def step_flops(step) -> float:
    """FLOPs of one call of ``step`` (matrix products and convolutions, forward and
    backward), as torch's ``FlopCounterMode`` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


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


def _trainers(device: torch.device, precision: str, batch_size: int):
    from bopsweep.bnn.case import CaseOptimizer
    from bopsweep.data import make_synthetic
    from bopsweep.train import Trainer

    config = binarynet_config(device.type, precision, batch_size)
    # One batch per epoch: each train_epoch() is one step of the real loop.
    data = make_synthetic(n_train=batch_size, n_val=2)
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
    batch = plan.binarynet_batch_size
    precisions = ("fp32", "bf16") if context.native_bf16 else ("fp32",)
    candidates = {}
    for precision in precisions:
        bnn, fp = _trainers(device, precision, batch)
        candidates[f"bnn_{precision}"] = bnn.train_epoch
        candidates[f"fp_{precision}"] = fp.train_epoch
    timings = interleaved(
        candidates,
        plan.train_rounds,
        warmup=plan.train_warmup,
        device=device,
        budget_s=plan.train_budget_s,
    )
    out: dict[str, Any] = {"batch_size": batch, "precisions": list(precisions), **timings}
    if "bf16" not in precisions:
        out["bf16"] = context.not_native()
    for name, timing in timings.items():
        out[f"{name}_images_per_s"] = batch / timing["median_s"]
    for precision in precisions:
        ratio = timings[f"bnn_{precision}"]["median_s"] / timings[f"fp_{precision}"]["median_s"]
        out[f"bnn_vs_fp_{precision}"] = ratio
    # The roofline: after the timings, on the same threads and the same warm caches.
    out["step_gflop_per_image"] = step_flops(candidates["bnn_fp32"]) / batch / 1e9
    peaks = peak_flops_per_s(device, rounds=1 if plan.quick else 5)
    out["sgemm_gflop_per_s"] = peaks["sgemm"] / 1e9
    out["conv_gflop_per_s"] = peaks["conv"] / 1e9
    out["peak_gflop_per_s"] = max(peaks.values()) / 1e9
    out["roofline_images_per_s"] = out["peak_gflop_per_s"] / out["step_gflop_per_image"]
    out["bnn_fp32_of_roofline"] = out["bnn_fp32_images_per_s"] / out["roofline_images_per_s"]
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
    targets["roofline"] = target(
        out["bnn_fp32_of_roofline"],
        ROOFLINE_GOAL,
        ">=",
        f"BNN float32 images/s / the roofline ({out['step_gflop_per_image']:.2f} GFLOP per "
        f"image at {out['peak_gflop_per_s']:.0f} GFLOP/s, the faster of a large sgemm "
        "and a large convolution)",
    )
    out["targets"] = targets
    return out


def rows(section: dict[str, Any]) -> list[Row]:
    name = "train_step"
    out: list[Row] = []
    batch = section.get("batch_size", 100)
    for precision in section.get("precisions", ("fp32", "bf16")):
        for kind in ("bnn", "fp"):
            key = f"{kind}_{precision}"
            rate = section[f"{key}_images_per_s"]
            what = f"{rate:.1f} ({ms(section[key])}/step of {batch})"
            out.append((name, f"{key} images/s", what, "", ""))
    if "bf16" in section:
        out.append((name, "bnn_bf16, fp_bf16", section["bf16"], "", ""))
    out.append(
        (
            name,
            "roofline (float32)",
            f"{section['roofline_images_per_s']:.1f} images/s: "
            f"{section['step_gflop_per_image']:.2f} GFLOP/image at "
            f"{section['peak_gflop_per_s']:.0f} GFLOP/s (sgemm "
            f"{section['sgemm_gflop_per_s']:.0f}, conv {section['conv_gflop_per_s']:.0f})",
            "",
            "",
        )
    )
    return out
