"""Bench section ``logging``: the time an epoch waits for MLflow logging."""

from __future__ import annotations

from .conftest import assert_numbers, assert_targets


def test_logging_reports_its_figures_and_targets(quick_bench):
    _, results = quick_bench
    section = results["sections"]["logging"]
    assert_numbers(
        section,
        [
            "log_epoch.median_s",
            "epoch.median_s",
            "epoch_with_logging.median_s",
            "sender_wall_per_epoch_s",
            "sender_cpu_per_epoch_s",
            "log_vs_epoch",
            "epoch_with_vs_without_logging",
        ],
    )
    assert_targets(section, {"log_vs_epoch"})
    # --quick logs to a sqlite store directly, and says so.
    assert "sqlite" in section["backend"]
