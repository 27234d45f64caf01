"""Bench section ``sweep_overhead``: a real sweep against its trials run directly."""

from __future__ import annotations

from .conftest import assert_numbers, assert_targets


def test_sweep_overhead_reports_its_figures_and_targets(quick_bench):
    _, results = quick_bench
    section = results["sections"]["sweep_overhead"]
    assert_numbers(
        section,
        [
            "trials",
            "concurrency",
            "ideal_s",
            "wall_s",
            "overhead_ratio",
            "startup_s",
            "peak_rss_total_mb",
        ],
    )
    assert_targets(section, {"wall_vs_ideal"})
