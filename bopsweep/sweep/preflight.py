"""The devices a sweep's trials name, checked against what Ray will give them.

Ray gives a trial the GPUs of its ``resources.gpu`` and no others: a trial that asks
for none sees no GPU (:func:`bopsweep.sweep.ray_backend.hide_unassigned_gpus`); one
that asks for a share of a GPU, or for one, sees one, as ``cuda:0``, whichever GPU of
the node Ray picked. A ``train.device`` naming a GPU the trial will not see fails in
every trial, after Ray has started and the MLflow runs are open; these checks say so
in one message before anything starts. :func:`check_devices` holds wherever the
trials run (a cluster too); :func:`check_local_resources` compares the spec with
this machine, for a local sweep. Nothing here imports torch or Ray.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from bopsweep.device import visible_gpu_count
from bopsweep.errors import UserError
from bopsweep.sweep.spec import SweepSpec, Trial


def gpus_seen(share: float) -> int:
    """How many GPUs a trial with ``resources.gpu = share`` sees (a fraction: one)."""
    return math.ceil(share) if share > 0 else 0


def _gpu_index(device: str) -> int | None:
    """N of ``cuda:N``; None for ``cuda`` (the first GPU the trial sees)."""
    _, _, index = device.partition(":")
    if not index:
        return None
    if not index.isdigit():
        raise UserError(f"unknown device {device!r}; valid devices: auto, cpu, cuda, cuda:N")
    return int(index)


def check_devices(spec: SweepSpec, trials: Sequence[Trial]) -> None:
    """Refuse a ``train.device`` that names a GPU the trials will not be given."""
    share = spec.resources.gpu
    seen = gpus_seen(share)
    for trial in trials:
        device = trial.train.device
        if not device.startswith("cuda"):
            continue  # auto follows what the trial is given; cpu needs nothing
        if seen == 0:
            raise UserError(
                f"train.device is {device} but resources.gpu is 0: Ray gives a trial only "
                "the GPUs it asks for, so these trials would see none. Ask for a GPU "
                "(--set resources.gpu=1, or a share of one: 0.25) or train on what each "
                "trial is given (--set train.device=auto)"
            )
        index = _gpu_index(device)
        if index is not None and index >= seen:
            raise UserError(
                f"train.device is {device} but a trial with resources.gpu={share:g} sees "
                f"{seen} GPU{'s' if seen > 1 else ''}, numbered from 0 whichever GPUs Ray "
                "assigned: --set train.device=cuda (or auto)"
            )


def check_local_resources(
    spec: SweepSpec,
    trials: Sequence[Trial],
    gpus: int | None = None,
    cpus: int | None = None,
) -> None:
    """Refuse a local sweep whose trials ask for more than this machine has (its
    GPUs and CPUs by default; given, for tests and other machines)."""
    from bopsweep.sweep.ray_backend import gpu_message

    gpus = visible_gpu_count() if gpus is None else gpus
    if spec.resources.gpu > gpus:
        raise UserError(gpu_message(spec.resources.gpu, gpus, "this machine"))
    if gpus == 0 and any(t.train.device.startswith("cuda") for t in trials):
        raise UserError(
            "train.device asks for cuda but this machine has no GPU: "
            "--set train.device=cpu (or auto)"
        )
    cpus = cpus or os.cpu_count() or 1
    if spec.resources.cpu > cpus:
        raise UserError(
            f"each trial asks for {spec.resources.cpu:g} CPUs but this machine has {cpus}: "
            "lower resources.cpu (--set resources.cpu=1)"
        )
