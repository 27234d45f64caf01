"""Sweeps: YAML specs expanded into trials, run by Ray Tune, tracked in MLflow.

``spec`` turns a file into a validated :class:`~bopsweep.sweep.spec.SweepSpec` and
its trials; ``runner`` runs them through ``ray_backend``; ``trainable`` is one trial;
``mlflow_client`` and ``tracking`` hold the MLflow side (parent and child runs).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """This user's cache of what bopsweep measured or built once per machine
    (``$XDG_CACHE_HOME/bopsweep``, else ``~/.cache/bopsweep``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bopsweep"
