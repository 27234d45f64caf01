"""ImageNet (ILSVRC 2012) read from JPEG class folders by DataLoader workers.

ImageNet does not fit in memory as the small datasets do: ``imagenet2012`` reads
JPEG class folders with a multi-worker ``DataLoader`` that decodes, crops and flips
in worker processes and hands uint8 batches to the device, where they are
normalised. :class:`LoaderBatches` gives the training loop the same small
:class:`~bopsweep.data.batches.Batches` interface as the in-memory datasets.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bopsweep.data.batches import Batches, BatchesBase, steps_per_epoch
from bopsweep.data.layout import IMAGENET_LAYOUT, require_imagenet
from bopsweep.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224
IMAGENET_RESIZE = 256  # eval: resize the short side to 256, centre-crop 224


@dataclass(frozen=True)
class ImageFolderDataset:
    """Two torchvision ``ImageFolder`` splits whose workers yield uint8 ``(3, S, S)``
    images; the batches are normalised with ``mean`` / ``std`` on the device.

    ``train_indices`` / ``val_indices`` restrict a split (``None``: all of it).
    As loaded, ``val`` is the test set (ImageNet's validation images);
    :meth:`split_validation` holds out part of ``train`` as ``val`` and moves it to
    ``test``.
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
    test: Any = None
    test_indices: tuple[int, ...] | None = None

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
            test_indices=None
            if self.test is None
            else _spread(self.test_indices, len(self.test), max_val),
        )

    def split_validation(self, fraction: float = 0.1) -> ImageFolderDataset:
        """Hold out an evenly spaced ``fraction`` of the training images (every 10th:
        the folders are sorted by class, so each class gives its share) as ``val``,
        read with the evaluation transform; the loaded ``val`` becomes ``test``."""
        if self.test is not None:
            raise ValueError(f"{self.name} already has a held-out validation split")
        indices = range(len(self.train)) if self.train_indices is None else self.train_indices
        held_out = [int((pos + 1) * fraction) > int(pos * fraction) for pos in range(len(indices))]
        if all(held_out) or not any(held_out):
            raise UserError(
                f"{self.name}: {len(indices)} training images are too few to hold out "
                f"{fraction:.0%}"
            )
        held_set = copy.copy(self.train)  # the same file list, read as evaluation images
        held_set.transform = self.val.transform
        return replace(
            self,
            train_indices=tuple(i for i, out in zip(indices, held_out, strict=True) if not out),
            val=held_set,
            val_indices=tuple(i for i, out in zip(indices, held_out, strict=True) if out),
            test=self.val,
            test_indices=self.val_indices,
        )

    def batches(self, preprocess_fn: str, batch_size: int, device: torch.device) -> Batches:
        if preprocess_fn not in IMAGENET_PREPROCESS:
            raise UserError(
                f"{self.name} has its own preprocessing: preprocess_fn 'default' "
                f"(torchvision's) or 'imagenet_tf' (the original code's), not {preprocess_fn!r}"
            )
        data = self
        if preprocess_fn != "default":
            data = self.with_transforms(*IMAGENET_PREPROCESS[preprocess_fn](self.image_size))
        return LoaderBatches(data, batch_size, device)

    def with_transforms(self, train_transform, eval_transform) -> ImageFolderDataset:
        """The same images read with other transforms (every split: the held-out
        part of the training images, read as evaluation images, included)."""

        def reading(folder: Any, transform) -> Any:
            if folder is None:
                return None
            copy_ = copy.copy(folder)
            copy_.transform = transform
            return copy_

        return replace(
            self,
            train=reading(self.train, train_transform),
            val=reading(self.val, eval_transform),
            test=reading(self.test, eval_transform),
        )


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


# The original code's ImageNet pipeline (TensorFlow, from the EfficientNet TPU code):
# its evaluation crop is the centre square of 224 / (224 + 32) of the short side.
CROP_PADDING = 32


def sample_distorted_bounding_box(
    height: int,
    width: int,
    *,
    min_object_covered: float = 0.1,
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    area_range: tuple[float, float] = (0.08, 1.0),
    max_attempts: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int] | None:
    """A random crop ``(top, left, crop_height, crop_width)`` drawn as TensorFlow's
    ``sample_distorted_bounding_box`` draws one for a whole-image bounding box; None
    when every attempt fails (TF then returns the whole image).

    Per attempt: an aspect ratio (width / height) uniform in its range; a height
    uniform between the heights of the smallest and largest allowed areas at that
    ratio (TF's GenerateRandomCrop, which is why its crops differ in distribution
    from torchvision's area-uniform RandomResizedCrop); the crop must cover at least
    ``min_object_covered`` of the image; a position uniform where it fits.
    """

    def uniform_int(n: int) -> int:  # [0, n)
        return int(torch.randint(n, (1,), generator=generator)) if n > 1 else 0

    min_area = area_range[0] * width * height
    max_area = area_range[1] * width * height
    for _ in range(max_attempts):
        low, high = aspect_ratio_range
        ratio = float(torch.rand((), generator=generator)) * (high - low) + low
        crop_h = round(math.sqrt(min_area / ratio))
        max_h = round(math.sqrt(max_area / ratio))
        if round(max_h * ratio) > width:
            max_h = int((width + 0.5 - 1e-7) / ratio)
            if round(max_h * ratio) > width:
                max_h -= 1
        max_h = min(max_h, height)
        crop_h = min(crop_h, max_h)
        if crop_h < max_h:
            crop_h += uniform_int(max_h - crop_h + 1)
        crop_w = round(crop_h * ratio)
        if crop_w * crop_h < min_area:
            crop_h += 1
            crop_w = round(crop_h * ratio)
        area = crop_w * crop_h
        if not (min_area <= area <= max_area and 0 < crop_w <= width and 0 < crop_h <= height):
            continue
        if area < min_object_covered * width * height:
            continue
        return uniform_int(height - crop_h + 1), uniform_int(width - crop_w + 1), crop_h, crop_w
    return None


def resize_bicubic(image: Tensor, size: int) -> Tensor:
    """uint8 ``(C, H, W)`` -> ``(C, size, size)``: bicubic without antialiasing, as
    TensorFlow's ``resize_bicubic`` (PIL, and so torchvision on PIL images, always
    antialias when shrinking)."""
    out = torch.nn.functional.interpolate(
        image[None].float(), size=(size, size), mode="bicubic", align_corners=False
    )[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


class TFCenterCrop:
    """The original's evaluation crop: the centre square of ``size / (size + 32)`` of
    the short side, resized bicubic (no antialias) to ``size``."""

    def __init__(self, size: int = IMAGENET_SIZE) -> None:
        self.size = size

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        side = int(self.size / (self.size + CROP_PADDING) * min(height, width))
        return ((height - side) + 1) // 2, ((width - side) + 1) // 2, side, side

    def __call__(self, image) -> Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        top, left, h, w = self.box(image.height, image.width)
        return resize_bicubic(pil_to_tensor(image.crop((left, top, left + w, top + h))), self.size)


class TFRandomCrop:
    """The original's training crop: :func:`sample_distorted_bounding_box` (min object
    covered 0.1, aspect 3/4-4/3, area 8%-100%, 10 attempts), resized bicubic (no
    antialias) to ``size``; when no attempt succeeds (or the crop is the whole image)
    the evaluation centre crop instead."""

    def __init__(self, size: int = IMAGENET_SIZE) -> None:
        self.size = size
        self.fallback = TFCenterCrop(size)

    def __call__(self, image) -> Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        box = sample_distorted_bounding_box(image.height, image.width)
        if box is None or (box[2], box[3]) == (image.height, image.width):
            return self.fallback(image)
        top, left, h, w = box
        return resize_bicubic(pil_to_tensor(image.crop((left, top, left + w, top + h))), self.size)


def imagenet_tf_transforms(image_size: int = IMAGENET_SIZE):
    """The original code's ImageNet preprocessing (TensorFlow), up to uint8 tensors:
    train :class:`TFRandomCrop` and a random flip, eval :class:`TFCenterCrop`."""
    from torchvision import transforms as T

    return T.Compose([TFRandomCrop(image_size), T.RandomHorizontalFlip()]), TFCenterCrop(image_size)


# preprocess_fn -> the transforms of the train and evaluation images.
IMAGENET_PREPROCESS = {"default": imagenet_transforms, "imagenet_tf": imagenet_tf_transforms}
# The registry entry of "imagenet_tf" (bopsweep.data.PREPROCESS_FNS): a name only, the
# in-memory datasets refuse it.
IMAGENET_TF = "imagenet_tf"


def _image_folder(folder: Path, transform) -> Any:
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, OSError) as error:
        raise UserError(f"cannot read {folder}: {error}. Expected {IMAGENET_LAYOUT}") from None


def imagenet2012(data_dir: Path, download: bool) -> ImageFolderDataset:
    """ILSVRC 2012 as JPEG class folders (torchvision's ImageFolder layout)."""
    root = require_imagenet(data_dir, download)
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


class _ShuffledBatches(torch.utils.data.Sampler):
    """The index batches of one epoch: a seeded permutation cut into ``steps`` batches
    (the same rule as :class:`~bopsweep.data.batches.DeviceBatches`). Each index comes
    with the epoch's seed, which :class:`_SeededSamples` turns into the sample's
    augmentation seed; :attr:`seed` is set anew before each epoch, on the one sampler
    of the run's one training loader."""

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __len__(self) -> int:
        return steps_per_epoch(self.n, self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        seed = self.seed
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
        for step in range(len(self)):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size].tolist()
            yield [(seed, index) for index in batch]


def sample_seed(epoch_seed: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch (a 64-bit mix of the two, so
    neighbouring images and epochs get unrelated streams)."""
    mixed = (epoch_seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) % 2**64
    mixed ^= mixed >> 31
    return mixed % 2**63


class _SeededSamples(torch.utils.data.Dataset):
    """``dataset[index]`` with torch's RNG seeded by :func:`sample_seed` for the call.

    The augmentation of an image then depends on the run's seed, the epoch and the
    image only: not on which worker decodes it, how many workers there are, or
    whether they were started this epoch or kept from the last (the loader keeps
    them), and a run resumed from a checkpoint draws the same crops as one that was
    never interrupted. torchvision's random transforms and the original code's crops
    draw from torch's global RNG; it is restored afterwards, which matters where the
    images are read in the training process itself (``num_workers=0``)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch_seed, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(epoch_seed, index))
            return self.dataset[index]


class LoaderBatches(BatchesBase):
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
        self.test_set = (
            data.test
            if data.test is None or data.test_indices is None
            else Subset(data.test, list(data.test_indices))
        )
        workers = data.num_workers
        self.num_workers = max(1, torch.get_num_threads()) if workers is None else workers
        self.sampler = _ShuffledBatches(self.num_train, self.batch_size)
        self._loaders: dict[str, torch.utils.data.DataLoader] = {}
        shape = (1, 3, 1, 1)
        # Scaled to uint8 pixels, so one subtract and one divide normalise a batch.
        self.mean = torch.tensor(data.mean, device=self.device).mul(255).view(shape)
        self.std = torch.tensor(data.std, device=self.device).mul(255).view(shape)

    @property
    def num_train(self) -> int:
        return len(self.train_set)

    def _loader(self, split: str) -> torch.utils.data.DataLoader:
        """The split's one loader of the run, built at its first use.

        Its workers are kept from one pass to the next (``persistent_workers``):
        forking and starting them for every epoch's pass, and again for every
        evaluation, costs seconds each time and leaves the device waiting for the
        first batches. What differs between epochs (the order, the augmentations)
        comes from the sampler's seed, not from new workers. Each kept loader holds
        its ``num_workers`` processes, idle while another split is read, until the
        trial's batches are released."""
        loader = self._loaders.get(split)
        if loader is not None:
            return loader
        if split == "train":
            dataset, batching = _SeededSamples(self.train_set), {"batch_sampler": self.sampler}
        else:
            dataset = self.val_set if split == "val" else self.test_set
            batching = {"batch_size": self.batch_size}
        loader = torch.utils.data.DataLoader(
            dataset,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            # The workers' own seeds play no part (each image seeds its augmentation);
            # a loader without a generator would draw them from this process's RNG.
            generator=torch.Generator().manual_seed(0),
            **batching,
        )
        self._loaders[split] = loader
        return loader

    def _to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        return x.float().sub_(self.mean).div_(self.std), y

    def train(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        # One draw from the run's generator per epoch decides the order and the
        # augmentations, so a resumed run continues the same sequence.
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        loader = self._loader("train")
        # Read by the loader's iterator as the epoch starts (in this process).
        self.sampler.seed = seed
        for x, y in loader:
            yield self._to_device(x, y)

    def val(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self._loader("val"):
            yield self._to_device(x, y)

    def test(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.test_set is None:
            return
        for x, y in self._loader("test"):
            yield self._to_device(x, y)
