"""Datasets on disk (CIFAR-10 python batches, MNIST idx files, digits), preprocessing
and seeded device-side batching."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bopsweep.data import (
    DATASETS,
    PREPROCESS_FNS,
    DeviceBatches,
    InMemoryDataset,
    get_preprocess,
    load_dataset,
    make_synthetic,
    normalize,
)
from bopsweep.errors import UserError

# ------------------------------------------------------------------ preprocessing


def _expected_normalized(x: torch.Tensor, pixel_max: float) -> torch.Tensor:
    return x.double() / (pixel_max / 2) - 1


def test_default_preprocess_maps_zero_and_pixel_max_to_minus_and_plus_one():
    default = get_preprocess("default")
    images = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8).view(6, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    for out in (default.train(images, 255.0, gen), default.eval(images, 255.0)):
        assert out.dtype == torch.float32
        assert out.flatten().tolist() == pytest.approx(
            _expected_normalized(images, 255.0).flatten().tolist(), abs=1e-6
        )
        assert out.flatten()[0].item() == -1.0
        assert out.flatten()[-1].item() == 1.0


def test_digits_pixel_max():
    out = normalize(torch.tensor([0, 4, 8, 16], dtype=torch.uint8), 16.0)
    assert out.tolist() == [-1.0, -0.5, 0.0, 1.0]


def _crop_matches(out: torch.Tensor, images: torch.Tensor, pad: int):
    """For each output image, the (offset_y, offset_x, flipped) crops of the zero-padded
    normalised input it equals."""
    padded = F.pad(images, (pad, pad, pad, pad)).float().div(127.5).sub(1.0)
    h, w = images.shape[-2:]
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, oy, ox, h, w)
    matches = []
    for flipped, candidate in ((False, out), (True, out.flip(-1))):
        equal = (windows == candidate[:, :, None, None]).all(dim=5).all(dim=4).all(dim=1)
        for i, oy, ox in equal.nonzero().tolist():
            matches.append((i, oy, ox, flipped))
    return matches


def test_resize_and_flip_outputs_are_shifted_or_flipped_crops():
    gen = torch.Generator().manual_seed(0)
    # Random non-zero pixels: every crop position of an image is then distinguishable,
    # and so is the zero padding.
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen)
    augment = get_preprocess("resize_and_flip")
    out = augment.train(images, 255.0, torch.Generator().manual_seed(1))
    assert out.shape == (64, 3, 32, 32)
    assert out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0

    matches = _crop_matches(out, images, pad=4)
    per_image = {i: (oy, ox, flipped) for i, oy, ox, flipped in matches}
    assert len(matches) == 64, "each output is exactly one crop of its own input"
    assert sorted(per_image) == list(range(64))
    flips = [flipped for _, _, flipped in per_image.values()]
    assert 0 < sum(flips) < 64, "both flipped and unflipped images occur"
    offsets = {(oy, ox) for oy, ox, _ in per_image.values()}
    assert all(0 <= oy <= 8 and 0 <= ox <= 8 for oy, ox in offsets)
    assert len(offsets) > 10, "crops land at many positions"
    # Shifted crops bring in the zero padding, which normalises to -1.
    assert any((oy, ox) != (4, 4) for oy, ox in offsets)
    assert (out == -1.0).sum() > 0


def test_resize_and_flip_is_seeded_and_eval_is_plain():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    augment = get_preprocess("resize_and_flip")
    first = augment.train(images, 255.0, torch.Generator().manual_seed(5))
    again = augment.train(images, 255.0, torch.Generator().manual_seed(5))
    other = augment.train(images, 255.0, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    evaluated = augment.eval(images, 255.0)
    torch.testing.assert_close(evaluated.double(), _expected_normalized(images, 255.0))


def test_unknown_preprocess_lists_valid_names():
    with pytest.raises(UserError, match=r"unknown preprocess fn 'nope'; choose from: default"):
        get_preprocess("nope")
    assert {"default", "resize_and_flip"} <= set(PREPROCESS_FNS)


# ----------------------------------------------------------------------- CIFAR-10


def test_cifar10_reads_python_batches(tiny_cifar10):
    data = load_dataset("cifar10", tiny_cifar10.data_dir)
    assert data.name == "cifar10"
    assert data.num_classes == 10 and data.pixel_max == 255.0
    assert data.train_x.dtype == torch.uint8 and data.val_x.dtype == torch.uint8
    assert data.train_y.dtype == torch.int64 and data.val_y.dtype == torch.int64
    assert data.train_x.shape == (20, 3, 32, 32)
    assert data.val_x.shape == (6, 3, 32, 32)
    assert data.input_shape == (3, 32, 32)
    assert data.train_y.tolist() == tiny_cifar10.train_labels.tolist()
    assert data.val_y.tolist() == tiny_cifar10.test_labels.tolist()
    # A row holds the red plane, then green, then blue, each row-major (NCHW).
    rows = tiny_cifar10.train_rows
    for i, c, r, col in [(0, 0, 0, 0), (3, 1, 5, 7), (19, 2, 31, 31), (7, 2, 0, 31)]:
        assert data.train_x[i, c, r, col].item() == rows[i, c * 1024 + r * 32 + col]
    assert np.array_equal(data.train_x.numpy().reshape(20, -1), rows)
    assert np.array_equal(data.val_x.numpy().reshape(6, -1), tiny_cifar10.test_rows)


def test_cifar10_missing_folder_names_it(tmp_path):
    with pytest.raises(UserError) as error:
        load_dataset("cifar10", tmp_path / "empty")
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in str(error.value)


def test_cifar10_missing_file_is_named(tiny_cifar10):
    (tiny_cifar10.folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="lacks data_batch_3"):
        load_dataset("cifar10", tiny_cifar10.data_dir)


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_refuses_a_pickle_with_a_forbidden_global(tiny_cifar10, tmp_path):
    marker = tmp_path / "pwned"
    payload = {b"data": _RunsACommand(marker), b"labels": [0]}
    with (tiny_cifar10.folder / "data_batch_2").open("wb") as f:
        pickle.dump(payload, f, protocol=4)
    with pytest.raises(UserError, match=r"data_batch_2.*refusing to load (posix|os|nt)\.system"):
        load_dataset("cifar10", tiny_cifar10.data_dir)
    assert not marker.exists()


def test_cifar10_truncated_file_is_a_user_error(tiny_cifar10):
    path = tiny_cifar10.folder / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", tiny_cifar10.data_dir)


# -------------------------------------------------------------------------- MNIST


def _write_idx_images(path: Path, images: np.ndarray) -> None:
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, rows, cols) + images.tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def test_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    train_y = rng.integers(0, 10, 5)
    val_x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    val_y = rng.integers(0, 10, 3)
    _write_idx_images(raw / "train-images-idx3-ubyte", train_x)
    _write_idx_labels(raw / "train-labels-idx1-ubyte", train_y)
    _write_idx_images(raw / "t10k-images-idx3-ubyte", val_x)
    _write_idx_labels(raw / "t10k-labels-idx1-ubyte", val_y)

    data = load_dataset("mnist", tmp_path)
    assert data.train_x.shape == (5, 1, 28, 28) and data.val_x.shape == (3, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8
    assert data.train_y.dtype == torch.int64
    assert np.array_equal(data.train_x[:, 0].numpy(), train_x)
    assert np.array_equal(data.val_x[:, 0].numpy(), val_x)
    assert data.train_y.tolist() == train_y.tolist()
    assert data.val_y.tolist() == val_y.tolist()
    assert data.num_classes == 10


def test_mnist_missing_folder_names_it(tmp_path):
    with pytest.raises(UserError) as error:
        load_dataset("mnist", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message


# ------------------------------------------------------------------------- digits


def test_digits_split_is_fixed():
    from sklearn.datasets import load_digits

    torch.manual_seed(123)  # the split must not depend on the global RNG
    first = load_dataset("digits")
    torch.manual_seed(456)
    second = load_dataset("digits")
    for key in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(first, key), getattr(second, key)), key
    assert len(first.train_y) + len(first.val_y) == 1797
    assert len(first.val_y) == 359
    assert first.input_shape == (1, 8, 8)
    assert first.pixel_max == 16.0 and first.num_classes == 10
    assert int(first.train_x.max()) == 16
    # Together the splits are exactly the 1797 images of scikit-learn.
    bunch = load_digits()
    ours = torch.cat([first.train_x, first.val_x]).flatten(1).tolist()
    theirs = torch.from_numpy(bunch.images.astype(np.uint8)).flatten(1).tolist()
    assert sorted(map(tuple, ours)) == sorted(map(tuple, theirs))
    labels = torch.cat([first.train_y, first.val_y])
    assert torch.bincount(labels).tolist() == np.bincount(bunch.target).tolist()


# ---------------------------------------------------------------------- batching


def _indexed_dataset(n: int) -> InMemoryDataset:
    """Image i holds the value i, so batches reveal the order."""
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    y = torch.arange(n) % 10
    return InMemoryDataset("indexed", x, y, x[:7], y[:7], num_classes=10)


def _order(batches: DeviceBatches, seed: int) -> list[list[int]]:
    out = []
    for x, y in batches.train(torch.Generator().manual_seed(seed)):
        index = ((x.flatten().double() + 1) * 127.5).round().long()
        assert torch.equal(y, index % 10), "labels travel with their images"
        out.append(index.tolist())
    return out


def test_shuffle_is_seeded():
    batches = DeviceBatches(_indexed_dataset(50), get_preprocess("default"), batch_size=8)
    first, again, other = _order(batches, 0), _order(batches, 0), _order(batches, 1)
    assert first == again
    assert first != other
    flat = [i for batch in first for i in batch]
    assert sorted(flat) == list(range(50))
    assert flat != list(range(50))
    assert [len(batch) for batch in first] == [8] * 6 + [2]


def test_a_last_batch_of_one_is_dropped():
    batches = DeviceBatches(_indexed_dataset(49), get_preprocess("default"), batch_size=8)
    assert batches.steps_per_epoch() == 6
    order = _order(batches, 0)
    assert [len(batch) for batch in order] == [8] * 6
    assert len({i for batch in order for i in batch}) == 48


def test_val_batches_cover_the_split_in_order():
    data = _indexed_dataset(30)
    batches = DeviceBatches(data, get_preprocess("resize_and_flip"), batch_size=8)
    seen = [x for x, _ in batches.val(batch_size=3)]
    assert [len(x) for x in seen] == [3, 3, 1]
    torch.testing.assert_close(torch.cat(seen), normalize(data.val_x, 255.0))


# ------------------------------------------------------------- registry, synthetic


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError, match=r"unknown dataset 'imagenet2'; choose from: cifar10"):
        load_dataset("imagenet2")
    assert {"cifar10", "mnist", "digits", "synthetic"} <= set(DATASETS)


def test_make_synthetic_is_seeded():
    a = make_synthetic((1, 8, 8), num_classes=3, n_train=20, n_val=10, seed=4)
    b = make_synthetic((1, 8, 8), num_classes=3, n_train=20, n_val=10, seed=4)
    c = make_synthetic((1, 8, 8), num_classes=3, n_train=20, n_val=10, seed=5)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (20, 1, 8, 8) and a.val_x.shape == (10, 1, 8, 8)
    assert a.train_x.dtype == torch.uint8
    assert set(a.train_y.tolist()) <= {0, 1, 2}
    assert a.num_classes == 3


def test_limit():
    data = make_synthetic((1, 2, 2), num_classes=2, n_train=20, n_val=10).limit(5, None)
    assert len(data.train_x) == len(data.train_y) == 5
    assert len(data.val_x) == len(data.val_y) == 10


def test_digits_read_from_scikit_learns_file_match_load_digits():
    """The loader reads scikit-learn's bundled file without importing sklearn.datasets
    (seconds per sweep worker); the arrays must be exactly load_digits()'s."""
    from sklearn.datasets import load_digits

    from bopsweep.data.in_memory import digits_arrays

    images, labels = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images.astype(np.uint8))
    assert np.array_equal(labels, bunch.target)


def test_validation_split_of_cifar10_is_the_last_tenth_of_the_training_batches(tiny_cifar10):
    data = load_dataset("cifar10", tiny_cifar10.data_dir)  # 20 training images, 6 test
    split = data.split_validation()
    rows = tiny_cifar10.train_rows.reshape(20, 3, 32, 32)
    assert np.array_equal(split.train_x.numpy(), rows[:18])
    assert np.array_equal(split.val_x.numpy(), rows[18:])
    assert split.val_y.tolist() == tiny_cifar10.train_labels[18:].tolist()
    assert np.array_equal(split.test_x.numpy().reshape(6, -1), tiny_cifar10.test_rows)
    # The split is fixed: the same for every run, whatever its seed.
    assert torch.equal(data.split_validation().val_x, split.val_x)
    # limit() limits the test split as it limits val, and to() moves it too.
    limited = split.limit(5, 1)
    assert (len(limited.train_y), len(limited.val_y), len(limited.test_y)) == (5, 1, 1)
    batches = split.batches("default", 8, torch.device("cpu"))
    tested = list(batches.test())
    assert [len(y) for _, y in tested] == [6]
    assert torch.equal(tested[0][0], normalize(split.test_x, 255.0))
    assert list(data.batches("default", 8, torch.device("cpu")).test()) == []
    with pytest.raises(UserError, match="too few"):
        InMemoryDataset(
            "one", data.train_x[:1], data.train_y[:1], data.val_x, data.val_y, 10
        ).split_validation()
