"""Where a sweep keeps its results, and what a rerun needs to resume it.

Every sweep has a folder ``<storage>/<name>`` (Ray Tune's experiment folder: trial
results and checkpoints), with bopsweep's own state file next to Ray's: the spec's
hash, the MLflow experiment and parent run, and the tracking URI. A rerun of the
same spec finds it and resumes into the same parent run; a changed spec or
tracking URI is refused instead of mixing two sweeps in one place. The sweep's
logs (Ray's and MLflow's, kept off the terminal) are in ``<folder>/logs``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bopsweep.errors import UserError

STATE_FILE = "bopsweep_sweep.json"
TIMELINE_FILE = "timeline.json"
LOG_DIR = "logs"
DEFAULT_STORAGE = "bopsweep_results"


def resolve_storage(cli_storage: str | None, spec_storage: str | None) -> str:
    """``--storage`` > spec ``storage:`` > ``./bopsweep_results``; URIs are kept."""
    return resolve_storage_path(cli_storage or spec_storage or DEFAULT_STORAGE)


def resolve_storage_path(storage: str) -> str:
    """An absolute path (Ray needs one) or a URI, as given."""
    if "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve())


def is_uri(storage: str) -> bool:
    return "://" in storage


@dataclass(frozen=True)
class SweepFolder:
    """The results folder of one sweep (a local path or a URI)."""

    storage: str
    name: str

    @property
    def path(self) -> str:
        return f"{self.storage}/{self.name}"

    @property
    def local(self) -> Path | None:
        return None if is_uri(self.storage) else Path(self.storage) / self.name

    @property
    def log_dir(self) -> Path | None:
        return None if self.local is None else self.local / LOG_DIR

    def trial_dir(self, index: int) -> str:
        return f"{self.path}/trial_{index:03d}"

    def read_state(self) -> dict | None:
        if self.local is None or not (self.local / STATE_FILE).is_file():
            return None
        return json.loads((self.local / STATE_FILE).read_text())

    def write_state(self, state: dict) -> None:
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
            (self.local / STATE_FILE).write_text(json.dumps(state, indent=2))

    def write_timeline(self, timings: dict) -> None:
        if self.local is not None and self.local.is_dir():
            (self.local / TIMELINE_FILE).write_text(json.dumps(timings, indent=2) + "\n")

    def remove(self) -> None:
        if self.local is not None and self.local.exists():
            shutil.rmtree(self.local)

    def check_writable(self) -> None:
        """Refuse a storage this process cannot write, before anything starts."""
        if self.local is None:
            return
        existing = self.local
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(
                f"cannot write the sweep's results to {self.local}: {existing} is not a "
                "writable folder; pass --storage DIR (or set storage: in the spec)"
            )


@dataclass(frozen=True)
class Resume:
    """What a rerun found: the previous state, if the sweep can be resumed."""

    state: dict | None

    @property
    def resuming(self) -> bool:
        return self.state is not None


def decide_resume(
    folder: SweepFolder, spec_sha256: str, tracking_uri: str, *, restart: bool, restorable: bool
) -> Resume:
    """Resume when a previous run of this sweep left its state and Ray can restore it;
    refuse a changed spec or tracking URI; ``restart`` starts over (and clears the
    folder)."""
    previous = folder.read_state()
    if restart:
        folder.remove()
        return Resume(None)
    if previous is None or not restorable:
        return Resume(None)
    if previous["spec_sha256"] != spec_sha256:
        raise UserError(
            f"the spec changed since sweep {folder.name!r} was started in {folder.path} "
            f"(spec hash {previous['spec_sha256'][:12]} -> {spec_sha256[:12]}): run it "
            "with --restart to start over, or give it another name"
        )
    if previous["tracking_uri"] != tracking_uri:
        raise UserError(
            f"sweep {folder.name!r} was tracked at {previous['tracking_uri']}, not "
            f"{tracking_uri}: pass the same --tracking-uri to resume, or --restart"
        )
    return Resume(previous)
