"""The CIFAR-10 python-batches format: a safe reader, and a writer for tests and
benchmarks.

The batches are pickles; they are read with an unpickler that only accepts the few
numpy types the format needs, so a hostile file cannot run code. Writing the format
too lets benchmarks and tests use real CIFAR-10 files when the dataset itself cannot
be fetched. numpy only: no torch here.
"""

from __future__ import annotations

import io
import pickle
import struct
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


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as the cPickle that wrote the
    CIFAR-10 batches did (Python 3 would route them through ``_codecs.encode``)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_cifar10_batch(path: Path, rows: np.ndarray, labels: np.ndarray, name: str) -> None:
    """One batch file as the CIFAR-10 python version stores it: a protocol-2 pickle
    of a dict with Python 2 string keys, uint8 ``data`` (N, 3072) and a ``labels`` list."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": rows,
        b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))],
    }
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(batch)
    # The real files name numpy's module as the numpy of their time did.
    path.write_bytes(
        buffer.getvalue().replace(
            b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
        )
    )
