"""Bench section ``data_pipeline``: is the in-memory device pipeline worth having?

The in-memory device pipeline with ``resize_and_flip`` against a torchvision
``DataLoader`` with the usual per-image transforms, on the same images, with 0 workers
and with one worker per torch thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bopsweep.bench.common import BATCH_SIZE, Context, Row, fmt, interleaved, target


class _PilImages(torch.utils.data.Dataset):
    """uint8 HWC images handed to PIL one by one, as torchvision's CIFAR10 does."""

    def __init__(self, images, labels, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def measure(context: Context) -> dict[str, Any]:
    from torchvision import transforms as T

    from bopsweep.data import DeviceBatches, get_preprocess, make_synthetic

    device, plan = context.device, context.plan
    data = make_synthetic(n_train=plan.data_images, n_val=2)
    batches = DeviceBatches(data.to(device), get_preprocess("resize_and_flip"), BATCH_SIZE)
    generator = torch.Generator(device).manual_seed(0)

    def device_epoch() -> None:
        for _ in batches.train(generator):
            pass

    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    images = data.train_x.permute(0, 2, 3, 1).contiguous().numpy()
    dataset = _PilImages(images, data.train_y.numpy(), transform)
    workers = max(1, torch.get_num_threads())
    loaders = {
        "dataloader_0_workers": torch.utils.data.DataLoader(
            dataset, batch_size=BATCH_SIZE, shuffle=True
        ),
        f"dataloader_{workers}_workers": torch.utils.data.DataLoader(
            dataset,
            batch_size=BATCH_SIZE,
            shuffle=True,
            num_workers=workers,
            persistent_workers=True,
            pin_memory=device.type == "cuda",
        ),
    }

    def loader_epoch(loader) -> Callable[[], None]:
        def epoch() -> None:
            for x, y in loader:
                x.to(device, non_blocking=True)
                y.to(device, non_blocking=True)

        return epoch

    candidates = {"device_batches": device_epoch}
    candidates.update({name: loader_epoch(loader) for name, loader in loaders.items()})
    timings = interleaved(candidates, plan.data_rounds, device=device, budget_s=plan.data_budget_s)
    out: dict[str, Any] = {"images": plan.data_images, "loader_workers": workers, **timings}
    for name, timing in timings.items():
        out[f"{name}_images_per_s"] = plan.data_images / timing["median_s"]
    loader_best = max(out[f"{name}_images_per_s"] for name in loaders)
    out["device_vs_best_dataloader"] = out["device_batches_images_per_s"] / loader_best
    out["targets"] = {
        "device_vs_dataloader": target(
            out["device_vs_best_dataloader"],
            5.0,
            ">=",
            "device pipeline images/s / best DataLoader images/s",
        )
    }
    return out


def rows(section: dict[str, Any]) -> list[Row]:
    return [
        ("data_pipeline", key.removesuffix("_per_s") + "/s", fmt(section[key]), "", "")
        for key in section
        if key.endswith("_images_per_s")
    ]
