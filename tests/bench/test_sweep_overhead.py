"""Bench section ``sweep_overhead``: the quickstart command against its trials' own
training, with the wall time split into its parts."""

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
    parts = section["split_s"]
    for part in ("imports", "ray_start", "first_trial_start", "trial_setup", "checkpoints"):
        assert part in parts
    for part in ("tracking_drain", "report", "shutdown", "exit"):
        assert parts[part] >= 0
    # The parts and the ideal add up to the wall time.
    assert abs(sum(parts.values()) + section["ideal_s"] - section["wall_s"]) < 1e-6 + 0.01
    assert section["stderr_lines"] < 40
