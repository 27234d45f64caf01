"""Bench section ``data_pipeline``: the device pipeline against DataLoaders."""

from __future__ import annotations

from .conftest import assert_numbers, assert_targets


def test_data_pipeline_reports_its_figures_and_targets(quick_bench):
    _, results = quick_bench
    section = results["sections"]["data_pipeline"]
    assert_numbers(
        section,
        [
            "device_batches.median_s",
            "device_batches_images_per_s",
            "dataloader_0_workers_images_per_s",
            "device_vs_best_dataloader",
        ],
    )
    assert_targets(section, {"device_vs_dataloader"})
