"""Ray's and MLflow's log lines go to the sweep's log file, not the terminal.

A sweep's terminal shows the live table, the leaderboard and where things are.
Ray, Ray Tune, MLflow and Python warnings log to the Python loggers below; while a
sweep runs they are written to ``<results>/logs/driver.log`` instead (with
``--verbose`` to the terminal as well). Ray's C++ core also writes warnings straight
to file descriptor 2 (a cluster refusing a token: one line a second); that
descriptor goes to the same file, while Python's ``sys.stderr`` (the live table)
keeps the terminal. The trials' own output is in Ray's worker logs and each failed
trial's ``error.txt``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DRIVER_LOG = "driver.log"
# The loggers of the libraries a sweep drives; Ray installs its own terminal
# handler on "ray" at import, which is why handlers are replaced, not just added.
LOGGERS = ("ray", "mlflow", "alembic", "py.warnings", "bopsweep", "filelock", "urllib3")


@contextmanager
def captured(log_dir: Path | None, *, verbose: bool = False) -> Iterator[Path | None]:
    """Send the libraries' logging (and warnings) to ``log_dir/driver.log``."""
    path = None
    handlers: list[logging.Handler] = []
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / DRIVER_LOG
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        handlers.append(file_handler)
    if verbose or log_dir is None:
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handlers.append(terminal)
    saved = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.propagate, logger.level)
    _import_ray_logging()
    logging.captureWarnings(True)
    try:
        for name in LOGGERS:
            logger = logging.getLogger(name)
            logger.handlers = list(handlers)
            logger.propagate = False
            if name in ("py.warnings", "bopsweep"):
                logger.setLevel(logging.INFO)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            if path is not None and not verbose:
                with _native_stderr_to(path):
                    yield path
            else:
                yield path
    finally:
        logging.captureWarnings(False)
        for name, (old, propagate, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = old, propagate
            logger.setLevel(level)
        for handler in handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()


@contextmanager
def _native_stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path``; ``sys.stderr`` keeps the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    previous, sys.stderr = sys.stderr, terminal
    try:
        yield
    finally:
        terminal.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = previous
        terminal.close()


def _import_ray_logging() -> None:
    """Ray configures its loggers when it is first imported; that must happen
    before they are redirected, or Ray would put its handler back."""
    import ray  # noqa: F401
