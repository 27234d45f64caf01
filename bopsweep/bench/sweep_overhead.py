"""Bench section ``sweep_overhead``: the quickstart as a user runs it, against its trials' training.

The full bench runs the real ``sweeps/quickstart.yaml`` (9 trials x 30 epochs) with
the real command, ``bopsweep run``, in a fresh folder (a new MLflow store, as on a
first run), so every fixed cost a user pays is in the wall time: imports, Ray's
start, the trial workers' start, checkpoints, the tracking drain, the report,
shutdown and what the terminal prints. The ideal is the same trials' own training:
each trial's ``train()`` (build the ``Trainer``, then ``fit``) at the thread count a
trial gets, in as many fresh processes side by side as the sweep runs trials at a
time (trial ``i`` in process ``i % slots``), so the ideal is the longest process's
sum; the same with ``fit()`` alone is reported beside it. The difference is split
with the sweep's own ``timeline.json`` (see :mod:`bopsweep.sweep.runner`).
``--quick`` runs 2 trials of 1 epoch fused in one group (a smoke run of the
measurement, which the fusion section's smoke run reuses).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

from bopsweep.bench.common import (
    Context,
    Row,
    RssSampler,
    mib,
    quickstart_spec_path,
    ray_trials,
    run_sweep_command,
    target,
)

# Some trials' own training, in a fresh process (the ideal's measurement): argv is
# the spec, the overrides (JSON), the thread count, the slot and the slot count.
_TRAIN_PROBE = """
import json, sys, time
import torch
from bopsweep.sweep.spec import expand, load_spec
from bopsweep.train import Trainer
spec, overrides = sys.argv[1], json.loads(sys.argv[2])
threads, slot, slots = (int(a) for a in sys.argv[3:6])
trials = expand(load_spec(spec, overrides))
torch.set_num_threads(threads)
times = {}
for trial in trials[slot::slots]:
    start = time.perf_counter()
    trainer = Trainer(trial.train)  # what train() does: build, then fit
    built = time.perf_counter()
    trainer.fit([])
    times[trial.index] = (time.perf_counter() - start, time.perf_counter() - built)
print(json.dumps(times))
"""

TARGET_FACTOR = 1.25
TARGET_FIXED_S = 8.0


def split(
    timeline: dict[str, float], wall: float, ideal: float, ideal_fit: float, slots: int
) -> dict[str, float]:
    """The wall time beyond the ideal, part by part (seconds on the critical path):
    with the ideal they add up to the wall time."""
    per_slot = 1.0 / max(1, slots)
    tuner = timeline["tuner_built"]
    first = timeline.get("first_trial", tuner)
    parts = {
        "imports": timeline["runner"],
        "preflight": timeline["preflight"] - timeline["runner"],
        "ray_start": timeline["ray_started"] - timeline["preflight"],
        "parent_run_wait": max(0.0, timeline["parent_run"] - timeline["ray_started"]),
        "tuner_build": tuner - max(timeline["parent_run"], timeline["ray_started"]),
        "first_trial_start": max(0.0, first - tuner),
        # What a trial's setup took beyond building its Trainer, which the ideal
        # (train()) includes: the MLflow run, the checkpoint, Ray's context.
        "trial_setup": timeline.get("trials.setup_s", 0.0) * per_slot - (ideal - ideal_fit),
        "checkpoints": timeline.get("trials.checkpoint_s", 0.0) * per_slot,
        "tracking_drain": timeline.get("trials.drain_s", 0.0) * per_slot,
        "settle": timeline["settled"] - timeline["trials_done"],
        "shutdown": timeline["ray_stopped"] - timeline["settled"],
        "report": max(0.0, timeline["reported"] - timeline["ray_stopped"]),
        "exit": max(0.0, wall - timeline["reported"]),
    }
    # What the trials' phase took beyond the ideal and the parts above: trials
    # slower side by side than alone, scheduling, results handling.
    trials_phase = timeline["trials_done"] - first
    accounted = ideal + parts["trial_setup"] + parts["checkpoints"] + parts["tracking_drain"]
    parts["trials_other"] = trials_phase - accounted
    return {k: round(v, 3) for k, v in parts.items()}


def measure(context: Context) -> dict[str, Any]:
    plan, workdir = context.plan, context.workdir
    spec = quickstart_spec_path()
    overrides, fuse = [], "auto"
    if plan.quick:
        thresholds = ["0.0", "1.0e-6", "1.0e-5"][: plan.sweep_trials]
        # Fused explicitly (auto runs two trials on two CPUs unfused): the fusion
        # section's smoke run is this one, not a second sweep.
        fuse = str(plan.sweep_trials)
        overrides = [
            f"train.epochs={plan.sweep_epochs}",
            "parameters.hparams.gamma.values=[1.0e-3]",
            f"parameters.hparams.threshold.values=[{', '.join(thresholds)}]",
            f"fuse={fuse}",
        ]
    from bopsweep.sweep.spec import load_spec

    loaded = load_spec(spec, overrides)
    cpus = loaded.spec.resources.cpu
    slots = max(1, math.floor((os.cpu_count() or 1) / cpus))
    if loaded.spec.max_concurrent_trials:
        slots = min(slots, loaded.spec.max_concurrent_trials)

    probes = [
        subprocess.Popen(
            [
                *(sys.executable, "-c", _TRAIN_PROBE, str(spec), json.dumps(overrides)),
                *(str(max(1, int(cpus))), str(slot), str(slots)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for slot in range(slots)
    ]
    per_slot = []
    for probe in probes:
        out, err = probe.communicate(timeout=900)
        if probe.returncode != 0:
            raise RuntimeError(f"training probe failed: {err[-2000:]}")
        per_slot.append({int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()})
    by_index = dict(sorted((i, t) for times in per_slot for i, t in times.items()))
    direct = [t[0] for t in by_index.values()]
    # The ideal as train() costs it (a process's first trial also pays torch's lazy
    # imports and the data); fit() alone is reported beside it.
    ideal = max(sum(t[0] for t in times.values()) for times in per_slot)
    ideal_fit = max(sum(t[1] for t in times.values()) for times in per_slot)

    sampler = RssSampler()
    run = run_sweep_command(
        spec, workdir / "quickstart-run", "quickstart", overrides, watch=sampler
    )
    done, wall, results, timeline = run.done, run.wall_s, run.results, run.timeline
    parts = split(timeline, wall, ideal, ideal_fit, slots)
    bound = TARGET_FACTOR * ideal + TARGET_FIXED_S
    return {
        "trials": len(direct),
        "fuse": fuse,
        "overrides": overrides,
        "epochs_per_trial": loaded.spec.train.epochs,
        "cpus_per_trial": cpus,
        "concurrency": slots,
        "direct_trial_s": direct,
        "direct_fit_s": [t[1] for t in by_index.values()],
        "ideal_s": ideal,
        "ideal_fit_only_s": ideal_fit,
        "wall_s": wall,
        "overhead_ratio": wall / ideal,
        "overhead_s": wall - ideal,
        "startup_s": timeline.get("first_trial", timeline["tuner_built"]),
        "split_s": parts,
        "timeline": timeline,
        "ray_trials": ray_trials(results),
        "stderr_lines": len(done.stderr.splitlines()),
        "stdout_lines": len(done.stdout.splitlines()),
        "driver_cpu_s": timeline.get("driver_cpu_s"),
        "peak_rss_total_mb": mib(sampler.peak_total - sampler.peak_driver),
        "peak_rss_driver_mb": mib(sampler.peak_driver),
        "peak_processes": sampler.peak_processes,
        "targets": {
            "wall_vs_ideal": target(
                wall,
                bound,
                "<=",
                f"quickstart wall s <= {TARGET_FACTOR} x ideal + {TARGET_FIXED_S:g} s "
                "(ideal: the trials' own train() on the sweep's slots)",
            )
        },
    }


def rows(section: dict[str, Any]) -> list[Row]:
    parts = section.get("split_s", {})
    largest = sorted(parts.items(), key=lambda kv: -kv[1])[:4]
    return [
        (
            "sweep_overhead",
            f"quickstart: {section['trials']} trials x {section['epochs_per_trial']} epochs",
            f"wall {section['wall_s']:.1f} s, ideal {section['ideal_s']:.1f} s, "
            f"stderr {section['stderr_lines']} lines",
            "",
            "",
        ),
        (
            "sweep_overhead",
            "largest fixed costs",
            ", ".join(f"{k} {v:.1f} s" for k, v in largest),
            "",
            "",
        ),
    ]
