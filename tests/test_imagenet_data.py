"""ImageNet from JPEG class folders: layout, the paper's preprocessing, DataLoader
batches normalised on the device, and the errors a wrong folder gives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bopsweep.config import make_train_config
from bopsweep.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataset,
    LoaderBatches,
    load_dataset,
)
from bopsweep.errors import UserError
from bopsweep.train import train

CLASSES = ("n01440764", "n01443537")
# One flat colour per class, so a batch's pixels can be checked against its labels.
COLOURS = {0: (200, 30, 90), 1: (10, 240, 128)}
TRAIN_SIZES = [(37, 53), (300, 200), (64, 64)]  # (width, height), three per class
VAL_SIZES = [(320, 256), (256, 320)]


def _write_jpeg(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


def _flat(size: tuple[int, int], colour: tuple[int, int, int]) -> np.ndarray:
    width, height = size
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()


def _pattern(size: tuple[int, int], seed: int) -> np.ndarray:
    width, height = size
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def make_tiny_imagenet(root: Path) -> Path:
    """``root/train/<wnid>/*.JPEG`` (flat colours) and ``root/val/<wnid>/*.JPEG``
    (random patterns, to check the centre crop pixel by pixel)."""
    for label, wnid in enumerate(CLASSES):
        for i, size in enumerate(TRAIN_SIZES):
            _write_jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG", _flat(size, COLOURS[label]))
        for i, size in enumerate(VAL_SIZES):
            pattern = _pattern(size, seed=10 * label + i)
            _write_jpeg(root / "val" / wnid / f"ILSVRC2012_val_{label}{i}.JPEG", pattern)
    return root


@pytest.fixture
def tiny_imagenet(tmp_path: Path) -> Path:
    """The parent of ``imagenet2012/``, as ``--data-dir`` expects."""
    make_tiny_imagenet(tmp_path / "data" / "imagenet2012")
    return tmp_path / "data"


def _normalised(pixels: np.ndarray) -> torch.Tensor:
    """Reference normalisation of decoded ``(H, W, 3)`` uint8 pixels, in float64."""
    x = torch.from_numpy(pixels.astype(np.float64)).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1) * 255
    return (x - mean) / std


def _decoded(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _batches(data: ImageFolderDataset, batch_size: int, workers: int = 0) -> LoaderBatches:
    batches = replace(data, num_workers=workers).batches("default", batch_size, "cpu")
    assert isinstance(batches, LoaderBatches)
    return batches


# ------------------------------------------------------------------------- layout
def test_loads_from_the_registry(tiny_imagenet):
    data = load_dataset("imagenet2012", tiny_imagenet)
    assert isinstance(data, ImageFolderDataset)
    assert data.classes == CLASSES and data.num_classes == 2
    assert data.input_shape == (3, 224, 224)
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(data.val) == 4


def test_data_dir_may_hold_train_and_val_directly(tiny_imagenet):
    data = load_dataset("imagenet2012", tiny_imagenet / "imagenet2012")
    assert data.classes == CLASSES and len(data.train) == 6


def test_missing_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(UserError) as error:
        load_dataset("imagenet2012", tmp_path / "nowhere")
    message = str(error.value)
    assert "ImageNet not found" in message
    assert "imagenet2012/train/<class>/*.JPEG" in message
    assert "imagenet2012/val/<class>/*.JPEG" in message


def test_download_is_not_offered(tmp_path):
    with pytest.raises(UserError, match="cannot be downloaded automatically"):
        load_dataset("imagenet2012", tmp_path, download=True)


def test_val_without_class_folders_is_an_error(tmp_path):
    root = tmp_path / "imagenet2012"
    _write_jpeg(root / "train" / CLASSES[0] / "a.JPEG", _flat((8, 8), (1, 2, 3)))
    # The raw validation download: 50,000 files in one folder, no classes.
    _write_jpeg(root / "val" / "ILSVRC2012_val_00000001.JPEG", _flat((8, 8), (1, 2, 3)))
    with pytest.raises(UserError, match=r"cannot read .*val.*Expected <data-dir>/imagenet2012"):
        load_dataset("imagenet2012", tmp_path)


def test_train_and_val_classes_must_match(tiny_imagenet):
    extra = tiny_imagenet / "imagenet2012" / "val" / "n99999999" / "x.JPEG"
    _write_jpeg(extra, _flat((8, 8), (1, 2, 3)))
    with pytest.raises(UserError, match=r"same class folders .*only in val: \['n99999999'\]"):
        load_dataset("imagenet2012", tiny_imagenet)


def test_other_preprocessing_is_refused(tiny_imagenet):
    data = load_dataset("imagenet2012", tiny_imagenet)
    with pytest.raises(UserError, match="preprocess_fn 'default'"):
        data.batches("resize_and_flip", 4, "cpu")


def test_limit_spans_the_classes(tiny_imagenet):
    data = load_dataset("imagenet2012", tiny_imagenet).limit(2, 3)
    # Samples are sorted by class; evenly spaced ones still cover both.
    assert data.train_y.tolist() == [0, 1]
    batches = _batches(data, batch_size=2)
    assert batches.num_train == 2 and batches.steps_per_epoch() == 1
    assert sum(len(y) for _, y in batches.val()) == 3
    assert load_dataset("imagenet2012", tiny_imagenet).limit(None, None).train_indices is None


# -------------------------------------------------------------------- the batches
@pytest.mark.parametrize("workers", [0, 2])
def test_train_batches_are_normalised_crops_of_the_images(tiny_imagenet, workers):
    data = load_dataset("imagenet2012", tiny_imagenet)
    batches = _batches(data, batch_size=4, workers=workers)
    assert (batches.num_train, batches.num_classes, batches.input_shape) == (6, 2, (3, 224, 224))
    # 6 images in batches of 4: one full batch and one of 2.
    assert batches.steps_per_epoch() == 2
    out = list(batches.train(torch.Generator().manual_seed(0)))
    assert [tuple(x.shape) for x, _ in out] == [(4, 3, 224, 224), (2, 3, 224, 224)]
    assert sorted(torch.cat([y for _, y in out]).tolist()) == [0, 0, 0, 1, 1, 1]
    for x, y in out:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        for image, label in zip(x, y, strict=True):
            # A crop of a flat colour is that colour, normalised channel by channel.
            files = sorted((tiny_imagenet / "imagenet2012" / "train" / CLASSES[label]).iterdir())
            colour = _decoded(files[0])[0, 0]
            expected = _normalised(colour.reshape(1, 1, 3)).float()
            assert torch.allclose(image, expected.expand_as(image), atol=1e-5)


def test_train_order_follows_the_generator(tiny_imagenet):
    batches = _batches(load_dataset("imagenet2012", tiny_imagenet), batch_size=2)

    def labels(seed: int) -> list[list[int]]:
        return [y.tolist() for _, y in batches.train(torch.Generator().manual_seed(seed))]

    assert labels(3) == labels(3)
    assert any(labels(3) != labels(seed) for seed in range(4, 12))


def _patterned_training(tiny_imagenet: Path, workers: int) -> LoaderBatches:
    """Batches whose training images are the random patterns of val/, so that two
    random crops of an image differ."""
    import copy

    from bopsweep.data.imagenet import imagenet_transforms

    data = load_dataset("imagenet2012", tiny_imagenet)
    patterned = copy.copy(data.val)
    patterned.transform = imagenet_transforms()[0]
    return _batches(replace(data, train=patterned), batch_size=3, workers=workers)


def _epoch(batches: LoaderBatches, generator: torch.Generator) -> torch.Tensor:
    return torch.cat([x for x, _ in batches.train(generator)])


def test_workers_are_kept_from_epoch_to_epoch(tiny_imagenet):
    batches = _patterned_training(tiny_imagenet, workers=2)
    generator = torch.Generator().manual_seed(0)
    first = _epoch(batches, generator)
    loader = batches._loader("train")
    workers = [w.pid for w in loader._iterator._workers]
    second = _epoch(batches, generator)
    assert batches._loader("train") is loader
    assert [w.pid for w in loader._iterator._workers] == workers
    assert all(w.is_alive() for w in loader._iterator._workers)
    assert not torch.equal(first, second)  # another order and other crops
    list(batches.val())
    list(batches.val())
    assert batches._loader("val")._iterator is not None


def test_augmentations_follow_the_seed_not_the_workers(tiny_imagenet):
    """The same crops with 0 or 2 workers, and a run resumed at its second epoch (new
    workers, the run's generator as checkpointed) draws the crops of one that went on."""
    generator = torch.Generator().manual_seed(7)
    kept = _patterned_training(tiny_imagenet, workers=2)
    first, second = _epoch(kept, generator), _epoch(kept, generator)
    in_process = _patterned_training(tiny_imagenet, workers=0)
    again = torch.Generator().manual_seed(7)
    assert torch.equal(_epoch(in_process, again), first)
    resumed = _patterned_training(tiny_imagenet, workers=2)
    assert torch.equal(_epoch(resumed, again), second)


def test_reading_in_process_leaves_the_training_rng_alone(tiny_imagenet):
    batches = _patterned_training(tiny_imagenet, workers=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _epoch(batches, torch.Generator().manual_seed(0))
    list(batches.val())
    assert torch.equal(torch.rand(3), expected)


def test_val_is_resize_256_and_centre_crop_224(tiny_imagenet):
    batches = _batches(load_dataset("imagenet2012", tiny_imagenet), batch_size=3)
    out = list(batches.val())
    assert [tuple(x.shape) for x, _ in out] == [(3, 3, 224, 224), (1, 3, 224, 224)]
    images = torch.cat([x for x, _ in out])
    labels = torch.cat([y for _, y in out]).tolist()
    assert labels == [0, 0, 1, 1]  # in folder order, unshuffled
    files = sorted((tiny_imagenet / "imagenet2012" / "val").rglob("*.JPEG"))
    for image, path in zip(images, files, strict=True):
        pixels = _decoded(path)
        # Short side already 256: the resize keeps the image, the crop takes the centre.
        top, left = (pixels.shape[0] - 224) // 2, (pixels.shape[1] - 224) // 2
        expected = _normalised(pixels[top : top + 224, left : left + 224])
        assert torch.allclose(image.double(), expected, atol=1e-5)


def test_trains_end_to_end(tiny_imagenet):
    config = make_train_config(
        model="birealnet",
        dataset="imagenet2012",
        data_dir=str(tiny_imagenet),
        hparams_set="bop",
        hparams={"batch_size": 4},
        epochs=1,
        device="cpu",
        max_train_samples=4,
        max_val_samples=2,
    )
    result = train(config)
    metrics = result.final
    assert result.hparams.batch_size == 4
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert metrics["flip_ratio"] >= 0.0 and "flip_ratio/stage1.0.conv" in metrics
    assert metrics["samples_per_s"] > 0


def test_validation_split_holds_out_evenly_spaced_training_images(tiny_imagenet):
    data = load_dataset("imagenet2012", tiny_imagenet)
    # 6 training images, too few for 10%; a half shows the spacing: every 2nd image.
    split = data.split_validation(0.5)
    assert split.train_indices == (0, 2, 4) and split.val_indices == (1, 3, 5)
    assert split.train_y.tolist() == [0, 0, 1]
    # Held-out images are read as evaluation images; training ones keep augmentation.
    assert split.val.transform is data.val.transform
    assert split.train.transform is data.train.transform is not data.val.transform
    assert split.val.samples is data.train.samples
    batches = _batches(split, batch_size=4)
    assert batches.num_train == 3
    assert [y.tolist() for _, y in batches.val()] == [[0, 1, 1]]
    # The test split is ImageNet's validation images, all of them.
    assert [y.tolist() for _, y in batches.test()] == [[0, 0, 1, 1]]
    assert list(_batches(data, batch_size=4).test()) == []
    with pytest.raises(UserError, match="too few to hold out 10%"):
        data.split_validation()
    with pytest.raises(ValueError, match="already has a held-out"):
        split.split_validation(0.5)


# ------------------------------------------------- the original code's TF crops
def test_sample_distorted_bounding_box_keeps_tensorflows_constraints():
    from bopsweep.data.imagenet import sample_distorted_bounding_box

    gen = torch.Generator().manual_seed(0)
    height, width = 300, 400
    boxes = [sample_distorted_bounding_box(height, width, generator=gen) for _ in range(300)]
    assert all(box is not None for box in boxes)
    fractions = []
    for top, left, h, w in boxes:
        assert 0 <= top <= height - h and 0 <= left <= width - w
        # Width is the rounded height x ratio: the ratio holds to within rounding.
        assert 3 / 4 - 1 / h <= w / h <= 4 / 3 + 1 / h
        fractions.append(h * w / (height * width))
    assert min(fractions) >= 0.08 and max(fractions) <= 1.0
    assert min(fractions) < 0.15 and max(fractions) > 0.8  # the whole range is drawn
    # Seeded: the same generator state draws the same boxes.
    again = torch.Generator().manual_seed(0)
    assert boxes[:5] == [
        sample_distorted_bounding_box(height, width, generator=again) for _ in range(5)
    ]
    # No crop of 8% of a 10x1000 strip has an aspect ratio in [3/4, 4/3]: every attempt fails.
    assert sample_distorted_bounding_box(10, 1000, generator=gen) is None


def test_tf_centre_crop_is_the_originals_padded_square(tiny_imagenet):
    from bopsweep.data.imagenet import TFCenterCrop, TFRandomCrop

    crop = TFCenterCrop(224)
    # 224 / 256 of the short side, offsets rounded up: (256 - 224 + 1) // 2 = 16.
    assert crop.box(256, 320) == (16, 48, 224, 224)
    assert crop.box(320, 256) == (48, 16, 224, 224)
    assert crop.box(500, 375) == (86, 24, 328, 328)  # side int(0.875 * 375)
    path = sorted((tiny_imagenet / "imagenet2012" / "val").rglob("*.JPEG"))[0]
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        out = crop(rgb)
        # The square is already 224: the bicubic resize keeps it pixel for pixel.
        pixels = _decoded(path)
        assert torch.equal(out, torch.tensor(pixels[16:240, 48:272]).permute(2, 0, 1))
        # A strip too thin for any random crop falls back to the centre crop.
        strip = rgb.resize((1000, 10))
        assert torch.equal(TFRandomCrop(224)(strip), TFCenterCrop(224)(strip))


def test_imagenet_tf_preprocessing_end_to_end(tiny_imagenet):
    data = load_dataset("imagenet2012", tiny_imagenet)
    batches = data.batches("imagenet_tf", 4, torch.device("cpu"))
    assert isinstance(batches, LoaderBatches)
    batches.num_workers = 0
    out = list(batches.train(torch.Generator().manual_seed(0)))
    assert [tuple(x.shape) for x, _ in out] == [(4, 3, 224, 224), (2, 3, 224, 224)]
    for x, y in out:
        for image, label in zip(x, y, strict=True):
            # A crop of a flat colour, resized bicubic, is that colour.
            expected = _normalised(np.array(COLOURS[int(label)], np.uint8).reshape(1, 1, 3))
            assert torch.allclose(image, expected.float().expand_as(image), atol=0.05)
    # Evaluation images: the original's padded centre crop, not torchvision's.
    files = sorted((tiny_imagenet / "imagenet2012" / "val").rglob("*.JPEG"))
    (first, _), *_ = batches.val()
    pixels = _decoded(files[0])  # 320 x 256 (width x height): crop box (16, 48)
    expected = _normalised(pixels[16:240, 48:272]).float()
    assert torch.allclose(first[0], expected, atol=1e-4)
    # The datasets held in memory refuse it.
    with pytest.raises(UserError, match="'imagenet_tf' is for ImageNet; for digits use default"):
        load_dataset("digits").batches("imagenet_tf", 4, torch.device("cpu"))
    with pytest.raises(UserError, match=r"'default' \(torchvision's\) or 'imagenet_tf'"):
        data.batches("resize_and_flip", 4, torch.device("cpu"))
