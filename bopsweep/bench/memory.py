"""Bench section ``memory``: how much memory training and a sweep take.

Peak RSS of a BinaryNet training loop (in a fresh process, float32 and, in a full run
where bf16 is native, bf16), of a sweep's driver plus its Ray processes (sampled by
``sweep_overhead``), and the private memory two trials on one node gain by getting
CIFAR-10 from the node's shared copy rather than loading it themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bopsweep.bench.common import (
    BATCH_SIZE,
    Context,
    Plan,
    Row,
    binarynet_config,
    mib,
    peak_rss_bytes,
    rss_bytes,
)


def training_memory_probe(
    device: str, precision: str, steps: int, batch_size: int = BATCH_SIZE
) -> dict[str, float]:
    """Run in a fresh process: RSS after imports, and peak RSS over ``steps`` BinaryNet
    training steps through the Trainer."""
    from bopsweep.data import make_synthetic
    from bopsweep.train import Trainer

    data = make_synthetic(n_train=batch_size * steps, n_val=2)
    before = rss_bytes()
    config = binarynet_config(device, precision, batch_size)
    trainer = Trainer(config, data)
    trainer.train_epoch()
    out = {
        "rss_before_mb": mib(before),
        "peak_rss_mb": mib(peak_rss_bytes()),
        "steps": steps,
        "batch_size": batch_size,
    }
    if trainer.device.type == "cuda":
        out["cuda_peak_allocated_mb"] = mib(torch.cuda.max_memory_allocated())
    return out


def _private_mb() -> float | None:
    """This process's private memory (USS: pages no other process maps), in MiB."""
    try:
        rollup = Path("/proc/self/smaps_rollup").read_text()
    except OSError:  # not Linux
        return None
    kib = sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Private_"))
    return kib / 1024


def _write_cifar10(root: Path, per_batch: int) -> Path:
    """Random images in CIFAR-10's python-batches format, ``per_batch`` per file."""
    from bopsweep.data import CIFAR10_FILES
    from bopsweep.testing import write_cifar10_batch

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10_FILES:
        rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        write_cifar10_batch(folder / name, rows, rng.integers(0, 10, per_batch), name)
    return root


def dataset_sharing_probe(plan: Plan, workdir: Path) -> dict[str, Any]:
    """Two concurrent trial processes on one node get CIFAR-10 from the node's shared
    copy, then two load it themselves: each one's private memory growth."""
    import ray

    from bopsweep.config import TrainConfig
    from bopsweep.data import load_dataset
    from bopsweep.sweep import datacache, ray_backend

    root = _write_cifar10(workdir / "cifar10-full", plan.shared_images_per_batch)
    config = TrainConfig(model="mlp", dataset="cifar10", data_dir=str(root))

    @ray.remote(num_cpus=1)
    def trial(shared: bool) -> float | None:
        before = _private_mb()
        if shared:
            data = datacache.shared_dataset("bench", config)
            assert data is not None, "no shared copy on this node"
        else:
            data = load_dataset(config.dataset, config.data_dir)
        # Read every image, as an epoch does.
        int(data.train_x.sum()) + int(data.val_x.sum())
        after = _private_mb()
        return None if before is None else after - before

    started_here = not ray.is_initialized()
    if started_here:
        # The probe's workers' own log lines (torch's warnings) stay in their log files.
        ray_backend.init_local(num_cpus=2, logging_level="ERROR")
    try:
        actors = datacache.start("bench", {"cifar10"})
        try:
            shared = ray.get([trial.remote(True) for _ in range(2)])
        finally:
            datacache.stop(actors)
        own = ray.get([trial.remote(False) for _ in range(2)])
    finally:
        if started_here:
            ray_backend.shutdown()
    images = 6 * plan.shared_images_per_batch
    return {
        "images": images,
        "dataset_mb": images * 3072 / 2**20,
        "trials": 2,
        "shared_private_mb_per_trial": shared,
        "own_copy_private_mb_per_trial": own,
        "note": "private memory (USS) a trial gains by getting the dataset and reading it",
    }


def measure(context: Context) -> dict[str, Any]:
    device, plan = context.device, context.plan
    sweep = context.sections.get("sweep_overhead", {})
    out: dict[str, Any] = {}
    # --quick: one fresh process (bf16 peaks lower, activations being half the size).
    precisions = ["fp32"]
    if not plan.quick and context.native_bf16:
        precisions.append("bf16")
    elif not plan.quick:
        out["bf16"] = context.not_native()
    for precision in precisions:
        code = (
            "import json; from bopsweep.bench.memory import training_memory_probe as probe; "
            f"print(json.dumps(probe({device.type!r}, {precision!r}, {plan.memory_steps}, "
            f"{plan.binarynet_batch_size})))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory probe failed: {done.stderr.strip()[-800:]}")
        probe = json.loads(done.stdout.strip().splitlines()[-1])
        probe["training_mb"] = probe["peak_rss_mb"] - probe["rss_before_mb"]
        out[f"train_{precision}"] = probe
    if "peak_rss_total_mb" in sweep:
        out["sweep"] = {
            key: sweep[key] for key in ("peak_rss_total_mb", "peak_rss_driver_mb", "peak_processes")
        }
        out["sweep"]["trials"] = sweep["trials"]
        out["sweep"]["note"] = "driver + Ray processes, shared pages counted once per process"
    out["dataset_sharing"] = dataset_sharing_probe(plan, context.workdir)
    return out


def rows(section: dict[str, Any]) -> list[Row]:
    name = "memory"
    out: list[Row] = []
    for key in ("train_fp32", "train_bf16"):
        if key in section:
            probe = section[key]
            out.append(
                (
                    name,
                    f"{key} peak RSS (batch {probe.get('batch_size', 100)})",
                    f"{probe['peak_rss_mb']:.0f} MiB (+{probe['training_mb']:.0f} over imports)",
                    "",
                    "",
                )
            )
    if "bf16" in section:
        out.append((name, "train_bf16 peak RSS", section["bf16"], "", ""))
    if "sweep" in section:
        out.append(
            (
                name,
                "sweep peak RSS (driver + Ray)",
                f"{section['sweep']['peak_rss_total_mb']:.0f} MiB "
                f"({section['sweep']['peak_processes']} processes)",
                "",
                "",
            )
        )
    sharing = section.get("dataset_sharing")
    if sharing and None not in sharing["shared_private_mb_per_trial"]:
        for key, label in (("shared", "node's copy"), ("own_copy", "own copy")):
            per_trial = sharing[f"{key}_private_mb_per_trial"]
            out.append(
                (
                    name,
                    f"CIFAR-10 ({sharing['dataset_mb']:.0f} MiB), {label}",
                    "+" + ", +".join(f"{mb:.0f}" for mb in per_trial) + " MiB per trial",
                    "",
                    "",
                )
            )
    return out
