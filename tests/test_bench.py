"""``bopsweep bench --quick`` as a user runs it (the console script, in a subprocess):
every section is there, with numbers and a verdict for each target.

No timing is asserted: how fast things run depends on the machine and its load; the
figures themselves are reported in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bopsweep.bench import SECTIONS

# Dotted paths of the figures each section must report as numbers.
NUMERIC = {
    "bop_step": [
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
    "train_step": [
        "bnn_fp32.median_s",
        "bnn_fp32_images_per_s",
        "fp_fp32_images_per_s",
        "bnn_bf16_images_per_s",
        "fp_bf16_images_per_s",
        "bnn_vs_fp_fp32",
        "bnn_vs_fp_bf16",
        "bnn_fp32_vs_larq",
        "bnn_bf16_vs_larq",
    ],
    "data_pipeline": [
        "device_batches.median_s",
        "device_batches_images_per_s",
        "dataloader_0_workers_images_per_s",
        "device_vs_best_dataloader",
    ],
    "sweep_overhead": [
        "trials",
        "concurrency",
        "ideal_s",
        "wall_s",
        "overhead_ratio",
        "startup_s",
        "peak_rss_total_mb",
    ],
    "logging": [
        "log_epoch.median_s",
        "epoch.median_s",
        "epoch_with_logging.median_s",
        "sender_wall_per_epoch_s",
        "sender_cpu_per_epoch_s",
        "log_vs_epoch",
        "epoch_with_vs_without_logging",
    ],
    "memory": [
        "train_fp32.peak_rss_mb",
        "train_fp32.training_mb",
        "sweep.peak_rss_total_mb",
        "dataset_sharing.dataset_mb",
        "dataset_sharing.shared_private_mb_per_trial.0",
        "dataset_sharing.own_copy_private_mb_per_trial.1",
    ],
}


def _bopsweep() -> str:
    beside = Path(sys.executable).with_name("bopsweep")
    if beside.exists():
        return str(beside)
    found = shutil.which("bopsweep")
    if found is None:
        pytest.fail("the bopsweep console script is not installed")
    return found


def _get(section: dict, path: str):
    value = section
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    root = tmp_path_factory.mktemp("bench")
    output = root / "out" / "bench.json"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    result = subprocess.run(
        [_bopsweep(), "bench", "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=root,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(output.read_text())


def test_every_section_reports_its_numbers(quick_bench):
    _, results = quick_bench
    assert set(results["sections"]) == set(SECTIONS)
    for name, paths in NUMERIC.items():
        section = results["sections"][name]
        assert "error" not in section, section.get("traceback")
        for path in paths:
            value = _get(section, path)
            assert isinstance(value, int | float) and not isinstance(value, bool), (name, path)
            assert math.isfinite(value) and value >= 0, (name, path, value)


def test_every_target_has_a_ratio_a_bound_and_a_verdict(quick_bench):
    _, results = quick_bench
    expected = {
        "bop_step": {"bop_vs_adam_foreach", "bop_vs_memory_bound"},
        "train_step": {"bnn_vs_fp_fp32", "bnn_vs_fp_bf16", "vs_larq"},
        "data_pipeline": {"device_vs_dataloader"},
        "sweep_overhead": {"wall_vs_ideal"},
        "logging": {"log_vs_epoch"},
    }
    for name, keys in expected.items():
        targets = results["sections"][name]["targets"]
        assert set(targets) == keys
        for target in targets.values():
            assert isinstance(target["value"], float) and math.isfinite(target["value"])
            assert isinstance(target["bound"], float)
            assert target["kind"] in ("<", "<=", ">=")
            assert isinstance(target["met"], bool)


def test_machine_and_plan_are_recorded(quick_bench):
    _, results = quick_bench
    machine = results["machine"]
    assert machine["device"] == "cpu"
    assert machine["torch"] and machine["cpu"]
    assert isinstance(machine["torch_threads"], int) and machine["torch_threads"] >= 1
    assert results["plan"]["quick"] is True
    # --quick logs to a sqlite store directly, and says so.
    assert "sqlite" in results["sections"]["logging"]["backend"]


def test_the_table_is_printed(quick_bench):
    result, _ = quick_bench
    for name in SECTIONS:
        assert name in result.stdout
    assert "Traceback" not in result.stderr


def test_only_runs_the_sections_asked_for(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [_bopsweep(), "bench", "--quick", "--only", "bop_step", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert set(json.loads(output.read_text())["sections"]) == {"bop_step"}


def test_an_unknown_section_is_a_user_error(tmp_path):
    result = subprocess.run(
        [_bopsweep(), "bench", "--only", "bop"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "unknown bench section 'bop'" in result.stderr
    assert "valid sections: bop_step, train_step" in result.stderr
    assert "Traceback" not in result.stderr
