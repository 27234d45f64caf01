"""``bopsweep bench --quick`` run once, as a user runs it (the console script, in a
subprocess), for every section's tests to read; and the checks they share.

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


def bopsweep() -> str:
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


def assert_numbers(section: dict, paths: list[str]) -> None:
    """Each dotted path of ``section`` is a finite, non-negative number."""
    assert "error" not in section, section.get("traceback")
    for path in paths:
        value = _get(section, path)
        assert isinstance(value, int | float) and not isinstance(value, bool), path
        assert math.isfinite(value) and value >= 0, (path, value)


def assert_targets(section: dict, keys: set[str]) -> None:
    """The section has exactly these targets, each a ratio, a bound and a verdict."""
    targets = section["targets"]
    assert set(targets) == keys
    for target in targets.values():
        assert isinstance(target["value"], float) and math.isfinite(target["value"])
        assert isinstance(target["bound"], float)
        assert target["kind"] in ("<", "<=", ">=")
        assert isinstance(target["met"], bool)


@pytest.fixture(scope="session")
def quick_bench(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    root = tmp_path_factory.mktemp("bench")
    output = root / "out" / "bench.json"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    result = subprocess.run(
        [bopsweep(), "bench", "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=root,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(output.read_text())
