"""The CIFAR-10 python-batches format, read safely.

The batches are pickles; they are read with an unpickler that only accepts the few
numpy types the format needs, so a hostile file cannot run code. (The writer that
tests and benchmarks use is in :mod:`bopsweep.testing`.) numpy only: no torch here.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from bopsweep.errors import UserError


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, 3, 32, 32)`` and int64 labels of one batch file."""
    try:
        with path.open("rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return data, np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        # A corrupt or hostile file is bad input: one message, not a traceback.
        raise UserError(f"cannot read CIFAR-10 batch {path}: {error}") from None
