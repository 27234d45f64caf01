"""The chaos test, round after round with other seeds: a soak of bopsweep's recovery.

Each round runs ``tests/e2e/test_chaos.py`` (a sweep SIGKILLed at random moments: a
trial's worker, the driver, the tracking server; then the command rerun until it
ends well, checked against the same trials trained undisturbed) unfused and fused,
with the round's seed choosing the order of the kills and their moments. Prints one line per run
and a summary: rounds passed, the kills survived by kind, the reruns needed, wall
times; ``--out FILE`` also writes them as JSON.

    python scripts/chaos_soak.py --rounds 5 [--first-seed 1] [--out soak.json]

Run it from the repository root with the test extra installed (the README's test
command installs it). The figures of a soak are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter

MODES = {
    "off": "test_a_sweep_killed_anywhere_finishes_with_nothing_lost[off]",
    "fused": "test_a_sweep_killed_anywhere_finishes_with_nothing_lost[2]",
}
LINE = re.compile(r"chaos fuse=\S+: kills (\[.*?\]), (\d+) runs of the command")


def one_run(seed: int, mode: str) -> dict:
    env = {**os.environ, "BOPSWEEP_CHAOS_SEED": str(seed)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        f"tests/e2e/test_chaos.py::{MODES[mode]}",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    found = LINE.search(done.stdout)
    return {
        "seed": seed,
        "mode": mode,
        "passed": done.returncode == 0,
        "kills": ast.literal_eval(found.group(1)) if found else [],
        "runs": int(found.group(2)) if found else None,
        "wall_s": round(wall, 1),
        "tail": "" if done.returncode == 0 else done.stdout[-2000:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--out", help="write every run as JSON to this file")
    args = parser.parse_args()
    results = []
    for seed in range(args.first_seed, args.first_seed + args.rounds):
        for mode in MODES:
            result = one_run(seed, mode)
            results.append(result)
            print(
                f"seed {seed} {mode:5}: {'passed' if result['passed'] else 'FAILED'}, "
                f"kills {result['kills']}, {result['runs']} runs of the command, "
                f"{result['wall_s']} s",
                flush=True,
            )
            if not result["passed"]:
                print(result["tail"], flush=True)
    for mode in MODES:
        mine = [r for r in results if r["mode"] == mode]
        kills = Counter(k for r in mine if r["passed"] for k in r["kills"])
        runs = [r["runs"] for r in mine if r["runs"] is not None]
        print(
            f"{mode}: {sum(r['passed'] for r in mine)}/{len(mine)} passed; kills survived "
            f"{dict(kills)}; runs of the command {min(runs, default=0)}-{max(runs, default=0)}; "
            f"wall {min(r['wall_s'] for r in mine)}-{max(r['wall_s'] for r in mine)} s"
        )
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
