"""Datasets and preprocessing, registered by the names users type.

The registries here import no torch: checking a spec's dataset and preprocess
names, or whether a dataset's files are on disk (:func:`check_available`), must not
cost the seconds torch takes to import. Each entry names the module that defines it
and is imported when a dataset is loaded or a preprocess function used:

* :mod:`~bopsweep.data.layout`: where each dataset's files live, and the message
  when they are missing (no torch);
* :mod:`~bopsweep.data.formats`: the CIFAR-10 batch format, read safely (numpy);
* :mod:`~bopsweep.data.in_memory`: CIFAR-10, MNIST, digits and synthetic data,
  held whole as uint8 tensors on the training device;
* :mod:`~bopsweep.data.imagenet`: ImageNet JPEG folders read by DataLoader workers;
* :mod:`~bopsweep.data.batches`: preprocessing and device-side batching.

The names those modules define are importable from here too
(``from bopsweep.data import make_synthetic``) and load their module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bopsweep.data.layout import require_cifar10, require_imagenet, require_mnist
from bopsweep.errors import unknown_name
from bopsweep.registry import LazyRegistry

if TYPE_CHECKING:
    from bopsweep.data.batches import Preprocess
    from bopsweep.data.imagenet import ImageFolderDataset
    from bopsweep.data.in_memory import InMemoryDataset

    # What a dataset loader returns; ``.batches(...)`` turns either kind into Batches.
    Dataset = InMemoryDataset | ImageFolderDataset

DatasetLoader = Callable[[Path, bool], "Dataset"]

DATASETS: LazyRegistry[DatasetLoader] = LazyRegistry(
    "dataset",
    {
        "cifar10": "bopsweep.data.in_memory:cifar10",
        "mnist": "bopsweep.data.in_memory:mnist",
        "digits": "bopsweep.data.in_memory:digits",
        "synthetic": "bopsweep.data.in_memory:synthetic",
        "imagenet2012": "bopsweep.data.imagenet:imagenet2012",
    },
)
# In-memory datasets read from files, big enough that concurrent sweep trials on one
# node should share one copy (see bopsweep.sweep.datacache) rather than load their own.
SHAREABLE_DATASETS: set[str] = {"cifar10", "mnist"}
# The files a dataset's loader reads, checked as the loader checks them; datasets
# not listed (digits, synthetic) need none.
REQUIRED_FILES: dict[str, Callable[[Path, bool], Path]] = {
    "cifar10": require_cifar10,
    "mnist": require_mnist,
    "imagenet2012": require_imagenet,
}
# Loaders that fetch their files themselves when asked to (--download).
DOWNLOADABLE_DATASETS: frozenset[str] = frozenset({"cifar10", "mnist"})


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


def check_available(name: str, data_dir: str | Path, download: bool) -> None:
    """Raise the :class:`UserError` that loading ``name`` from ``data_dir`` would
    raise for missing files, without loading anything (or importing torch).

    With ``download`` a dataset that can be fetched passes: its loader fetches it.
    """
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    require = REQUIRED_FILES.get(name)
    if require is None or (download and name in DOWNLOADABLE_DATASETS):
        return
    require(Path(data_dir).expanduser(), download)


PREPROCESS_FNS: LazyRegistry[Preprocess] = LazyRegistry(
    "preprocess fn",
    {
        "default": "bopsweep.data.batches:DEFAULT",
        # The paper's CIFAR-10 augmentation: pad 4, random 32x32 crop, random flip.
        "resize_and_flip": "bopsweep.data.batches:RESIZE_AND_FLIP",
        # ImageNet only: the original code's TensorFlow crops (bopsweep.data.imagenet).
        "imagenet_tf": "bopsweep.data.imagenet:IMAGENET_TF",
    },
)


def get_preprocess(name: str) -> Preprocess:
    if name not in PREPROCESS_FNS:
        raise unknown_name("preprocess fn", name, PREPROCESS_FNS)
    return PREPROCESS_FNS[name]


# The public names of the submodules, importable from here: each loads its module
# (and torch) on first use.
_EXPORTS = {
    "bopsweep.data.batches": (
        "Batches",
        "DeviceBatches",
        "Preprocess",
        "crop_and_flip",
        "normalize",
        "steps_per_epoch",
    ),
    "bopsweep.data.formats": ("read_cifar_batch",),
    "bopsweep.data.imagenet": (
        "IMAGENET_MEAN",
        "IMAGENET_RESIZE",
        "IMAGENET_SIZE",
        "IMAGENET_STD",
        "ImageFolderDataset",
        "LoaderBatches",
        "imagenet_transforms",
    ),
    "bopsweep.data.layout": ("CIFAR10_FILES", "IMAGENET_LAYOUT", "MNIST_FILES"),
    "bopsweep.data.in_memory": (
        "DIGITS_SPLIT_SEED",
        "DIGITS_VAL_FRACTION",
        "TENSOR_FIELDS",
        "InMemoryDataset",
        "make_synthetic",
    ),
}
_LAZY = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> object:
    if name == "Dataset":
        from bopsweep.data.imagenet import ImageFolderDataset
        from bopsweep.data.in_memory import InMemoryDataset

        value: object = InMemoryDataset | ImageFolderDataset
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "Dataset"])
