"""What bf16 autocast changes in Bop's training, against float32, on real data.

The paper trained in float32; ``precision: auto`` trains convolutional models in bf16
where the hardware computes it natively. This script trains the section 5.1 grid
(threshold x gamma) with the quickstart's binarized MLP on scikit-learn's digits, the
same seeds in both precisions, and prints per-configuration final validation
accuracies and mean flip ratios side by side, with the largest differences:

    python scripts/bf16_vs_fp32.py [--epochs 30] [--seeds 0 1 2] [--out FILE.json]

bf16 runs are only meaningful where bf16 is native (a CPU with AVX512-BF16 or AMX, a
GPU of compute capability >= 8.0); elsewhere it is emulated and ~20x slower. The
figures are in docs/fidelity.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bopsweep.config import make_train_config
from bopsweep.data import load_dataset
from bopsweep.precision import native_bf16
from bopsweep.train import Trainer

THRESHOLDS = (0.0, 1e-6, 1e-5)
GAMMAS = (1e-2, 1e-3, 1e-4)


def grid(precision: str, epochs: int, seed: int) -> list[dict]:
    configs = [
        make_train_config(
            model="mlp",
            dataset="digits",
            hparams_set="bop",
            hparams={"threshold": t, "gamma": g},
            epochs=epochs,
            seed=seed,
            device="cpu",
            precision=precision,
        )
        for t in THRESHOLDS
        for g in GAMMAS
    ]
    trainer = Trainer(configs, load_dataset("digits"), device=torch.device("cpu"))
    start = time.perf_counter()
    histories = trainer.fit()
    wall = time.perf_counter() - start
    return [
        {
            "threshold": c.resolved_hparams().threshold,
            "gamma": c.resolved_hparams().gamma,
            "seed": seed,
            "final_val_accuracy": h[-1]["val_accuracy"],
            "mean_flip_ratio": statistics.fmean(e["flip_ratio"] for e in h),
            "wall_s": wall,
        }
        for c, h in zip(configs, histories, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", help="write the rows as JSON to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a sweep trial
    rows = []
    for seed in args.seeds:
        fp32, bf16 = grid("fp32", args.epochs, seed), grid("bf16", args.epochs, seed)
        for a, b in zip(fp32, bf16, strict=True):
            rows.append(
                {
                    **{k: a[k] for k in ("threshold", "gamma", "seed")},
                    "fp32_val_accuracy": a["final_val_accuracy"],
                    "bf16_val_accuracy": b["final_val_accuracy"],
                    "fp32_mean_flip_ratio": a["mean_flip_ratio"],
                    "bf16_mean_flip_ratio": b["mean_flip_ratio"],
                }
            )
    print(f"bf16 native here: {native_bf16('cpu')}; {args.epochs} epochs, seeds {args.seeds}")
    print("threshold  gamma   seed  acc fp32  acc bf16  flips fp32  flips bf16")
    for r in rows:
        print(
            f"{r['threshold']:<9g}  {r['gamma']:<6g}  {r['seed']:>4}  "
            f"{r['fp32_val_accuracy']:8.4f}  {r['bf16_val_accuracy']:8.4f}  "
            f"{r['fp32_mean_flip_ratio']:10.2e}  {r['bf16_mean_flip_ratio']:10.2e}"
        )
    diffs = [r["bf16_val_accuracy"] - r["fp32_val_accuracy"] for r in rows]
    print(
        f"accuracy bf16 - fp32: mean {statistics.fmean(diffs):+.4f}, "
        f"largest |difference| {max(map(abs, diffs)):.4f} over {len(rows)} runs; "
        f"mean accuracy fp32 {statistics.fmean(r['fp32_val_accuracy'] for r in rows):.4f}, "
        f"bf16 {statistics.fmean(r['bf16_val_accuracy'] for r in rows):.4f}"
    )
    if args.out:
        with open(args.out, "w") as file:
            json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
