"""``bopsweep bench``: how fast each part of bopsweep is, against stated targets.

One module per section, each with its measurement (``measure``) and the rows it adds
to the summary table (``rows``); :mod:`bopsweep.bench.common` holds what they share
(the plan, interleaved timing with IQRs, targets, memory probes, machine info).

Sections, in the order they run:

* ``bop_step``: Bop's update against Adam(foreach) and the memory-traffic bound.
* ``train_step``: a BinaryNet training step against the same network in full
  precision, in float32 and (where native) bf16, and against Larq + TensorFlow.
* ``data_pipeline``: the device pipeline against torchvision DataLoaders.
* ``logging``: the time an epoch waits for MLflow logging against the epoch.
* ``sweep_overhead``: a real Ray Tune + MLflow sweep against its trials run directly.
* ``sweep_scale``: sweeps of 10, 100 and 1,000 one-epoch trials: the cost per trial
  beyond the training.
* ``memory``: peak RSS of training and of a sweep; one dataset copy per node.
* ``fusion``: the quickstart fused vs unfused; BinaryNet with K members fused vs K
  separate trainers.
* ``cli_startup``: the commands that need no torch against ``import torch``.

bf16 is measured only where the device computes it natively
(:func:`bopsweep.precision.native_bf16`); elsewhere the rows say so and no target
depends on it. Comparisons stop at their plan's time budget (after a minimum number of
rounds), so a slow CPU gets fewer rounds rather than a longer bench.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from bopsweep.bench import (
    bop_step,
    cli_startup,
    data_pipeline,
    fusion,
    logging,
    memory,
    sweep_overhead,
    sweep_scale,
    train_step,
)
from bopsweep.bench.common import FULL, QUICK, Context, Plan, Row, machine_info, target_rows

_MODULES: dict[str, ModuleType] = {
    "bop_step": bop_step,
    "train_step": train_step,
    "data_pipeline": data_pipeline,
    "logging": logging,
    "sweep_overhead": sweep_overhead,
    "sweep_scale": sweep_scale,  # after sweep_overhead: --quick reads its run
    "memory": memory,  # after sweep_overhead: it reports the sweep's peak memory
    "fusion": fusion,
    "cli_startup": cli_startup,
}
SECTIONS = tuple(_MODULES)

__all__ = ["FULL", "QUICK", "SECTIONS", "Plan", "failed_sections", "run_bench", "table_rows"]


def run_bench(
    device_name: str = "cpu",
    *,
    quick: bool = False,
    only: tuple[str, ...] = (),
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Every section (or those in ``only``), in order; a section that fails records
    its error and the rest still run."""
    from bopsweep.errors import UserError

    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise UserError(
            f"unknown bench section {', '.join(map(repr, unknown))}; "
            f"valid sections: {', '.join(SECTIONS)}"
        )
    if device_name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device_name!r}; valid devices: cpu, cuda")
    if device_name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for, but CUDA is not available here")
    device = torch.device(device_name)
    plan = QUICK if quick else FULL
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine_info(device),
        "plan": asdict(plan),
        "sections": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="bopsweep-bench-"))
    context = Context(device, plan, workdir, results["sections"])
    try:
        for name in [name for name in SECTIONS if not only or name in only]:
            progress(f"{name}...")
            section_start = time.perf_counter()
            try:
                section = _MODULES[name].measure(context)
            except Exception as error:  # one broken section must not hide the others
                section = {
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc()[-4000:],
                }
            section["elapsed_s"] = time.perf_counter() - section_start
            results["sections"][name] = section
            progress(f"{name} done in {section['elapsed_s']:.1f} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["elapsed_s"] = time.perf_counter() - started
    return results


def failed_sections(results: dict[str, Any]) -> list[str]:
    return [name for name, section in results["sections"].items() if "error" in section]


def table_rows(results: dict[str, Any]) -> list[Row]:
    """(section, figure, value, target, met) rows of the summary table."""
    rows: list[Row] = []
    sections = results["sections"]
    for name in [name for name in SECTIONS if name in sections]:
        section = sections[name]
        if "error" in section:
            rows.append((name, "error", section["error"][:120], "", "NO"))
            continue
        rows += _MODULES[name].rows(section)
        rows += target_rows(name, section)
    return rows
