"""Helpers for tests and benchmarks: real data files, and faults injected into sweeps.

Nothing in the sweep or training code depends on this module. Datasets cannot always
be downloaded where tests and benchmarks run, so :func:`write_cifar10_batch` writes
genuine CIFAR-10 python batches (the loader then reads real files, not a stand-in).
:func:`kill_at_epoch` plugs into a sweep's trials through their one extension point
(``BOPSWEEP_TRIAL_CALLBACKS``, see :mod:`bopsweep.sweep.trainable`) to test recovery.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np

# Fault injection, read by kill_at_epoch in the trial's worker.
KILL_AT_EPOCH_ENV = "BOPSWEEP_FAULT_KILL_AT_EPOCH"
KILL_TRIAL_ENV = "BOPSWEEP_FAULT_TRIAL"
KILL_MARKER_ENV = "BOPSWEEP_FAULT_MARKER"
KILL_CALLBACK = "bopsweep.testing:kill_at_epoch"


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


def kill_at_epoch(trial_index: int):
    """A trial callback (for ``BOPSWEEP_TRIAL_CALLBACKS``): the first attempt of trial
    ``$BOPSWEEP_FAULT_TRIAL`` (default 0) SIGKILLs its own worker in the middle of
    epoch ``$BOPSWEEP_FAULT_KILL_AT_EPOCH`` (after its second batch), once:
    ``$BOPSWEEP_FAULT_MARKER`` records that it did."""
    from bopsweep.train import Callback

    epoch = os.environ.get(KILL_AT_EPOCH_ENV)
    if epoch is None or trial_index != int(os.environ.get(KILL_TRIAL_ENV, "0")):
        return None
    marker = Path(os.environ[KILL_MARKER_ENV])

    class KillAtEpoch(Callback):
        def on_batch_end(self, trainer, step: int) -> None:
            if trainer.epoch == int(epoch) and step == 1 and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("killed once")
                os.kill(os.getpid(), 9)

    return KillAtEpoch()
