"""Where each file-backed dataset lives under ``--data-dir``, and the one message a
user gets when its files are not there.

This module imports no torch: the sweep driver checks a sweep's data with it
(through :func:`bopsweep.data.check_available`) before Ray starts, and the loaders
raise the very same errors, so the advice is written once.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bopsweep.errors import UserError

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

# torchvision's layout, so that --download and a hand-made folder agree.
MNIST_FOLDER = Path("MNIST") / "raw"
MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "val_x": "t10k-images-idx3-ubyte",
    "val_y": "t10k-labels-idx1-ubyte",
}

IMAGENET_FOLDER = "imagenet2012"
IMAGENET_LAYOUT = (
    "<data-dir>/imagenet2012/train/<class>/*.JPEG and <data-dir>/imagenet2012/val/<class>/"
    "*.JPEG (one folder per class, e.g. n01440764, the same class folders in both splits: "
    "the 50,000 validation images sorted into class folders), or train/ and val/ directly "
    "in <data-dir>"
)


def missing_files(folder: Path, names: Iterable[str]) -> list[str]:
    return [name for name in names if not (folder / name).is_file()]


def require_cifar10(data_dir: Path, download: bool) -> Path:
    """The folder of the CIFAR-10 python batches, or the UserError saying what to do."""
    folder = data_dir / CIFAR10_FOLDER
    missing = missing_files(folder, CIFAR10_FILES)
    if missing:
        raise UserError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}. Put the python "
            "version of CIFAR-10 (cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html, extracted) there, point "
            "--data-dir at its parent, or pass --download"
        )
    return folder


def require_mnist(data_dir: Path, download: bool) -> Path:
    """The folder of the four MNIST idx files, or the UserError saying what to do."""
    folder = data_dir / MNIST_FOLDER
    missing = missing_files(folder, MNIST_FILES.values())
    if missing:
        raise UserError(
            f"MNIST not found: {folder} lacks {', '.join(missing)}. Put the four "
            "uncompressed idx files there, point --data-dir at the folder holding "
            "MNIST/, or pass --download"
        )
    return folder


def require_imagenet(data_dir: Path, download: bool) -> Path:
    """The folder holding ImageNet's ``train/`` and ``val/``, or the UserError saying
    what to do (ImageNet cannot be downloaded for the user)."""
    for root in (data_dir / IMAGENET_FOLDER, data_dir):
        if (root / "train").is_dir() and (root / "val").is_dir():
            return root
    note = " (ImageNet cannot be downloaded automatically)" if download else ""
    raise UserError(
        f"ImageNet not found under {data_dir}{note}: expected {IMAGENET_LAYOUT}. "
        "Get ILSVRC2012 from https://image-net.org and point --data-dir at the folder "
        f"holding {IMAGENET_FOLDER}/"
    )
