"""Bench section ``bop_step``: is Bop's update as cheap as it can be?

One Bop step over all BinaryNet binary kernels (foreach and the single-tensor loop)
against ``torch.optim.Adam(foreach=True)`` on the same shapes, and against the
memory-traffic bound of the update: the bytes Bop must read and write divided by the
measured copy bandwidth.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bopsweep.bench.common import Context, Row, fmt, interleaved, ms, target

# Bop reads the gradient, the moving average and the weight, and writes the last two.
BOP_BYTES_PER_WEIGHT = 5 * 4


def measure(context: Context) -> dict[str, Any]:
    from bopsweep.bnn.layers import binary_parameters
    from bopsweep.bnn.models import build_model
    from bopsweep.bnn.optim import Bop

    device, plan = context.device, context.plan
    model = build_model("binarynet", (3, 32, 32), 10).to(device)
    # The layout the Trainer gives conv kernels.
    model.to(memory_format=torch.channels_last)
    kernels = [p.detach() for p in binary_parameters(model)]
    numel = sum(k.numel() for k in kernels)
    generator = torch.Generator(device).manual_seed(0)
    grads = [
        torch.randn(k.shape, generator=generator, device=device)
        .mul_(1e-3)
        .to(memory_format=torch.channels_last if k.dim() == 4 else torch.contiguous_format)
        for k in kernels
    ]

    def params() -> list[nn.Parameter]:
        out = [nn.Parameter(k.clone(memory_format=torch.preserve_format)) for k in kernels]
        for p, g in zip(out, grads, strict=True):
            p.grad = g
        return out

    bop_foreach = Bop(params(), threshold=1e-6, gamma=1e-3, foreach=True)
    bop_single = Bop(params(), threshold=1e-6, gamma=1e-3, foreach=False)
    adam = torch.optim.Adam(params(), lr=1e-3, foreach=True)
    # Twice the size of all the kernels together: far larger than any cache.
    source = torch.ones(2 * numel, device=device)
    destination = torch.empty_like(source)
    timings = interleaved(
        {
            "bop_foreach": bop_foreach.step,
            "bop_single_tensor": bop_single.step,
            "adam_foreach": adam.step,
            "copy": lambda: destination.copy_(source),
        },
        plan.rounds,
        number=plan.bop_steps_per_round,
        device=device,
        budget_s=plan.bop_budget_s,
    )
    bandwidth = 2 * source.numel() * source.element_size() / timings["copy"]["median_s"]
    bound_s = numel * BOP_BYTES_PER_WEIGHT / bandwidth
    bop_s = timings["bop_foreach"]["median_s"]
    vs_adam = bop_s / timings["adam_foreach"]["median_s"]
    vs_bound = bop_s / bound_s
    return {
        "binary_weights": numel,
        "tensors": len(kernels),
        **timings,
        "copy_bytes": 2 * source.numel() * source.element_size(),
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "bop_bytes_per_step": numel * BOP_BYTES_PER_WEIGHT,
        "memory_bound_s": bound_s,
        "bop_vs_adam_foreach": vs_adam,
        "bop_vs_memory_bound": vs_bound,
        "single_tensor_vs_foreach": timings["bop_single_tensor"]["median_s"] / bop_s,
        "targets": {
            "bop_vs_adam_foreach": target(vs_adam, 1.0, "<=", "Bop step / Adam(foreach) step"),
            "bop_vs_memory_bound": target(
                vs_bound, 3.0, "<=", "Bop step / (bytes moved / copy bandwidth)"
            ),
        },
    }


def rows(section: dict[str, Any]) -> list[Row]:
    name = "bop_step"
    out: list[Row] = [
        (name, key, ms(section[key]), "", "")
        for key in ("bop_foreach", "bop_single_tensor", "adam_foreach")
    ]
    out.append((name, "memory bound", f"{section['memory_bound_s'] * 1e3:.1f} ms", "", ""))
    out.append((name, "copy bandwidth", fmt(section["copy_bandwidth_gb_s"], " GB/s"), "", ""))
    return out
