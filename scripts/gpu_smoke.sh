#!/usr/bin/env bash
# Every CUDA path a bopsweep user meets, checked on one GPU in under 8 minutes; on a
# machine without one, the checks that need none. See scripts/gpu_smoke.py.
#   scripts/gpu_smoke.sh [--out DIR]        (default: ./gpu_smoke_results)
# PYTHON picks the interpreter (one with bopsweep and its test extra installed);
# default: the active virtualenv's python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
exec "${PYTHON:-python3}" "$here/gpu_smoke.py" "$@"
