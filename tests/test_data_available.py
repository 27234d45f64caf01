"""``check_available``: a dataset's missing files are refused with the loader's own
message, without loading anything, so a sweep can be refused before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from bopsweep.data import (
    CIFAR10_FILES,
    DATASETS,
    MNIST_FILES,
    SHAREABLE_DATASETS,
    check_available,
    load_dataset,
)
from bopsweep.errors import UserError


def _error(function, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        function(*args, **kwargs)
    return str(info.value)


def _touch(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_datasets_without_files_are_always_available(tmp_path, name):
    check_available(name, tmp_path / "nothing-here", download=False)


def test_unknown_dataset_lists_the_valid_names(tmp_path):
    message = _error(check_available, "svhn", tmp_path, False)
    assert "unknown dataset 'svhn'" in message
    assert all(name in message for name in DATASETS)


def test_missing_cifar10_says_where_to_put_it_or_to_download(tmp_path):
    message = _error(check_available, "cifar10", tmp_path, False)
    assert f"{tmp_path}/cifar-10-batches-py lacks data_batch_1" in message
    assert "--data-dir" in message and "--download" in message
    check_available("cifar10", tmp_path, download=True)  # the loader will fetch it


def test_cifar10_names_only_the_missing_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _touch(folder, [name for name in CIFAR10_FILES if name != "data_batch_3"])
    message = _error(check_available, "cifar10", tmp_path, False)
    assert "lacks data_batch_3." in message
    _touch(folder, ["data_batch_3"])
    check_available("cifar10", tmp_path, download=False)


def test_mnist_needs_its_four_idx_files(tmp_path):
    message = _error(check_available, "mnist", tmp_path, False)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in MNIST_FILES.values())
    assert "--download" in message
    check_available("mnist", tmp_path, download=True)
    _touch(tmp_path / "MNIST" / "raw", MNIST_FILES.values())
    check_available("mnist", tmp_path, download=False)


def test_imagenet_cannot_be_downloaded_and_is_found_in_either_layout(tmp_path):
    message = _error(check_available, "imagenet2012", tmp_path, True)
    assert "ImageNet not found" in message
    assert "cannot be downloaded automatically" in message
    assert "imagenet2012/train/<class>" in message
    nested, flat = tmp_path / "nested", tmp_path / "flat"
    for root in (nested / "imagenet2012", flat):
        (root / "train").mkdir(parents=True)
        (root / "val").mkdir()
    check_available("imagenet2012", nested, download=False)
    check_available("imagenet2012", flat, download=False)


def test_data_dir_accepts_a_home_relative_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _touch(tmp_path / "cifar-10-batches-py", CIFAR10_FILES)
    check_available("cifar10", "~", download=False)


@pytest.mark.parametrize(
    ("name", "download"), [("cifar10", False), ("mnist", False), ("imagenet2012", True)]
)
def test_the_loader_gives_the_same_message(tmp_path, name, download):
    expected = _error(check_available, name, tmp_path, download)
    assert _error(load_dataset, name, tmp_path, download) == expected


def test_shareable_datasets_are_registered_datasets():
    assert SHAREABLE_DATASETS.issubset(DATASETS)
    assert {"cifar10", "mnist"} <= SHAREABLE_DATASETS
