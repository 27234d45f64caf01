"""Datasets and preprocessing, registered by the names users type.

Small datasets (CIFAR-10, MNIST, digits, synthetic) are held whole as uint8 tensors
on the training device, as airbench does: each batch is cut with a seeded
``randperm``, augmented as a batch on the device and normalised there. There is no
per-sample PIL ``DataLoader`` in the loop, which is what makes a CPU epoch of
BinaryNet cost the model's compute and little else.

The CIFAR-10 python batches are pickles; they are read with an unpickler that only
accepts the few numpy types the format needs, so a hostile file cannot run code.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bopsweep.errors import UserError, unknown_name

# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class InMemoryDataset:
    """Images as uint8 ``(N, C, H, W)`` tensors plus int64 labels, both splits.

    ``pixel_max`` is the largest pixel value of the format (255 for images, 16 for
    scikit-learn's digits): normalisation maps ``[0, pixel_max]`` to ``[-1, 1]``.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    num_classes: int
    pixel_max: float = 255.0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device | str) -> InMemoryDataset:
        move = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y")}
        return replace(self, **move)

    def limit(self, max_train: int | None, max_val: int | None) -> InMemoryDataset:
        """The first samples of each split (for smoke runs and benchmarks)."""
        return replace(
            self,
            train_x=self.train_x[:max_train],
            train_y=self.train_y[:max_train],
            val_x=self.val_x[:max_val],
            val_y=self.val_y[:max_val],
        )


DatasetLoader = Callable[[Path, bool], InMemoryDataset]
DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    def decorator(loader: DatasetLoader) -> DatasetLoader:
        DATASETS[name] = loader
        return loader

    return decorator


def load_dataset(name: str, data_dir: str | Path = "data", download: bool = False):
    """Load a registered dataset (on the CPU) or raise a :class:`UserError`."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    return DATASETS[name](Path(data_dir).expanduser(), download)


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


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return data, np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        # A corrupt or hostile file is bad input: one message, not a traceback.
        raise UserError(f"cannot read CIFAR-10 batch {path}: {error}") from None


CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@register_dataset("cifar10")
def cifar10(data_dir: Path, download: bool) -> InMemoryDataset:
    """CIFAR-10 in its python-batches format under ``<data_dir>/cifar-10-batches-py``."""
    folder = data_dir / "cifar-10-batches-py"
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if missing and download:
        import torchvision

        torchvision.datasets.CIFAR10(str(data_dir), download=True)
        missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}. Put the python "
            "version of CIFAR-10 (cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html, extracted) there, point "
            "--data-dir at its parent, or pass --download"
        )
    train = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    val_x, val_y = _read_cifar_batch(folder / "test_batch")
    return InMemoryDataset(
        "cifar10",
        torch.from_numpy(np.concatenate([x for x, _ in train])),
        torch.from_numpy(np.concatenate([y for _, y in train])),
        torch.from_numpy(val_x),
        torch.from_numpy(val_y),
        num_classes=10,
    )


MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "val_x": "t10k-images-idx3-ubyte",
    "val_y": "t10k-labels-idx1-ubyte",
}


@register_dataset("mnist")
def mnist(data_dir: Path, download: bool) -> InMemoryDataset:
    """MNIST from the raw idx files under ``<data_dir>/MNIST/raw`` (torchvision's layout)."""
    from torchvision.datasets import mnist as tv_mnist

    folder = data_dir / "MNIST" / "raw"
    missing = [f for f in MNIST_FILES.values() if not (folder / f).is_file()]
    if missing and download:
        tv_mnist.MNIST(str(data_dir), download=True)
        missing = [f for f in MNIST_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise UserError(
            f"MNIST not found: {folder} lacks {', '.join(missing)}. Put the four "
            "uncompressed idx files there, point --data-dir at the folder holding "
            "MNIST/, or pass --download"
        )
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


@register_dataset("digits")
def digits(data_dir: Path, download: bool) -> InMemoryDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, pixels 0..16), 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
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


@register_dataset("synthetic")
def synthetic(data_dir: Path, download: bool) -> InMemoryDataset:
    """CIFAR-shaped random data (3x32x32, 10 classes): tests and benchmarks, no files."""
    return make_synthetic()


# --------------------------------------------------------------------- preprocessing


def normalize(x: Tensor, pixel_max: float) -> Tensor:
    """uint8 ``[0, pixel_max]`` -> float ``[-1, 1]`` (the paper's ``x / 127.5 - 1``)."""
    return x.float().div_(pixel_max / 2).sub_(1.0)


def crop_and_flip(x: Tensor, pad: int, generator: torch.Generator | None) -> Tensor:
    """Zero-pad by ``pad``, take a random crop of the original size and flip half of
    the images left-right; one gather for the whole batch, on x's device."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dev = x.device
    off_y = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=dev)
    off_x = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=dev)
    flip = torch.rand((n, 1), generator=generator, device=dev) < 0.5
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip, off_x + (w - 1 - cols), off_x + cols)
    rows = off_y + torch.arange(h, device=dev)
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


@dataclass(frozen=True)
class Preprocess:
    """A batched preprocessing function: uint8 batch -> float batch on the device."""

    train: Callable[[Tensor, float, torch.Generator | None], Tensor]
    eval: Callable[[Tensor, float], Tensor]


def _default_train(x: Tensor, pixel_max: float, generator: torch.Generator | None) -> Tensor:
    return normalize(x, pixel_max)


def _resize_and_flip_train(x: Tensor, pixel_max: float, generator) -> Tensor:
    # The paper pads 32x32 CIFAR-10 images to 40x40 (4 pixels a side).
    return normalize(crop_and_flip(x, 4, generator), pixel_max)


PREPROCESS_FNS: dict[str, Preprocess] = {
    "default": Preprocess(_default_train, normalize),
    "resize_and_flip": Preprocess(_resize_and_flip_train, normalize),
}


def get_preprocess(name: str) -> Preprocess:
    if name not in PREPROCESS_FNS:
        raise unknown_name("preprocess fn", name, PREPROCESS_FNS)
    return PREPROCESS_FNS[name]


# --------------------------------------------------------------------------- batches


class DeviceBatches:
    """Batches from an :class:`InMemoryDataset` already on the training device."""

    def __init__(self, data: InMemoryDataset, preprocess: Preprocess, batch_size: int) -> None:
        self.data = data
        self.preprocess = preprocess
        self.batch_size = batch_size

    def steps_per_epoch(self) -> int:
        n = len(self.data.train_y)
        full, rest = divmod(n, self.batch_size)
        # A last batch of one sample would break BatchNorm's training statistics.
        return full + (1 if rest >= 2 else 0)

    def train(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        data, size = self.data, self.batch_size
        order = torch.randperm(len(data.train_y), generator=generator, device=generator.device)
        for step in range(self.steps_per_epoch()):
            index = order[step * size : (step + 1) * size]
            x = self.preprocess.train(data.train_x[index], data.pixel_max, generator)
            yield x, data.train_y[index]

    def val(self, batch_size: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        data = self.data
        for start in range(0, len(data.val_y), batch_size):
            x = data.val_x[start : start + batch_size]
            yield self.preprocess.eval(x, data.pixel_max), data.val_y[start : start + batch_size]
