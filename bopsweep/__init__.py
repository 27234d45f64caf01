"""bopsweep: sweeps of binarized neural networks trained with Bop.

PyTorch Bop and binarized models (:mod:`bopsweep.bnn`), YAML sweep specs run by
Ray Tune (:mod:`bopsweep.sweep`), every trial tracked in MLflow.

``from bopsweep import Bop`` works as usual, but the optimizers are imported on
first use: every ``bopsweep`` command imports this package, and those that never
train (``--help``, ``plan``, a refused spec) should not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Public name -> the module that defines it.
_LAZY = {
    "Bop": "bopsweep.bnn.optim",
    "Bop2ndOrder": "bopsweep.bnn.optim",
    "Bop2ndOrderUnbiased": "bopsweep.bnn.optim",
    "CaseOptimizer": "bopsweep.bnn.case",
    "Schedule": "bopsweep.bnn.schedules",
}

if TYPE_CHECKING:
    __version__: str
    from bopsweep.bnn.case import CaseOptimizer
    from bopsweep.bnn.optim import Bop, Bop2ndOrder, Bop2ndOrderUnbiased
    from bopsweep.bnn.schedules import Schedule

__all__ = [
    "Bop",
    "Bop2ndOrder",
    "Bop2ndOrderUnbiased",
    "CaseOptimizer",
    "Schedule",
    "__version__",
]


def _version() -> str:
    # importlib.metadata scans the installed distributions: done once, when asked.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bopsweep")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


def __getattr__(name: str) -> object:
    if name == "__version__":
        value: object = _version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "__version__"])
