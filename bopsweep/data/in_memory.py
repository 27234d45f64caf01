"""The small datasets (CIFAR-10, MNIST, digits, synthetic), held whole in memory.

Each loader returns an :class:`InMemoryDataset`: uint8 images and int64 labels of
both splits, read on the CPU and moved whole to the training device, where
:mod:`bopsweep.data.batches` cuts, augments and normalises them (as airbench does).
The loaders are registered by name in :mod:`bopsweep.data`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bopsweep.data import get_preprocess
from bopsweep.data.batches import Batches, DeviceBatches, Preprocess
from bopsweep.data.formats import read_cifar_batch
from bopsweep.data.layout import (
    CIFAR10_FILES,
    CIFAR10_FOLDER,
    MNIST_FILES,
    MNIST_FOLDER,
    missing_files,
    require_cifar10,
    require_mnist,
)
from bopsweep.errors import UserError

# The tensors of an InMemoryDataset as loaded: images and labels of both splits.
TENSOR_FIELDS = ("train_x", "train_y", "val_x", "val_y")
# The original code's --validationset: the last 10% of the training set (TFDS'
# "train[90%:]") is held out for validation and the test split is kept for the end.
VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class InMemoryDataset:
    """Images as uint8 ``(N, C, H, W)`` tensors plus int64 labels, both splits.

    ``pixel_max`` is the largest pixel value of the format (255 for images, 16 for
    scikit-learn's digits): normalisation maps ``[0, pixel_max]`` to ``[-1, 1]``.

    As loaded, ``val`` is the dataset's test split. :meth:`split_validation` holds out
    part of the training set as ``val`` and moves the test split to ``test``.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    num_classes: int
    pixel_max: float = 255.0
    test_x: Tensor | None = None
    test_y: Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def _fields(self) -> tuple[str, ...]:
        return TENSOR_FIELDS if self.test_x is None else (*TENSOR_FIELDS, "test_x", "test_y")

    def to(self, device: torch.device | str) -> InMemoryDataset:
        move = {k: getattr(self, k).to(device) for k in self._fields()}
        return replace(self, **move)

    def limit(self, max_train: int | None, max_val: int | None) -> InMemoryDataset:
        """The first samples of each split (for smoke runs and benchmarks); the test
        split, when there is one, is limited like ``val``."""
        limits = {"train": max_train, "val": max_val, "test": max_val}
        return replace(self, **{k: getattr(self, k)[: limits[k[:-2]]] for k in self._fields()})

    def split_validation(self, fraction: float = VALIDATION_FRACTION) -> InMemoryDataset:
        """Hold out the last ``fraction`` of the training set as ``val``; the loaded
        ``val`` (the test set) becomes ``test``. Fixed: the same split for every run."""
        if self.test_x is not None:
            raise ValueError(f"{self.name} already has a held-out validation split")
        n = len(self.train_y)
        keep = n - round(n * fraction)
        if not 0 < keep < n:
            raise UserError(
                f"{self.name}: {n} training samples are too few to hold out {fraction:.0%}"
            )
        return replace(
            self,
            train_x=self.train_x[:keep],
            train_y=self.train_y[:keep],
            val_x=self.train_x[keep:],
            val_y=self.train_y[keep:],
            test_x=self.val_x,
            test_y=self.val_y,
        )

    def batches(self, preprocess_fn: str, batch_size: int, device: torch.device) -> Batches:
        """Move both splits to ``device`` and batch them there."""
        preprocess = get_preprocess(preprocess_fn)
        if not isinstance(preprocess, Preprocess):
            raise UserError(
                f"preprocess fn {preprocess_fn!r} is for ImageNet; for {self.name} use "
                "default or resize_and_flip"
            )
        return DeviceBatches(self.to(device), preprocess, batch_size)


def cifar10(data_dir: Path, download: bool) -> InMemoryDataset:
    """CIFAR-10 in its python-batches format under ``<data_dir>/cifar-10-batches-py``."""
    if download and missing_files(data_dir / CIFAR10_FOLDER, CIFAR10_FILES):
        import torchvision

        torchvision.datasets.CIFAR10(str(data_dir), download=True)
    folder = require_cifar10(data_dir, download)
    train = [read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    val_x, val_y = read_cifar_batch(folder / "test_batch")
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    del train
    _return_freed_memory()
    return InMemoryDataset(
        "cifar10",
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(val_x),
        torch.from_numpy(val_y),
        num_classes=10,
    )


def _return_freed_memory() -> None:
    """Hand memory freed by the C allocator back to the OS (glibc only).

    Joining the batches frees as much again as the dataset (the batches as read),
    in chunks small enough that glibc keeps them for reuse: without this, a process
    holding CIFAR-10 (176 MiB) stays charged about twice that."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def mnist(data_dir: Path, download: bool) -> InMemoryDataset:
    """MNIST from the raw idx files under ``<data_dir>/MNIST/raw`` (torchvision's layout)."""
    from torchvision.datasets import mnist as tv_mnist

    if download and missing_files(data_dir / MNIST_FOLDER, MNIST_FILES.values()):
        tv_mnist.MNIST(str(data_dir), download=True)
    folder = require_mnist(data_dir, download)
    arrays = {
        key: (tv_mnist.read_image_file if key.endswith("x") else tv_mnist.read_label_file)(
            str(folder / name)
        )
        for key, name in MNIST_FILES.items()
    }
    return InMemoryDataset(
        "mnist",
        arrays["train_x"].unsqueeze(1).to(torch.uint8),
        arrays["train_y"].long(),
        arrays["val_x"].unsqueeze(1).to(torch.uint8),
        arrays["val_y"].long(),
        num_classes=10,
    )


# The digits split is fixed, whatever the run's seed, so every run of a sweep is
# scored on the same validation images.
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``(images (N, 8, 8) uint8, labels int64)``.

    Read straight from the CSV file that ``sklearn.datasets.load_digits`` reads:
    importing ``sklearn.datasets`` costs seconds (SciPy and more), paid by every
    sweep worker, for a file numpy reads in milliseconds."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the digits dataset comes with scikit-learn: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    table = _digits_table(path)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 8, 8)
    return images, table[:, -1].astype(np.int64)


@functools.cache
def _digits_table(path: Path) -> np.ndarray:
    # Parsed once a process: a sweep worker builds a trainer for each of its trials
    # (a 1,000-trial grid: 63 fused groups), and parsing the CSV takes ~25 ms.
    return np.loadtxt(path, delimiter=",", dtype=np.float64)


def digits(data_dir: Path, download: bool) -> InMemoryDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, pixels 0..16), 80/20 split."""
    images_np, labels_np = digits_arrays()
    images = torch.from_numpy(images_np).unsqueeze(1)
    labels = torch.from_numpy(labels_np)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_val = int(len(labels) * DIGITS_VAL_FRACTION)
    val, train = order[:n_val], order[n_val:]
    return InMemoryDataset(
        "digits", images[train], labels[train], images[val], labels[val], 10, pixel_max=16.0
    )


def make_synthetic(
    shape: tuple[int, ...] = (3, 32, 32),
    num_classes: int = 10,
    n_train: int = 1024,
    n_val: int = 256,
    noise: float = 48.0,
    seed: int = 0,
) -> InMemoryDataset:
    """Random images around one random prototype per class: learnable, any shape."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand((num_classes, *shape), generator=gen) * 255

    def split(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(num_classes, (n,), generator=gen)
        images = prototypes[labels] + noise * torch.randn((n, *shape), generator=gen)
        return images.clamp(0, 255).round().to(torch.uint8), labels

    train_x, train_y = split(n_train)
    val_x, val_y = split(n_val)
    return InMemoryDataset("synthetic", train_x, train_y, val_x, val_y, num_classes)


def synthetic(data_dir: Path, download: bool) -> InMemoryDataset:
    """CIFAR-shaped random data (3x32x32, 10 classes): tests and benchmarks, no files."""
    return make_synthetic()
