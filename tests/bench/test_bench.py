"""The bench as a whole: every section runs and is in the table, the machine and the
plan are recorded, ``--only`` picks sections, and comparisons keep to their budget."""

from __future__ import annotations

import json
import subprocess
import time

from bopsweep.bench import SECTIONS
from bopsweep.bench.common import MIN_ROUNDS, interleaved

from .conftest import bopsweep


def test_every_section_runs(quick_bench):
    _, results = quick_bench
    assert set(results["sections"]) == set(SECTIONS)
    for name, section in results["sections"].items():
        assert "error" not in section, (name, section.get("traceback"))


def test_machine_and_plan_are_recorded(quick_bench):
    _, results = quick_bench
    machine = results["machine"]
    assert machine["device"] == "cpu"
    assert machine["torch"] and machine["cpu"]
    assert isinstance(machine["torch_threads"], int) and machine["torch_threads"] >= 1
    assert isinstance(machine["native_bf16"], bool)
    assert results["plan"]["quick"] is True


def test_the_table_is_printed(quick_bench):
    result, _ = quick_bench
    for name in SECTIONS:
        assert name in result.stdout
    assert "Traceback" not in result.stderr


def test_only_runs_the_sections_asked_for(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [bopsweep(), "bench", "--quick", "--only", "bop_step", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert set(json.loads(output.read_text())["sections"]) == {"bop_step"}


def test_an_unknown_section_is_a_user_error(tmp_path):
    result = subprocess.run(
        [bopsweep(), "bench", "--only", "bop"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "unknown bench section 'bop'" in result.stderr
    assert "valid sections: bop_step, train_step" in result.stderr
    assert "cli_startup" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_comparison_stops_at_its_budget_but_not_below_the_minimum_rounds():
    calls = {"a": 0, "b": 0}

    def slow(name: str):
        def call() -> None:
            calls[name] += 1
            time.sleep(0.01)

        return call

    timings = interleaved({"a": slow("a"), "b": slow("b")}, 50, warmup=1, budget_s=0.0)
    assert timings["a"]["rounds"] == timings["b"]["rounds"] == MIN_ROUNDS
    assert calls == {"a": MIN_ROUNDS + 1, "b": MIN_ROUNDS + 1}
    # Without a budget, or with fewer rounds than the minimum, the rounds asked for.
    assert interleaved({"a": slow("a")}, 5, warmup=0)["a"]["rounds"] == 5
    assert interleaved({"a": slow("a")}, 2, warmup=0, budget_s=0.0)["a"]["rounds"] == 2
