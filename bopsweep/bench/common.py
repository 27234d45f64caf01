"""What every bench section shares: the plan (how much to measure), interleaved timing
with medians and IQRs, targets, process memory, and the machine's description.

A speed alone says little on a shared or throttled machine, so every target is a
ratio of two measurements taken in the same run and interleaved round by round
(A, B, A, B, ...): load from elsewhere hits both sides alike. A figure is the median
over the rounds, with the interquartile range (IQR) as its run-to-run spread.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark
from torch.utils.benchmark.utils.common import TaskSpec

from bopsweep.precision import native_bf16

BATCH_SIZE = 100
# Interleaved comparisons stop at their time budget, but never below this many rounds:
# fewer give no spread worth the name.
MIN_ROUNDS = 3

Row = tuple[str, str, str, str, str]  # section, figure, value, target, met


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full benchmark, or ``--quick`` (a smoke run that still
    runs every section, Ray and MLflow included, with the fewest rounds that give every
    figure).

    ``*_rounds`` are the most rounds a comparison runs; ``*_budget_s`` the seconds
    (warm-up included) after which it starts no new round once :data:`MIN_ROUNDS` are
    done, so that a slow or busy CPU gets fewer rounds rather than a longer bench. The
    full plan's budgets (82 s in all) plus the sections of fixed size (logging, sweep,
    memory: 1.5-2 minutes on a busy 2-core machine, Ray and MLflow start-ups included)
    keep a full run near 4 minutes; ``sweep_scale``'s sweeps of 10, 100 and 1,000
    trials add about 2, most of it the 1,000 trials' own cost per trial.
    """

    quick: bool
    rounds: int  # interleaved rounds of the Bop-step comparison
    bop_steps_per_round: int
    bop_budget_s: float
    train_rounds: int
    train_warmup: int
    train_budget_s: float
    data_images: int
    data_rounds: int
    data_budget_s: float
    sweep_trials: int
    sweep_epochs: int
    log_epochs: int
    log_server: bool  # a real `mlflow server`, or a sqlite URI
    memory_steps: int
    shared_images_per_batch: int  # CIFAR-10 files of this size for the sharing probe
    # BinaryNet's batch in the train-step, memory and fusion sections: the paper's 100,
    # or a smaller one for the smoke run, which only has to run each measurement's code
    # (a CPU without AVX-512 steps 100 images in ~3 s).
    binarynet_batch_size: int
    # Seconds for the whole member comparison (every K): a K whose rounds would end
    # past it, projected from the smaller K's, is left out (fp32 BinaryNet on a CPU
    # without AVX-512: one K = 9 round takes about a minute).
    member_budget_s: float
    startup_rounds: int
    startup_warmup: int
    startup_budget_s: float
    # Trial counts of the sweep_scale section's grids (one epoch a trial); --quick
    # reads sweep_overhead's smoke run instead of running its own.
    scale_trials: tuple[int, ...] = (10, 100, 1000)


FULL = Plan(
    quick=False,
    rounds=9,
    bop_steps_per_round=3,
    bop_budget_s=15.0,
    train_rounds=9,
    # One warm-up step builds oneDNN's primitives and the optimizers' state; the steps
    # after it take the same time to within about 5%.
    train_warmup=1,
    train_budget_s=40.0,
    data_images=10_000,
    data_rounds=5,
    data_budget_s=15.0,
    sweep_trials=4,
    sweep_epochs=10,
    log_epochs=20,
    log_server=True,
    memory_steps=4,
    shared_images_per_batch=10_000,  # the real CIFAR-10: 50,000 + 10,000 images
    binarynet_batch_size=BATCH_SIZE,
    member_budget_s=90.0,
    startup_rounds=7,
    startup_warmup=1,
    # A round is ~2.5 s on 2 cores (`import torch` most of it); the ratios sit at
    # 0.09-0.15 against a bound of 0.5, so four or five rounds decide them.
    startup_budget_s=12.0,
)
QUICK = Plan(
    quick=True,
    rounds=2,
    bop_steps_per_round=1,
    bop_budget_s=0.0,
    train_rounds=1,
    train_warmup=1,
    train_budget_s=0.0,
    data_images=1_000,
    data_rounds=2,
    data_budget_s=0.0,
    sweep_trials=2,
    sweep_epochs=1,
    log_epochs=3,
    log_server=False,
    memory_steps=1,
    shared_images_per_batch=500,
    binarynet_batch_size=10,
    member_budget_s=60.0,
    startup_rounds=1,
    startup_warmup=0,
    startup_budget_s=0.0,
    scale_trials=(2,),
)


@dataclass
class Context:
    """What a section's measurement gets: the device, the plan, a scratch folder
    removed after the bench, and the sections measured so far."""

    device: torch.device
    plan: Plan
    workdir: Path
    sections: dict[str, Any]

    @property
    def native_bf16(self) -> bool:
        return native_bf16(self.device)

    def not_native(self) -> str:
        """Why bf16 was not measured, in the words of the table."""
        kind = "CPU" if self.device.type == "cpu" else "GPU"
        return f"bf16 not native on this {kind}: not measured"


# ------------------------------------------------------------------------- timing
def timing(measurement: benchmark.Measurement) -> dict[str, float]:
    return {
        "median_s": measurement.median,
        "iqr_s": measurement.iqr,
        "rounds": len(measurement.times),
    }


def samples(values: list[float], name: str = "wall clock") -> dict[str, float]:
    """Median and IQR of per-call times (seconds), one per round."""
    task = TaskSpec(stmt=name, setup="", num_threads=torch.get_num_threads())
    return timing(benchmark.Measurement(number_per_run=1, raw_times=values, task_spec=task))


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    candidates: dict[str, Callable[[], object]],
    rounds: int,
    *,
    number: int = 1,
    warmup: int = 1,
    device: torch.device | None = None,
    budget_s: float | None = None,
) -> dict[str, dict[str, float]]:
    """Time each candidate ``rounds`` times, one round of each in turn, after
    ``warmup`` untimed calls of each; a round is ``number`` calls. The clock reads
    after the device has finished. (Timer.timeit would add two warm-up calls to
    every round, tripling the cost of a training-step round.)

    With ``budget_s``, no new round starts once that many seconds have passed since
    the warm-up began, provided :data:`MIN_ROUNDS` (or ``rounds``, if fewer) are done.
    """
    started = time.perf_counter()
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for done in range(rounds):
        spent = time.perf_counter() - started
        if budget_s is not None and done >= MIN_ROUNDS and spent > budget_s:
            break
        for name, fn in candidates.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(number):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) / number)
    return {name: samples(values, name) for name, values in times.items()}


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------ targets
_COMPARE = {
    "<": lambda value, bound: value < bound,
    "<=": lambda value, bound: value <= bound,
    ">=": lambda value, bound: value >= bound,
}


def target(value: float, bound: float, kind: str, what: str) -> dict[str, Any]:
    """One target: ``value`` must be ``<``, ``<=`` or ``>=`` ``bound``."""
    met = _COMPARE[kind](value, bound)
    return {"value": value, "kind": kind, "bound": bound, "met": bool(met), "what": what}


# ------------------------------------------------------------------------- memory
def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default); 0 once it is gone."""
    try:
        pages = Path(f"/proc/{pid or 'self'}/statm").read_text().split()[1]
        return int(pages) * os.sysconf("SC_PAGE_SIZE")
    except FileNotFoundError:
        if Path("/proc/self/statm").exists():
            return 0  # the process ended
    except (OSError, ValueError, IndexError):
        return 0
    import psutil  # no /proc: macOS and the like

    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's raylet, workers...)."""
    if not Path("/proc/self/stat").exists():
        import psutil

        with contextlib.suppress(psutil.Error):
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        return []
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent id follows the command name, which may hold spaces or ")".
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM belongs to the process image: ru_maxrss would
    also count the parent's pages at the fork that started this process."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20


class RssSampler:
    """Peak RSS of this process and all its descendants (the Ray processes), sampled
    every ``interval_s`` in a thread. Shared pages count once per process."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.peak_total = 0
        self.peak_driver = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            processes = [me, *descendants(me)]
            driver = rss_bytes()
            total = driver + sum(rss_bytes(pid) for pid in processes[1:])
            self.peak_total = max(self.peak_total, total)
            self.peak_driver = max(self.peak_driver, driver)
            self.peak_processes = max(self.peak_processes, len(processes))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------ machine and inputs
def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        # What decides whether bf16 is measured (and what precision "auto" picks).
        "native_bf16": native_bf16(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "loadavg_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def quickstart_spec_path() -> Path:
    """sweeps/quickstart.yaml of this checkout (or of the working directory)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        path = root / "sweeps" / "quickstart.yaml"
        if path.is_file():
            return path
    from bopsweep.errors import UserError

    raise UserError("sweeps/quickstart.yaml not found: run the bench from the repository root")


# -------------------------------------------------------------------- table cells
def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"{text}{unit}"
    return f"{value}{unit}"


def ms(timing: dict[str, float]) -> str:
    return f"{timing['median_s'] * 1e3:.1f} ms (IQR {timing['iqr_s'] * 1e3:.1f})"


def target_rows(name: str, section: dict[str, Any]) -> list[Row]:
    return [
        (
            name,
            f"{key}: {t['what']}",
            fmt(t["value"]),
            f"{t['kind']} {fmt(t['bound'])}",
            "yes" if t["met"] else "NO",
        )
        for key, t in section.get("targets", {}).items()
    ]


@dataclass(frozen=True)
class SweepRun:
    """One ``bopsweep run`` as a user runs it: its process, wall time, results folder
    and the sweep's own ``timeline.json``."""

    done: subprocess.CompletedProcess
    wall_s: float
    results: Path
    timeline: dict[str, float]


def run_sweep_command(
    spec: Path,
    folder: Path,
    name: str,
    overrides: Sequence[str] = (),
    *,
    watch: contextlib.AbstractContextManager | None = None,
    timeout_s: float = 900,
) -> SweepRun:
    """``bopsweep run SPEC --set ...`` in ``folder`` (created; a fresh one is a new
    local MLflow store, as on a first run), with no MLflow or Ray settings of this
    environment, timed; ``watch`` (a memory sampler) is open while it runs. The
    sweep ``name`` names its results folder."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "bopsweep"), "run", str(spec)]
    command += [f"--set={o}" for o in overrides]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    start = time.perf_counter()
    with watch or contextlib.nullcontext():
        done = subprocess.run(
            command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"bopsweep run exited {done.returncode}: {done.stderr[-2000:]}")
    results = folder / "bopsweep_results" / name
    timeline = json.loads((results / "timeline.json").read_text())
    return SweepRun(done, wall, results, timeline)


def ray_trials(results: Path) -> list[str]:
    """The Ray trials a sweep's results folder holds: ``trial_NNN`` for a trial alone,
    ``fused_NNN`` for a fused group."""
    return sorted(p.name for p in results.iterdir() if p.name.startswith(("trial_", "fused_")))


def binarynet_config(device: str, precision: str, batch_size: int = BATCH_SIZE):
    """The training config the train-step, memory and fusion sections measure: the
    paper's BinaryNet with the ``bop`` set on synthetic CIFAR-shaped data."""
    from bopsweep.config import make_train_config

    config = make_train_config(
        model="binarynet",
        dataset="synthetic",
        preprocess_fn="resize_and_flip",
        hparams_set="bop",
        epochs=1,
        device=device,
        precision=precision,
    )
    return config.model_copy(update={"hparams": {**config.hparams, "batch_size": batch_size}})
