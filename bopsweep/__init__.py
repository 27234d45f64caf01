"""bopsweep: sweeps of binarized neural networks trained with Bop.

PyTorch Bop and binarized models (:mod:`bopsweep.bnn`), YAML sweep specs run by
Ray Tune (:mod:`bopsweep.sweep`), every trial tracked in MLflow.
"""

from importlib.metadata import PackageNotFoundError, version

from bopsweep.bnn.optim import Bop, Bop2ndOrder, CaseOptimizer
from bopsweep.bnn.schedules import Schedule

try:
    __version__ = version("bopsweep")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["Bop", "Bop2ndOrder", "CaseOptimizer", "Schedule", "__version__"]
