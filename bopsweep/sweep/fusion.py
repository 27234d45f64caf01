"""Which trials of a sweep train fused: one Ray trial holding a stacked model of K members.

Trials whose configs differ only in per-member values (:func:`bopsweep.config.fusion_key`)
can share one process and one model (:mod:`bopsweep.train`). The spec's
``fuse`` key decides:

* ``off``: one Ray trial per trial, as always;
* ``N`` (an integer): groups of at most N members;
* ``auto`` (the default): fuse where fusion was measured to pay on the device the
  trials use, into as many groups as trials can run at once (CPU slots, or GPU
  shares for trials that ask for a GPU), so every slot still has work. The
  measurement is ``bopsweep bench --only fusion``: the figures shipped in
  :data:`MEASURED_GAIN` (docs/benchmarks.md), replaced by this machine's own once
  the bench has run here (it writes them to :func:`measured_gain_path`).

  One CUDA figure ships, BinaryNet's on an H200; other models' CUDA trials stay
  unfused under ``auto`` until ``bopsweep bench --only fusion --device cuda`` has run
  on the machine that plans the sweep, the driver. A driver without the cluster's
  GPUs (a laptop submitting, a CPU-only head) never measures them: copy the GPU
  node's ``fusion_gain.json`` into the driver's cache folder, or give the group size
  (``fuse: 8``).

Each member keeps its own index, name, MLflow child run and status; only the Ray
trial, its process and its checkpoint are shared. Nothing here imports torch or Ray:
``bopsweep plan`` shows the groups.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bopsweep.config import FUSABLE_OPTIMIZERS, fusion_key
from bopsweep.device import visible_gpu_count
from bopsweep.sweep import cache_dir
from bopsweep.sweep.spec import SweepSpec, Trial

# Member throughput of fused groups over separate trials, as measured by the fusion
# section of `bopsweep bench` (docs/benchmarks.md; 2-core AMD EPYC with AVX-512), by
# device type and model: the quickstart's training 1.42x; BinaryNet at batch 100,
# K = 9, 0.84x (its convolutions are compute-bound on a CPU); on one NVIDIA H200
# (bf16), BinaryNet at batch 100, K = 9, 2.81x (K = 3: 1.13x): one small model leaves
# most of such a GPU idle. `auto` fuses where the gain is at least AUTO_MIN_GAIN; not
# measured (no entry, e.g. the MLP on a GPU): not fused until `bopsweep bench --only
# fusion` has measured it there.
MEASURED_GAIN: dict[tuple[str, str], float] = {
    ("cpu", "mlp"): 1.42,
    ("cpu", "binarynet"): 0.84,
    ("cuda", "binarynet"): 2.81,
}
# The gain is of the trials' training alone; a fused sweep also starts fewer Ray
# trials, runs and checkpoints. Measured on the AVX-512 EPYC with an MLP gain of 1.16
# recorded by the bench: the quickstart fused 17.8 s vs 18.3 s unfused, a 100-trial
# one-epoch grid 14.6 s (fuse: 16) vs 21.0 s. Any gain over 1 pays; the margin is the
# run-to-run spread of the bench's measure.
AUTO_MIN_GAIN = 1.1
# Members per group under `auto`: beyond this a group's memory grows with no gain.
AUTO_MAX_MEMBERS = 16


@dataclass(frozen=True)
class Group:
    """One Ray trial: K >= 1 trials trained as one (K > 1: fused). ``alone`` says why
    a trial that ``fuse`` would otherwise group trains as a group of one."""

    trials: tuple[Trial, ...]
    alone: str | None = None

    @property
    def index(self) -> int:
        return self.trials[0].index

    @property
    def fused(self) -> bool:
        return len(self.trials) > 1

    @property
    def dirname(self) -> str:
        """The Ray trial's name and folder."""
        if not self.fused:
            return f"trial_{self.index:03d}"
        return f"fused_{self.index:03d}"

    @property
    def name(self) -> str:
        if not self.fused:
            return self.trials[0].name
        return f"{self.dirname} ({len(self.trials)} trials)"


def _device_type(spec: SweepSpec, trial: Trial) -> str:
    device = trial.train.device
    if device == "auto":
        return "cuda" if spec.resources.gpu > 0 else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def measured_gain_path() -> Path:
    """Where ``bopsweep bench --only fusion`` records this machine's fusion gains."""
    return cache_dir() / "fusion_gain.json"


def measured_gains() -> dict[tuple[str, str], float]:
    """The shipped gains, with this machine's own measurements in their place."""
    gains = dict(MEASURED_GAIN)
    try:
        local = json.loads(measured_gain_path().read_text())
        for device, models in local.items():
            for model, gain in models.items():
                gains[(device, model)] = float(gain)
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # no local measurement (or an unreadable one): the shipped figures
    return gains


def record_gains(device: str, gains: dict[str, float]) -> None:
    """Keep ``device``'s measured gains (model -> gain) for ``fuse: auto``."""
    path = measured_gain_path()
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {}
    current.setdefault(device, {}).update(gains)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2) + "\n")


def auto_fuses(spec: SweepSpec, trial: Trial, gains=None) -> bool:
    """Whether ``fuse: auto`` fuses this trial with others like it."""
    gains = measured_gains() if gains is None else gains
    gain = gains.get((_device_type(spec, trial), trial.train.model), 0.0)
    return gain >= AUTO_MIN_GAIN


def concurrent_slots(spec: SweepSpec, cpus: int | None = None, gpus: int | None = None) -> int:
    """How many trials this machine runs at once: its CPUs over each trial's share
    and, for trials that ask for a GPU, its GPUs over each trial's share of one (Ray
    starts a GPU trial only when its share is free, whatever the CPUs).

    A driver without GPUs planning for a cluster (``--address``) cannot count the
    cluster's: its CPUs decide there, and ``fuse: N`` sets the size instead."""
    cpus = cpus or os.cpu_count() or 1
    slots = max(1, _fits(cpus, spec.resources.cpu))
    if spec.resources.gpu > 0:
        gpus = visible_gpu_count() if gpus is None else gpus
        if gpus > 0:
            slots = min(slots, max(1, _fits(gpus, spec.resources.gpu)))
    if spec.max_concurrent_trials:
        slots = min(slots, spec.max_concurrent_trials)
    return slots


def _fits(available: float, each: float) -> int:
    """How many shares of ``each`` fit in ``available``; Ray counts resources in fixed
    point, so four trials of 0.25 GPU fit on one GPU, and ten of 0.1 too (floats
    would say 9.999...)."""
    return math.floor(available / each + 1e-9)


def _split(trials: Sequence[Trial], size_limit: int, parts_wanted: int) -> list[list[Trial]]:
    """``trials`` in consecutive, near-equal parts: at least ``parts_wanted`` (if there
    are that many trials) and none above ``size_limit``."""
    parts = max(math.ceil(len(trials) / size_limit), min(parts_wanted, len(trials)), 1)
    size, extra = divmod(len(trials), parts)
    out, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        out.append(list(trials[start:end]))
        start = end
    return out


def unfused_reason(spec: SweepSpec) -> str | None:
    """Why no trial of this sweep trains fused, or None when some may."""
    stopping = spec.stopping.type if spec.stopping is not None else "fifo"
    if spec.fuse in ("off", 1):
        return None
    if spec.method not in ("grid", "random"):
        return f"method: {spec.method} proposes one trial at a time"
    # ASHA's rungs work inside a group; the other schedulers compare single trials.
    single = {
        "hyperband": "scheduler: hyperband pauses and compares single trials",
        "median": "scheduler: median compares single trials",
        "wandb_hyperband": "early_terminate (W&B's hyperband) compares single trials",
    }
    return single.get(stopping)


def trial_reason(trial: Trial) -> str | None:
    """Why this trial trains alone whatever ``fuse`` says, or None."""
    optimizer = trial.train.resolved_hparams().optimizer
    if optimizer not in FUSABLE_OPTIMIZERS:
        return f"optimizer {optimizer} has no fused kernels"
    if trial.train.compile:
        return "compile: true compiles one model per trial"
    return None


def plan_groups(
    spec: SweepSpec,
    trials: Sequence[Trial],
    cpus: int | None = None,
    gpus: int | None = None,
) -> list[Group]:
    """The Ray trials of a sweep, in trial order of their first member; ``cpus`` and
    ``gpus`` default to this machine's (:func:`concurrent_slots`)."""
    fuse = spec.fuse
    reason = unfused_reason(spec)
    if fuse in ("off", 1) or reason:
        return [Group((t,), reason) for t in trials]
    candidates: dict[tuple, list[Trial]] = {}
    groups: list[Group] = []
    gains = measured_gains()
    for trial in trials:
        alone = trial_reason(trial)
        if alone is None and fuse == "auto" and not auto_fuses(spec, trial, gains):
            alone = f"fuse: auto measured no gain for {trial.train.model} here"
        if alone is not None:
            groups.append(Group((trial,), alone))
        else:
            candidates.setdefault(fusion_key(trial.train), []).append(trial)
    limit = AUTO_MAX_MEMBERS if fuse == "auto" else int(fuse)
    # Under auto, as many groups as trials run at once, so no slot sits idle;
    # with an explicit size, exactly as few groups as that size allows.
    wanted = concurrent_slots(spec, cpus, gpus) if fuse == "auto" else 1
    for similar in candidates.values():
        groups += [Group(tuple(part)) for part in _split(similar, limit, wanted)]
    return sorted(groups, key=lambda g: g.index)
