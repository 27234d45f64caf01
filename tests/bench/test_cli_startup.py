"""Bench section ``cli_startup``: the torch-free commands against ``import torch``."""

from __future__ import annotations

from bopsweep.bench.cli_startup import COMMANDS

from .conftest import assert_numbers, assert_targets


def test_cli_startup_reports_its_figures_and_targets(quick_bench):
    _, results = quick_bench
    section = results["sections"]["cli_startup"]
    assert_numbers(
        section,
        [
            "import_torch.median_s",
            "import_torch.iqr_s",
            "help.median_s",
            "plan.median_s",
            "plan_error.median_s",
            "help_vs_import_torch",
            "plan_vs_import_torch",
            "plan_error_vs_import_torch",
        ],
    )
    assert set(COMMANDS) == {"help", "plan", "plan_error"}
    assert_targets(section, {f"{name}_vs_import_torch" for name in COMMANDS})
    for target in section["targets"].values():
        assert target["bound"] == 0.5 and target["kind"] == "<="
