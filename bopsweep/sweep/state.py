"""Where a sweep keeps its results, and what a rerun needs to resume it.

Every sweep has a folder ``<storage>/<name>`` (Ray Tune's experiment folder: trial
results and checkpoints), with bopsweep's own state file next to Ray's: the spec's
hash, the MLflow experiment and parent run, and the tracking URI. A rerun of the
same spec finds it and resumes into the same parent run; a changed spec or
tracking URI is refused instead of mixing two sweeps in one place. The sweep's
logs (Ray's and MLflow's, kept off the terminal) are in ``<folder>/logs``.

The storage is a local folder or any URI pyarrow's filesystems read (``s3://``,
``gs://``, ``abfs://``, ``hdfs://``...; Ray Tune writes there through the same
filesystems): the state file, the trials' results (for ``bopsweep sync``) and
``--restart`` go through :class:`pyarrow.fs.FileSystem` for those. An S3-compatible
server is reached as pyarrow and the AWS SDKs reach it: ``AWS_ENDPOINT_URL`` (or
``?endpoint_override=`` in the URI) and the usual AWS credentials.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from bopsweep.errors import UserError

# The folders Ray Tune makes for a sweep's trials: single trials and fused groups.
RAY_TRIAL_PREFIXES = ("trial_", "fused_")
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
        base, sep, query = storage.partition("?")
        return base.rstrip("/") + sep + query
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
        """The folder's path or URI (a URI's query, such as endpoint_override, kept
        at its end, where pyarrow and Ray read it)."""
        base, sep, query = self.storage.partition("?")
        return f"{base}/{self.name}{sep}{query}"

    @property
    def local(self) -> Path | None:
        return None if is_uri(self.storage) else Path(self.storage) / self.name

    @property
    def log_dir(self) -> Path | None:
        return None if self.local is None else self.local / LOG_DIR

    def trial_dir(self, index: int) -> str:
        base, sep, query = self.path.partition("?")
        return f"{base}/trial_{index:03d}{sep}{query}"

    # A URI's filesystem: pyarrow's, resolved once (credentials, region, endpoint).
    @cached_property
    def _remote(self):
        import pyarrow.fs

        try:
            return pyarrow.fs.FileSystem.from_uri(self.path)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot use the storage {self.storage}: {error}") from None

    def _call(self, action):
        try:
            return action()
        except OSError as error:
            raise UserError(f"cannot reach the sweep's storage {self.path}: {error}") from None

    def read_text(self, relative: str) -> str | None:
        """A file of the folder, or None if it is not there."""
        if self.local is not None:
            path = self.local / relative
            return path.read_text() if path.is_file() else None
        import pyarrow.fs

        fs, base = self._remote

        def read() -> str | None:
            if fs.get_file_info(f"{base}/{relative}").type != pyarrow.fs.FileType.File:
                return None
            with fs.open_input_stream(f"{base}/{relative}") as stream:
                return stream.read().decode()

        return self._call(read)

    def write_text(self, relative: str, text: str) -> None:
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
            (self.local / relative).write_text(text)
            return
        fs, base = self._remote

        def write() -> None:
            fs.create_dir(base, recursive=True)
            with fs.open_output_stream(f"{base}/{relative}") as stream:
                stream.write(text.encode())

        self._call(write)

    def trial_dirs(self) -> list[str]:
        """The names of the Ray trials' folders (``trial_NNN``, and ``fused_NNN`` for
        fused groups), sorted."""
        if self.local is not None:
            return sorted(
                p.name
                for p in self.local.glob("*_*")
                if p.is_dir() and p.name.startswith(RAY_TRIAL_PREFIXES)
            )
        import pyarrow.fs

        fs, base = self._remote

        def listing() -> list[str]:
            selector = pyarrow.fs.FileSelector(base, allow_not_found=True)
            return sorted(
                info.base_name
                for info in fs.get_file_info(selector)
                if info.type == pyarrow.fs.FileType.Directory
                and info.base_name.startswith(RAY_TRIAL_PREFIXES)
            )

        return self._call(listing)

    def read_state(self) -> dict | None:
        text = self.read_text(STATE_FILE)
        return None if text is None else json.loads(text)

    def write_state(self, state: dict) -> None:
        self.write_text(STATE_FILE, json.dumps(state, indent=2))

    def write_timeline(self, timings: dict) -> None:
        if self.local is not None and not self.local.is_dir():
            return
        self.write_text(TIMELINE_FILE, json.dumps(timings, indent=2) + "\n")

    def remove(self) -> None:
        if self.local is not None:
            if self.local.exists():
                shutil.rmtree(self.local)
            return
        import pyarrow.fs

        fs, base = self._remote

        def remove() -> None:
            if fs.get_file_info(base).type != pyarrow.fs.FileType.NotFound:
                fs.delete_dir(base)

        self._call(remove)

    def check_writable(self) -> None:
        """Refuse a storage this process cannot write, before anything starts (for a
        URI: one whose filesystem cannot be opened or listed)."""
        if self.local is None:
            self.trial_dirs()
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
