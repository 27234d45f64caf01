"""Preprocessing and device-side batching: what the training loop sees of a dataset.

A dataset already on the training device is cut into batches with a seeded
``randperm``, augmented as a whole batch on the device and normalised there, as
airbench does. There is no per-sample PIL ``DataLoader`` in the loop, which is what
makes a CPU epoch of BinaryNet cost the model's compute and little else. ImageNet's
batches (:class:`~bopsweep.data.imagenet.LoaderBatches`) offer the same small
:class:`Batches` interface.

The preprocess functions are registered by name in :mod:`bopsweep.data`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from bopsweep.data.in_memory import InMemoryDataset


def normalize(x: Tensor, pixel_max: float) -> Tensor:
    """uint8 ``[0, pixel_max]`` -> float ``[-1, 1]`` (the paper's ``x / 127.5 - 1``)."""
    return x.float().div_(pixel_max / 2).sub_(1.0)


class RawPixels(torch.nn.Module):
    """A trained model behind the normalisation its evaluation batches had, so that it
    takes the pixel values a user has: the dataset's format (``[0, pixel_max]``, uint8
    or any other dtype), ``(N, C, H, W)``. The models a sweep logs to MLflow are
    these; the input is not changed in place."""

    def __init__(self, model: torch.nn.Module, pixel_max: float) -> None:
        super().__init__()
        self.model = model
        self.pixel_max = float(pixel_max)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.float() / (self.pixel_max / 2) - 1.0)


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


DEFAULT = Preprocess(_default_train, normalize)
RESIZE_AND_FLIP = Preprocess(_resize_and_flip_train, normalize)


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

    def test(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The test split when validation is held out of the training set, else nothing."""
        ...


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    full, rest = divmod(num_train, batch_size)
    # A last batch of one sample would break BatchNorm's training statistics.
    return full + (1 if rest >= 2 else 0)


class BatchesBase:
    """What both kinds of batches derive from their dataset and batch size; a
    subclass sets ``data`` and ``batch_size`` and says how many training samples."""

    data: Any
    batch_size: int

    @property
    def num_train(self) -> int:
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.data.input_shape

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_train, self.batch_size)


class DeviceBatches(BatchesBase):
    """Batches from an :class:`InMemoryDataset` already on the training device."""

    def __init__(self, data: InMemoryDataset, preprocess: Preprocess, batch_size: int) -> None:
        self.data = data
        self.preprocess = preprocess
        self.batch_size = batch_size

    @property
    def num_train(self) -> int:
        return len(self.data.train_y)

    def train(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        data, size = self.data, self.batch_size
        order = torch.randperm(len(data.train_y), generator=generator, device=generator.device)
        for step in range(self.steps_per_epoch()):
            index = order[step * size : (step + 1) * size]
            x = self.preprocess.train(data.train_x[index], data.pixel_max, generator)
            yield x, data.train_y[index]

    def _eval_batches(
        self, xs: Tensor | None, ys: Tensor | None, batch_size: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        if xs is None or ys is None:
            return
        for start in range(0, len(ys), batch_size):
            x = xs[start : start + batch_size]
            yield self.preprocess.eval(x, self.data.pixel_max), ys[start : start + batch_size]

    def val(self, batch_size: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        return self._eval_batches(self.data.val_x, self.data.val_y, batch_size)

    def test(self, batch_size: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        return self._eval_batches(self.data.test_x, self.data.test_y, batch_size)
