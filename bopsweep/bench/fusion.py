"""Bench section ``fusion``: what training trials fused (one stacked model) gains.

Two measurements:

* the quickstart as a user runs it (``bopsweep run sweeps/quickstart.yaml`` in a fresh
  folder), fused (``fuse: auto``, the default) and unfused (``--set fuse=off``), one
  after the other: wall time and member samples per second (every trial's training
  samples over the wall time);
* BinaryNet at batch 100 (``--quick``: 10) on CIFAR-shaped data, K members fused against K separate
  trainers stepping one after the other, for K in the plan's sizes: samples per
  second per member (one training step = one epoch of one batch, as in
  ``train_step``), interleaved rounds.

The sizes ``fuse: auto`` uses on each device come from these figures
(:data:`bopsweep.sweep.fusion.MEASURED_GAIN`).
"""

from __future__ import annotations

import time
from typing import Any

from bopsweep.bench.common import (
    MIN_ROUNDS,
    Context,
    Row,
    binarynet_config,
    interleaved,
    quickstart_spec_path,
    ray_trials,
    run_sweep_command,
    target,
)
from bopsweep.sweep.fusion import measured_gain_path, record_gains

QUICKSTART_TARGET_S = 20.0
GPU_GAIN_TARGET = 3.0


def _quickstart(context: Context, fuse: str) -> dict[str, Any]:
    plan = context.plan
    spec = quickstart_spec_path()
    overrides = []
    if plan.quick:
        overrides += [
            f"train.epochs={plan.sweep_epochs}",
            "parameters.hparams.gamma.values=[1.0e-3]",
            "parameters.hparams.threshold.values=[0.0, 1.0e-6]",
        ]
    overrides.append(f"fuse={fuse}")
    from bopsweep.data import load_dataset
    from bopsweep.sweep.spec import expand, load_spec

    trials = expand(load_spec(spec, overrides))
    sizes = {name: len(load_dataset(name).train_y) for name in {t.train.dataset for t in trials}}
    train_samples = sum(sizes[t.train.dataset] * t.train.resolved_hparams().epochs for t in trials)
    overhead = context.sections.get("sweep_overhead", {})
    same = overhead.get("overrides", []) == overrides or (
        not plan.quick and fuse == "auto" and overhead.get("fuse") == "auto"
    )
    if same and "timeline" in overhead:
        # sweep_overhead ran this very command earlier in this bench (the
        # quickstart as shipped; in a quick bench its fused smoke run): its run is
        # this one, not run a second time.
        wall = overhead["wall_s"]
        figures = _figures(wall, overhead["timeline"], overhead["ray_trials"])
        figures["run_by"] = "sweep_overhead"
        return {"trials": len(trials), **figures, "samples_per_s": train_samples / wall}
    folder = context.workdir / f"quickstart-fuse-{fuse}"
    run = run_sweep_command(spec, folder, "quickstart", overrides)
    figures = _figures(run.wall_s, run.timeline, ray_trials(run.results))
    return {"trials": len(trials), **figures, "samples_per_s": train_samples / run.wall_s}


def _figures(wall: float, timeline: dict[str, float], ray_trials: list[str]) -> dict[str, Any]:
    return {
        # The Ray trials the run made: trial_NNN alone, fused_NNN for a fused group.
        "ray_trials": ray_trials,
        "wall_s": wall,
        "first_trial_s": timeline.get("first_trial"),
        "trials_done_s": timeline.get("trials_done"),
        "trial_train_s": timeline.get("trials.train_s"),
        "trial_setup_s": timeline.get("trials.setup_s"),
    }


def _members(device, members: int, batch_size: int):
    """K fused BinaryNet members and K separate trainers of the same configs."""
    from bopsweep.data import make_synthetic
    from bopsweep.train import Trainer

    precision = "bf16" if _native(device) else "fp32"
    base = binarynet_config(device.type, precision, batch_size)
    gammas = [10.0 ** -(3 + k / max(1, members - 1)) for k in range(members)]
    configs = [base.model_copy(update={"hparams": {**base.hparams, "gamma": g}}) for g in gammas]
    data = make_synthetic(n_train=batch_size, n_val=2)
    fused = Trainer(configs, data, device=device)
    separate = [Trainer(c, data, device=device) for c in configs]
    return precision, fused, separate


def _native(device) -> bool:
    from bopsweep.precision import native_bf16

    return native_bf16(device)


def measure(context: Context) -> dict[str, Any]:
    device, plan = context.device, context.plan
    section: dict[str, Any] = {"quickstart": {}, "binarynet": {}}
    if device.type == "cpu":
        # The quickstart is a CPU sweep (device: cpu in its spec). The smoke run's two
        # trials would run unfused under auto (one per CPU): fused explicitly there,
        # as sweep_overhead's smoke run is, and only fused.
        runs = (("auto", "2"),) if plan.quick else (("off", "off"), ("auto", "auto"))
        for label, fuse in runs:
            section["quickstart"][label] = {"fuse": fuse, **_quickstart(context, fuse)}
    # No K = 1: one member "fused" is the same model and code as one trainer (the
    # Trainer fuses only groups), so its gain is 1 by construction, not a measurement.
    sizes = (2,) if plan.quick else (3, 9)
    batch = plan.binarynet_batch_size
    started, per_member_round = time.perf_counter(), None
    for members in sizes:
        if per_member_round is not None:
            # Warm-up plus the fewest rounds of this K, from the last K's round time.
            projected = per_member_round * members * (plan.train_warmup + MIN_ROUNDS)
            if time.perf_counter() - started + projected > plan.member_budget_s:
                section["binarynet"][str(members)] = {
                    "skipped": f"over the bench's time budget on this device (about "
                    f"{projected:.0f} s more; {plan.member_budget_s:g} s for every K)"
                }
                continue
        precision, fused, separate = _members(device, members, batch)
        timings = interleaved(
            {
                "fused": fused.train_epoch,
                "separate": lambda separate=separate: [t.train_epoch() for t in separate],
            },
            plan.train_rounds,
            warmup=plan.train_warmup,
            device=device,
            budget_s=plan.train_budget_s,
        )
        fused_s, separate_s = timings["fused"]["median_s"], timings["separate"]["median_s"]
        per_member_round = (fused_s + separate_s) / members
        section["binarynet"][str(members)] = {
            "precision": precision,
            "batch_size": batch,
            "fused_step_s": fused_s,
            "separate_steps_s": separate_s,
            "fused_member_samples_per_s": batch * members / fused_s,
            "separate_member_samples_per_s": batch * members / separate_s,
            "gain": separate_s / fused_s,
            "rounds": timings["fused"]["rounds"],
        }
        del fused, separate
    measured = [k for k in sizes if "gain" in section["binarynet"][str(k)]]
    targets = {}
    if "auto" in section["quickstart"]:
        wall = section["quickstart"]["auto"]["wall_s"]
        what = f"quickstart end to end (fused) <= {QUICKSTART_TARGET_S:g} s on the CPU"
        if not plan.quick:
            targets["quickstart_wall"] = target(wall, QUICKSTART_TARGET_S, "<=", what)
    largest = str(max(measured))
    if device.type == "cuda" and not plan.quick:
        gain = section["binarynet"][largest]["gain"]
        what = f"BinaryNet member throughput fused vs separate at K={largest} >= {GPU_GAIN_TARGET}x"
        targets["gpu_gain"] = target(gain, GPU_GAIN_TARGET, ">=", what)
    section["targets"] = targets
    if not plan.quick:
        # What `fuse: auto` decides by on this machine from now on.
        gains = {"binarynet": section["binarynet"][largest]["gain"]}
        if "auto" in section["quickstart"]:
            # The trials' own training, summed over Ray trials (core-seconds), fused
            # against unfused: the member throughput fusion gives, without the fixed
            # costs both runs pay alike.
            quick = section["quickstart"]
            gains["mlp"] = quick["off"]["trial_train_s"] / quick["auto"]["trial_train_s"]
        record_gains(device.type, gains)
        section["recorded_gains"] = {"path": str(measured_gain_path()), **gains}
    return section


def rows(section: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    quickstart = section.get("quickstart", {})
    if quickstart:
        # The quick bench runs the fused quickstart only.
        auto, off = quickstart["auto"], quickstart.get("off")
        versus = f" vs {off['wall_s']:.1f} s" if off else ""
        samples = f" vs {off['samples_per_s']:.0f}" if off else ""
        out.append(
            (
                "fusion",
                f"quickstart ({auto['trials']} trials): fused" + (" vs unfused" if off else ""),
                f"{auto['wall_s']:.1f} s{versus}; member samples/s "
                f"{auto['samples_per_s']:.0f}{samples}",
                "",
                "",
            )
        )
    for members, figures in section.get("binarynet", {}).items():
        if "skipped" in figures:
            out.append(("fusion", f"BinaryNet K={members}", figures["skipped"], "", ""))
            continue
        out.append(
            (
                "fusion",
                f"BinaryNet K={members} ({figures['precision']}, batch "
                f"{figures['batch_size']}): samples/s per member",
                f"fused {figures['fused_member_samples_per_s']:.1f} vs separate "
                f"{figures['separate_member_samples_per_s']:.1f} ({figures['gain']:.2f}x)",
                "",
                "",
            )
        )
    return out
