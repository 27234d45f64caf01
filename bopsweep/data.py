"""Datasets and preprocessing, registered by the names users type.

Small datasets (CIFAR-10, MNIST, digits, synthetic) are held whole as uint8 tensors
on the training device, as airbench does: each batch is cut with a seeded
``randperm``, augmented as a batch on the device and normalised there. There is no
per-sample PIL ``DataLoader`` in the loop, which is what makes a CPU epoch of
BinaryNet cost the model's compute and little else.

ImageNet does not fit that mould: ``imagenet2012`` reads JPEG class folders with a
multi-worker ``DataLoader`` that decodes, crops and flips in worker processes and
hands uint8 batches to the device, where they are normalised. Both kinds give the
training loop the same small :class:`Batches` interface.

The CIFAR-10 python batches are pickles; they are read with an unpickler that only
accepts the few numpy types the format needs, so a hostile file cannot run code.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import pickle
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from bopsweep.errors import UserError, unknown_name

# --------------------------------------------------------------------------- data


# The tensors of an InMemoryDataset: images and labels of both splits.
TENSOR_FIELDS = ("train_x", "train_y", "val_x", "val_y")


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
        move = {k: getattr(self, k).to(device) for k in TENSOR_FIELDS}
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

    def batches(self, preprocess_fn: str, batch_size: int, device: torch.device) -> Batches:
        """Move both splits to ``device`` and batch them there."""
        return DeviceBatches(self.to(device), get_preprocess(preprocess_fn), batch_size)


DatasetLoader = Callable[[Path, bool], "Dataset"]
DATASETS: dict[str, DatasetLoader] = {}
# In-memory datasets read from files, big enough that concurrent sweep trials on one
# node should share one copy (see bopsweep.sweep.datacache) rather than load their own.
SHAREABLE_DATASETS: set[str] = set()


def register_dataset(
    name: str, *, shareable: bool = False
) -> Callable[[DatasetLoader], DatasetLoader]:
    def decorator(loader: DatasetLoader) -> DatasetLoader:
        DATASETS[name] = loader
        if shareable:
            SHAREABLE_DATASETS.add(name)
        return loader

    return decorator


def load_dataset(name: str, data_dir: str | Path = "data", download: bool = False) -> Dataset:
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


# Writing the format too: benchmarks and tests need real CIFAR-10 files to read, and
# the dataset itself cannot always be fetched.
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


@register_dataset("cifar10", shareable=True)
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


MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "val_x": "t10k-images-idx3-ubyte",
    "val_y": "t10k-labels-idx1-ubyte",
}


@register_dataset("mnist", shareable=True)
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


# ImageNet, read from JPEG files by DataLoader workers.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224
IMAGENET_RESIZE = 256  # eval: resize the short side to 256, centre-crop 224


@dataclass(frozen=True)
class ImageFolderDataset:
    """Two torchvision ``ImageFolder`` splits whose workers yield uint8 ``(3, S, S)``
    images; the batches are normalised with ``mean`` / ``std`` on the device.

    ``train_indices`` / ``val_indices`` restrict a split (``None``: all of it).
    ``num_workers=None`` uses one worker per thread torch may use, which a Ray trial
    sets to its CPU share.
    """

    name: str
    train: Any  # torch Dataset of (uint8 image, label)
    val: Any
    classes: tuple[str, ...]
    image_size: int = IMAGENET_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    train_indices: tuple[int, ...] | None = None
    val_indices: tuple[int, ...] | None = None
    num_workers: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    @property
    def train_y(self) -> Tensor:
        """The training labels (of the limited split): what a count of images reads."""
        targets = self.train.targets
        indices = range(len(targets)) if self.train_indices is None else self.train_indices
        return torch.tensor([targets[i] for i in indices], dtype=torch.int64)

    def limit(self, max_train: int | None, max_val: int | None) -> ImageFolderDataset:
        """Evenly spaced samples of each split: ImageFolder sorts samples by class, so
        a small limit still spans the classes (first-N would give one class)."""
        return replace(
            self,
            train_indices=_spread(self.train_indices, len(self.train), max_train),
            val_indices=_spread(self.val_indices, len(self.val), max_val),
        )

    def batches(self, preprocess_fn: str, batch_size: int, device: torch.device) -> Batches:
        if preprocess_fn != "default":
            raise UserError(
                f"{self.name} has its own preprocessing (the paper's ImageNet pipeline); "
                f"use preprocess_fn 'default', not {preprocess_fn!r}"
            )
        return LoaderBatches(self, batch_size, device)


def _spread(indices: Sequence[int] | None, n: int, limit: int | None) -> tuple[int, ...] | None:
    current = range(n) if indices is None else indices
    if limit is None or limit >= len(current):
        return None if indices is None else tuple(indices)
    return tuple(current[i * len(current) // limit] for i in range(limit))


def imagenet_transforms(image_size: int = IMAGENET_SIZE, resize: int = IMAGENET_RESIZE):
    """The paper's ImageNet preprocessing, up to uint8 tensors (normalised later, on the
    device). Train: random crop of 8%-100% of the area with aspect 3/4-4/3, bicubic
    resize to 224, random flip. Eval: bicubic resize to 256, centre crop 224."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    train = T.Compose(
        [
            T.RandomResizedCrop(
                image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=bicubic
            ),
            T.RandomHorizontalFlip(),
            T.PILToTensor(),
        ]
    )
    evaluate = T.Compose(
        [T.Resize(resize, interpolation=bicubic), T.CenterCrop(image_size), T.PILToTensor()]
    )
    return train, evaluate


IMAGENET_LAYOUT = (
    "<data-dir>/imagenet2012/train/<class>/*.JPEG and <data-dir>/imagenet2012/val/<class>/"
    "*.JPEG (one folder per class, e.g. n01440764, the same class folders in both splits: "
    "the 50,000 validation images sorted into class folders), or train/ and val/ directly "
    "in <data-dir>"
)


def _image_folder(folder: Path, transform) -> Any:
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, OSError) as error:
        raise UserError(f"cannot read {folder}: {error}. Expected {IMAGENET_LAYOUT}") from None


@register_dataset("imagenet2012")
def imagenet2012(data_dir: Path, download: bool) -> ImageFolderDataset:
    """ILSVRC 2012 as JPEG class folders (torchvision's ImageFolder layout)."""
    candidates = [data_dir / "imagenet2012", data_dir]
    root = next((c for c in candidates if (c / "train").is_dir() and (c / "val").is_dir()), None)
    if root is None:
        note = " (ImageNet cannot be downloaded automatically)" if download else ""
        raise UserError(
            f"ImageNet not found under {data_dir}{note}: expected {IMAGENET_LAYOUT}. "
            "Get ILSVRC2012 from https://image-net.org and point --data-dir at the folder "
            "holding imagenet2012/"
        )
    train_transform, eval_transform = imagenet_transforms()
    train = _image_folder(root / "train", train_transform)
    val = _image_folder(root / "val", eval_transform)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:5]
        only_val = sorted(set(val.classes) - set(train.classes))[:5]
        raise UserError(
            f"{root}: train/ and val/ must hold the same class folders "
            f"({len(train.classes)} vs {len(val.classes)}; only in train: {only_train}, "
            f"only in val: {only_val}). Expected {IMAGENET_LAYOUT}"
        )
    return ImageFolderDataset("imagenet2012", train, val, tuple(train.classes))


# --------------------------------------------------------------------- preprocessing


def normalize(x: Tensor, pixel_max: float) -> Tensor:
    """uint8 ``[0, pixel_max]`` -> float ``[-1, 1]`` (the paper's ``x / 127.5 - 1``)."""
    return x.float().div_(pixel_max / 2).sub_(1.0)


def crop_and_flip(x: Tensor, pad: int, generator: torch.Generator | None) -> Tensor:
    """Zero-pad by ``pad``, take a random crop of the original size and flip half of
    the images left-right; one indexing op for the whole batch, on x's device."""
    n, _, h, w = x.shape
    dev = x.device
    off_y = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    off_x = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    flip = torch.rand((n,), generator=generator, device=dev) < 0.5
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    # Every crop of the padded batch and of its mirror image, as a view (no copy):
    # (2, n, c, rows, cols, h, w). A mirrored crop at column 2 * pad - off_x is the
    # mirror of the crop at off_x. Indexing this view moves each output pixel once,
    # with per-image offsets instead of a per-pixel index tensor.
    windows = torch.stack([padded, padded.flip(-1)]).unfold(3, h, 1).unfold(4, w, 1)
    cols = torch.where(flip, 2 * pad - off_x, off_x)
    return windows[flip.long(), torch.arange(n, device=dev), :, off_y, cols]


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


class Batches(Protocol):
    """What the training loop needs from a dataset, whichever kind holds it: float
    batches and int64 labels on the training device, and their sizes."""

    @property
    def num_train(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def num_classes(self) -> int: ...

    def steps_per_epoch(self) -> int: ...

    def train(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]: ...

    def val(self) -> Iterator[tuple[Tensor, Tensor]]: ...


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    full, rest = divmod(num_train, batch_size)
    # A last batch of one sample would break BatchNorm's training statistics.
    return full + (1 if rest >= 2 else 0)


class DeviceBatches:
    """Batches from an :class:`InMemoryDataset` already on the training device."""

    def __init__(self, data: InMemoryDataset, preprocess: Preprocess, batch_size: int) -> None:
        self.data = data
        self.preprocess = preprocess
        self.batch_size = batch_size

    @property
    def num_train(self) -> int:
        return len(self.data.train_y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.data.input_shape

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_train, self.batch_size)

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


class _ShuffledBatches(torch.utils.data.Sampler):
    """The index batches of one epoch: a seeded permutation cut into ``steps`` batches
    (the same rule as :class:`DeviceBatches`)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __len__(self) -> int:
        return steps_per_epoch(self.n, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))
        for step in range(len(self)):
            yield order[step * self.batch_size : (step + 1) * self.batch_size].tolist()


class LoaderBatches:
    """Batches from an :class:`ImageFolderDataset`, decoded and augmented by DataLoader
    workers, copied to the device as uint8 (from pinned memory on CUDA) and
    normalised there."""

    def __init__(self, data: ImageFolderDataset, batch_size: int, device: torch.device) -> None:
        from torch.utils.data import Subset

        self.data = data
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.train_set = (
            data.train
            if data.train_indices is None
            else Subset(data.train, list(data.train_indices))
        )
        self.val_set = (
            data.val if data.val_indices is None else Subset(data.val, list(data.val_indices))
        )
        workers = data.num_workers
        self.num_workers = max(1, torch.get_num_threads()) if workers is None else workers
        shape = (1, 3, 1, 1)
        # Scaled to uint8 pixels, so one subtract and one divide normalise a batch.
        self.mean = torch.tensor(data.mean, device=self.device).mul(255).view(shape)
        self.std = torch.tensor(data.std, device=self.device).mul(255).view(shape)

    @property
    def num_train(self) -> int:
        return len(self.train_set)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.data.input_shape

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_train, self.batch_size)

    def _loader(self, dataset, seed: int, **batching) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            # Seeds the workers' augmentation RNGs: a run is repeatable for a given
            # seed and worker count.
            generator=torch.Generator().manual_seed(seed),
            **batching,
        )

    def _to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        return x.float().sub_(self.mean).div_(self.std), y

    def train(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        # One draw from the run's generator per epoch decides the order and the
        # augmentations, so a resumed run continues the same sequence.
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        sampler = _ShuffledBatches(self.num_train, self.batch_size, seed)
        for x, y in self._loader(self.train_set, seed, batch_sampler=sampler):
            yield self._to_device(x, y)

    def val(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self._loader(self.val_set, 0, batch_size=self.batch_size):
            yield self._to_device(x, y)


# What a dataset loader returns; ``.batches(...)`` turns either kind into :class:`Batches`.
Dataset = InMemoryDataset | ImageFolderDataset
