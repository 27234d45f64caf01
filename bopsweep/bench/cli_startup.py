"""Bench section ``cli_startup``: do the commands that need no torch start at once?

``bopsweep --help``, ``bopsweep plan sweeps/quickstart.yaml`` and ``bopsweep plan`` on a
spec with a mistake (exit code 2) must not pay for importing torch, Ray or MLflow:
each runs as a user runs it, in a fresh process, interleaved round by round with
``python -c "import torch"`` in the same interpreter, the yardstick of the targets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bopsweep.bench.common import Context, Row, interleaved, ms, quickstart_spec_path, target

# What each command is, for the table and the targets.
COMMANDS = {
    "help": "bopsweep --help",
    "plan": "bopsweep plan sweeps/quickstart.yaml",
    "plan_error": "bopsweep plan <spec with an unknown key> (exit 2)",
}
# Each command may take at most this fraction of `import torch`.
TARGET_FRACTION = 0.5


def _bopsweep() -> list[str]:
    """The console script beside this interpreter (what a user runs), else the module."""
    beside = Path(sys.executable).with_name("bopsweep")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("bopsweep")
    return [found] if found else [sys.executable, "-m", "bopsweep.cli"]


def _command(argv: list[str], expected_code: int, cwd: Path) -> Callable[[], None]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}

    def run() -> None:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
        if done.returncode != expected_code:
            raise RuntimeError(
                f"{' '.join(argv)} exited {done.returncode}, expected {expected_code}: "
                f"{done.stderr.strip()[-500:]}"
            )

    return run


def measure(context: Context) -> dict[str, Any]:
    plan, workdir = context.plan, context.workdir
    quickstart = quickstart_spec_path()
    bad = workdir / "bad-spec.yaml"
    # A real spec with one mistake: an unknown top-level key.
    bad.write_text(quickstart.read_text() + "\nnum_sampels: 3\n")
    bopsweep = _bopsweep()
    root = quickstart.parent.parent
    candidates = {
        "import_torch": _command([sys.executable, "-c", "import torch"], 0, root),
        "help": _command([*bopsweep, "--help"], 0, root),
        "plan": _command([*bopsweep, "plan", str(quickstart)], 0, root),
        "plan_error": _command([*bopsweep, "plan", str(bad)], 2, root),
    }
    timings = interleaved(
        candidates,
        plan.startup_rounds,
        warmup=plan.startup_warmup,
        budget_s=plan.startup_budget_s,
    )
    torch_s = timings["import_torch"]["median_s"]
    out: dict[str, Any] = {"commands": COMMANDS, **timings}
    targets = {}
    for name, what in COMMANDS.items():
        ratio = timings[name]["median_s"] / torch_s
        out[f"{name}_vs_import_torch"] = ratio
        targets[f"{name}_vs_import_torch"] = target(
            ratio, TARGET_FRACTION, "<=", f"{what} wall / `python -c 'import torch'` wall"
        )
    out["targets"] = targets
    return out


def rows(section: dict[str, Any]) -> list[Row]:
    name = "cli_startup"
    out: list[Row] = [(name, 'python -c "import torch"', ms(section["import_torch"]), "", "")]
    out += [(name, what, ms(section[key]), "", "") for key, what in section["commands"].items()]
    return out
