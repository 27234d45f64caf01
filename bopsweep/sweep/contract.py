"""What the sweep's driver and its trial workers say to each other, typed and frozen.

A Ray trial's config is ``{"trial": TrialGroup, "sweep": SweepContext}`` as plain
dicts (Ray saves configs as JSON and restores them on a rerun); both sides turn them
into these classes at once, so a missing or misspelt key fails where it is read, not
as a silent default three modules later. Every Ray trial holds a group of K >= 1
members (K = 1 is a plain trial): nothing downstream asks whether a trial is fused.

A trial reports, once per epoch, :func:`group_result`: each member's metrics under
``members.<trial index>`` and the best member's value of the sweep's metric at the
top (what Ray Tune's schedulers and searchers read). :func:`member_results` is the
one reading of it, for the runner, the live table and ``bopsweep sync``.

This module is a leaf: it imports nothing of bopsweep, Ray, MLflow or torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# A result's parts (see group_result).
MEMBERS_KEY = "members"
# A user error (missing data, a bad value) that ended the trial: every other trial
# would hit it too, so the sweep stops.
USER_ERROR_KEY = "bopsweep_user_error"
# What a trial reports about where its time went, besides its metrics.
TIMING_PREFIX = "timing/"
# In a member's part: a member that ended on its own before its last epoch (FAILED:
# it diverged or its training code raised; FINISHED: stopped early) and why.
MEMBER_STATUS_KEY = "bopsweep_status"
MEMBER_ERROR_KEY = "bopsweep_error"


# Set in the driver's environment (which a local Ray's workers inherit) by a rerun
# going on without its tracking server: the trials it restores carry the context of
# the run that started them, and must not wait for the server at their end.
TRACKING_OFFLINE_ENV = "BOPSWEEP_TRACKING_OFFLINE"


@dataclass(frozen=True)
class Member:
    """One trial of the sweep: its index, run name, swept values and full training
    config (``TrainConfig.model_dump()``, with ``data_dir`` resolved by the driver)."""

    index: int
    name: str
    swept: Mapping[str, Any]
    train: Mapping[str, Any]


@dataclass(frozen=True)
class TrialGroup:
    """One Ray trial: K >= 1 members trained in one process (K > 1: one stacked model)."""

    index: int
    name: str
    dir: str
    members: tuple[Member, ...]

    @property
    def indices(self) -> list[int]:
        return [m.index for m in self.members]

    def as_config(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "dir": self.dir,
            MEMBERS_KEY: [asdict(m) for m in self.members],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialGroup:
        if MEMBERS_KEY not in config:
            # A single trial's config as sweeps before groups of one saved it.
            member = Member(config["index"], config["name"], config["swept"], config["train"])
            return cls(config["index"], config["name"], config["dir"], (member,))
        members = tuple(
            Member(m["index"], m["name"], m["swept"], m["train"]) for m in config[MEMBERS_KEY]
        )
        return cls(config["index"], config["name"], config["dir"], members)


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep needs to know about the sweep."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metric: str = "val_accuracy"
    mode: str = "max"
    cpus_per_trial: float = 1.0
    # Checkpoint every N epochs (None: by time only), and every N seconds.
    checkpoint_every: int | None = None
    checkpoint_every_s: float | None = None
    # The spec's early stopping (SchedulerSpec as a dict), None for FIFO.
    scheduler: Mapping[str, Any] | None = None
    # How long a finished trial keeps retrying an unreachable tracking server.
    drain_timeout_s: float = 120.0
    # What each child run gets besides its epochs (see tracking.py).
    models: tuple[str, ...] = ()
    system_metrics_s: float | None = None
    run_tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def scheduler_type(self) -> str:
        return (self.scheduler or {}).get("type", "fifo")

    def as_config(self) -> dict[str, Any]:
        config = asdict(self)
        config["models"] = list(self.models)
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SweepContext:
        values = dict(config)
        values["models"] = tuple(values.get("models") or ())
        return cls(**values)


def group_result(
    parts: Mapping[int, Mapping[str, Any]],
    epoch: int,
    ranked: list[Mapping[str, Any]],
    metric: str,
    mode: str,
) -> dict[str, Any]:
    """A group's report to Ray Tune: member parts by trial index under ``members``, and
    at the top the best value of ``metric`` among the ``ranked`` members' metrics.

    The parts are one JSON text: Ray Tune keeps statistics and windows of every
    numeric value of a result, nested ones flattened, and writes them into each
    snapshot of the experiment's state; for a group of 16 members that was 287 keys
    and 317 KB a Ray trial (24.5 MB for a 1,000-trial grid, written every few
    seconds). Only the top-level values are Ray's to rank and schedule by."""
    values = [m[metric] for m in ranked if metric in m]
    members = {str(index): dict(part) for index, part in parts.items()}
    result: dict[str, Any] = {
        "epoch": epoch,
        # default=float: numpy scalars, which Ray's own encoder would take too.
        MEMBERS_KEY: json.dumps(members, separators=(",", ":"), default=float),
    }
    if values:
        result[metric] = max(values) if mode == "max" else min(values)
    return result


def member_indices(config: Mapping[str, Any]) -> list[int]:
    """The trial indices a Ray trial's ``config["trial"]`` holds."""
    return TrialGroup.from_config(config).indices


def member_results(config: Mapping[str, Any], result: Mapping[str, Any] | None) -> dict[int, dict]:
    """Each held trial's part of a Ray trial's result (``config``: its ``config["trial"]``)."""
    result = result or {}
    if MEMBERS_KEY not in config:
        # A single trial of a sweep saved before groups of one: its metrics at the top.
        return {int(config["index"]): dict(result)}
    members = result.get(MEMBERS_KEY) or {}
    if isinstance(members, str):
        members = json.loads(members)  # group_result's; results saved before are dicts
    return {i: dict(members.get(str(i)) or {}) for i in member_indices(config)}
