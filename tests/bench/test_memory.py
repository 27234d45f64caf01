"""Bench section ``memory``: training and sweep memory, one dataset copy per node."""

from __future__ import annotations

from .conftest import assert_numbers


def test_memory_reports_its_figures(quick_bench):
    _, results = quick_bench
    section = results["sections"]["memory"]
    assert_numbers(
        section,
        [
            "train_fp32.peak_rss_mb",
            "train_fp32.training_mb",
            "sweep.peak_rss_total_mb",
            "dataset_sharing.dataset_mb",
            "dataset_sharing.shared_private_mb_per_trial.0",
            "dataset_sharing.own_copy_private_mb_per_trial.1",
        ],
    )
    # --quick measures float32 training only.
    assert "train_bf16" not in section
