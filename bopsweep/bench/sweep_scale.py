"""Bench section ``sweep_scale``: what a sweep costs per trial as the trials grow.

A grid sweep pays per trial beyond its training: the driver's bookkeeping, each
trial's MLflow run (opened, filled, finished) and its share of the store. At 1,000
trials that cost, not the training, decides how long a sweep takes. The full bench
runs the quickstart's digits grid with one epoch a trial at 10, 100 and 1,000 trials
(thresholds x gammas x seeds), each with the real command in a fresh folder (a new
local sqlite store, ``fuse: auto``), and splits each run with its ``timeline.json``:
the trials' training, spread over the sweep's slots, is the training wall; the
target is the largest sweep's wall within :data:`GOAL` times it. ``--quick`` reads
``sweep_overhead``'s smoke run the same way instead of running a sweep of its own.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any

from bopsweep.bench.common import (
    Context,
    Row,
    quickstart_spec_path,
    ray_trials,
    run_sweep_command,
    target,
)

# The largest sweep's wall against its training wall.
GOAL = 2.0
# Thresholds and gammas of the grid: ten values each, then seeds.
_THRESHOLDS = [0.0, 1e-8, 3e-8, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4]
_GAMMAS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6]


def grid_spec(trials: int) -> dict[str, Any]:
    """The quickstart spec as a grid of ``trials`` one-epoch trials: up to ten
    thresholds, then up to ten gammas, then seeds (``trials`` of the form
    t x g x s with t, g <= 10)."""
    import yaml

    spec = yaml.safe_load(quickstart_spec_path().read_text())
    thresholds = min(trials, len(_THRESHOLDS))
    gammas = min(trials // thresholds, len(_GAMMAS))
    seeds = trials // (thresholds * gammas)
    if thresholds * gammas * seeds != trials:
        raise ValueError(f"{trials} trials is not thresholds x gammas x seeds")
    spec["name"] = f"scale{trials}"
    spec["train"] = {**spec["train"], "epochs": 1}
    spec["parameters"] = {
        "hparams.threshold": {"values": _THRESHOLDS[:thresholds]},
        "hparams.gamma": {"values": _GAMMAS[:gammas]},
        "seed": {"values": list(range(seeds))},
    }
    spec["tracking"] = {"experiment": spec["name"]}
    return spec


def point(
    timeline: dict[str, float], wall: float, trials: int, groups: int, slots: int, lines: int
) -> dict[str, Any]:
    """One sweep's figures: its wall against its training wall, and per trial what
    the trials' setup and tracking drain and the driver's CPU took."""
    train_wall = timeline.get("trials.train_s", 0.0) / max(1, slots)
    per_trial = {
        "wall_ms": wall / trials * 1e3,
        "setup_ms": timeline.get("trials.setup_s", 0.0) / trials * 1e3,
        "drain_ms": timeline.get("trials.drain_s", 0.0) / trials * 1e3,
        "driver_cpu_ms": timeline.get("driver_cpu_s", 0.0) / trials * 1e3,
    }
    return {
        "trials": trials,
        "ray_trials": groups,
        "wall_s": wall,
        "train_wall_s": train_wall,
        "wall_vs_training": wall / train_wall if train_wall else math.inf,
        "setup_s": timeline.get("trials.setup_s", 0.0),
        "drain_s": timeline.get("trials.drain_s", 0.0),
        "driver_cpu_s": timeline.get("driver_cpu_s", 0.0),
        "per_trial": per_trial,
        "terminal_lines": lines,
    }


def _run(workdir: Path, trials: int, slots: int) -> dict[str, Any]:
    import yaml

    folder = workdir / f"scale{trials}"
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / f"scale{trials}.yaml"
    spec.write_text(yaml.safe_dump(grid_spec(trials), sort_keys=False))
    run = run_sweep_command(spec, folder, f"scale{trials}", timeout_s=1800)
    lines = len(run.done.stdout.splitlines()) + len(run.done.stderr.splitlines())
    return point(run.timeline, run.wall_s, trials, len(ray_trials(run.results)), slots, lines)


def measure(context: Context) -> dict[str, Any]:
    plan = context.plan
    # Trials at once, as Ray schedules them: the CPUs over what a trial asks for.
    cpus = float(grid_spec(plan.scale_trials[0])["resources"]["cpu"])
    slots = max(1, math.floor((os.cpu_count() or 1) / cpus))
    smoke = context.sections.get("sweep_overhead", {})
    if plan.quick and "timeline" in smoke:
        sweeps = [
            point(
                smoke["timeline"],
                smoke["wall_s"],
                smoke["trials"],
                len(smoke["ray_trials"]),
                smoke["concurrency"],
                smoke["stdout_lines"] + smoke["stderr_lines"],
            )
        ]
        run_by = "sweep_overhead"
    else:
        sweeps = [_run(context.workdir, n, slots) for n in plan.scale_trials]
        run_by = "sweep_scale"
    out: dict[str, Any] = {"sweeps": sweeps, "run_by": run_by, "slots": slots}
    # What one trial more costs between consecutive sizes.
    out["marginal_ms_per_trial"] = [
        (b["wall_s"] - a["wall_s"]) / (b["trials"] - a["trials"]) * 1e3
        for a, b in itertools.pairwise(sweeps)
    ]
    largest = sweeps[-1]
    if not plan.quick:
        out["targets"] = {
            "wall_vs_training": target(
                largest["wall_vs_training"],
                GOAL,
                "<=",
                f"{largest['trials']} one-epoch digits trials: wall / their training wall",
            )
        }
    return out


def rows(section: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for sweep in section["sweeps"]:
        per = sweep["per_trial"]
        out.append(
            (
                "sweep_scale",
                f"{sweep['trials']} trials ({sweep['ray_trials']} Ray trials)",
                f"wall {sweep['wall_s']:.1f} s, training {sweep['train_wall_s']:.1f} s "
                f"({sweep['wall_vs_training']:.1f}x); a trial: setup "
                f"{per['setup_ms']:.0f} ms, drain {per['drain_ms']:.0f} ms, driver "
                f"{per['driver_cpu_ms']:.0f} ms; {sweep['terminal_lines']} lines",
                "",
                "",
            )
        )
    pairs = itertools.pairwise(section["sweeps"])
    for (a, b), cost in zip(pairs, section["marginal_ms_per_trial"], strict=True):
        out.append(
            (
                "sweep_scale",
                f"one trial more, {a['trials']} -> {b['trials']}",
                f"{cost:.0f} ms of wall",
                "",
                "",
            )
        )
    return out
