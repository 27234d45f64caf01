"""Bench section ``bop_step``: Bop against Adam(foreach) and the memory bound."""

from __future__ import annotations

from .conftest import assert_numbers, assert_targets


def test_bop_step_reports_its_figures_and_targets(quick_bench):
    _, results = quick_bench
    section = results["sections"]["bop_step"]
    assert_numbers(
        section,
        [
            "binary_weights",
            "bop_foreach.median_s",
            "bop_foreach.iqr_s",
            "bop_single_tensor.median_s",
            "adam_foreach.median_s",
            "copy_bandwidth_gb_s",
            "memory_bound_s",
            "bop_vs_adam_foreach",
            "bop_vs_memory_bound",
        ],
    )
    assert_targets(section, {"bop_vs_adam_foreach", "bop_vs_memory_bound"})
