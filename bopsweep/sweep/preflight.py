"""``bopsweep run``'s first step: everything that can be known before Ray starts.

The results folder (writable), each trial's dataset files, the CPUs and GPUs asked
for against this machine, the tracking store or server (reachable, credentials
accepted; a rerun waits for a server that holds its parent run), the resume state:
bad input ends in one message, not in trials that fail one by one.

The devices a sweep's trials name are checked against what Ray will give them.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bopsweep.device import visible_gpu_count
from bopsweep.errors import UserError
from bopsweep.sweep import mlflow_client, ray_backend
from bopsweep.sweep.fusion import Group, plan_groups
from bopsweep.sweep.spec import LoadedSpec, SweepSpec, Trial, expand
from bopsweep.sweep.state import Resume, SweepFolder, decide_resume, resolve_storage


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
    gpus = visible_gpu_count() if gpus is None else gpus
    if spec.resources.gpu > gpus:
        raise UserError(ray_backend.gpu_message(spec.resources.gpu, gpus, "this machine"))
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


@dataclass(frozen=True)
class RunOptions:
    """What ``bopsweep run`` takes besides the spec."""

    tracking_uri: str | None = None
    address: str | None = None
    storage: str | None = None
    restart: bool = False
    verbose: bool = False
    # How long a rerun waits for a tracking server that does not answer, when the
    # sweep already has its parent run there.
    tracking_wait_s: float = 300.0
    # Then: train anyway, every epoch kept in the results folder for `bopsweep sync`.
    without_tracking: bool = False


@dataclass(frozen=True)
class SweepPlan:
    """A sweep ready to start: what preflight resolved and checked."""

    loaded: LoadedSpec
    trials: list[Trial]
    tracking_uri: str
    folder: SweepFolder
    address: str | None
    resume: Resume
    groups: list[Group] = field(default_factory=list)
    # A rerun going on while its tracking server does not answer (--without-tracking).
    tracking_offline: bool = False

    @property
    def spec(self):
        return self.loaded.spec


def preflight(
    loaded: LoadedSpec, options: RunOptions, say: Callable[[str], None] = lambda text: None
) -> SweepPlan:
    """Check what can be checked before Ray starts; see the module docstring."""
    from bopsweep.data import check_available

    spec = loaded.spec
    trials = expand(loaded)
    address = options.address or os.environ.get("RAY_ADDRESS")
    folder = SweepFolder(resolve_storage(options.storage, spec.storage), spec.name)
    folder.check_writable()
    if not address:
        # On a cluster the data and GPUs are on the nodes, not necessarily here.
        for dataset, data_dir, download in sorted(
            {(t.train.dataset, t.train.data_dir, t.train.download) for t in trials}
        ):
            check_available(dataset, Path(data_dir).expanduser().resolve(), download)
        check_local_resources(spec, trials)
    # Wherever the trials run: the devices they name against what Ray gives them.
    check_devices(spec, trials)
    uri = mlflow_client.resolve_tracking_uri(options.tracking_uri, spec.tracking.uri)
    offline = False
    if mlflow_client.is_local_uri(uri):
        mlflow_client.check_local_store(uri, must_exist=False)
    else:
        # MLflow's client retries a failed request for minutes by default; the driver
        # should say the server is unreachable within seconds (retries after 1 and 2 s).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        offline = not _reach_server(
            uri, folder, options.tracking_wait_s, say, go_on=options.without_tracking
        )
    resume = decide_resume(
        folder,
        loaded.sha256,
        uri,
        restart=options.restart,
        restorable=ray_backend.can_restore(folder.path),
    )
    groups = plan_groups(spec, trials)
    return SweepPlan(loaded, trials, uri, folder, address, resume, groups, offline)


def _reach_server(uri: str, folder: SweepFolder, wait_s: float, say, *, go_on: bool) -> bool:
    """Refuse an unreachable server up front, except for a rerun of a sweep that
    already has its parent run there (a server restarting, a network blip): that
    waits up to ``wait_s`` seconds for it, saying so, and then, with ``go_on``, goes
    on without it (returns False: the trials keep every epoch in their results)."""
    try:
        mlflow_client.check_connection(uri)
        return True
    except mlflow_client.TrackingUnreachable as error:
        state = folder.read_state()
        if state is None or state.get("tracking_uri") != uri or (wait_s <= 0 and not go_on):
            raise
        unreachable = error
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        say(
            f"the tracking server at {uri} does not answer; it holds this sweep's parent "
            f"run: waiting for it ({left:.0f} s left, Ctrl-C to stop)"
        )
        time.sleep(min(5.0, left))
        try:
            mlflow_client.check_connection(uri)
            say(f"the tracking server at {uri} answers again")
            return True
        except mlflow_client.TrackingUnreachable as error:
            unreachable = error
    if go_on:
        say(
            f"the tracking server at {uri} does not answer: going on without it "
            f"(--without-tracking); every epoch stays in the results folder, and "
            f"`bopsweep sync {folder.name}` sends them once the server is up"
        )
        return False
    raise UserError(
        f"{unreachable} (waited {wait_s:g} s; run the same command again once it is up, "
        "raise --tracking-wait, or add --without-tracking to train now and sync later)"
    )
