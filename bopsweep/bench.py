"""``bopsweep bench``: how fast each part of bopsweep is, against stated targets.

A speed alone says little on a shared or throttled machine, so every target is a
ratio of two measurements taken in the same run and interleaved round by round
(A, B, A, B, ...): load from elsewhere hits both sides alike. A figure is the median
over the rounds, with the interquartile range (IQR) as its run-to-run spread.

Sections:

* ``bop_step``: one Bop step over all BinaryNet binary kernels (foreach and the
  single-tensor loop) against ``torch.optim.Adam(foreach=True)`` on the same shapes,
  and against the memory-traffic bound of the update (bytes Bop must read and write
  divided by the measured copy bandwidth).
* ``train_step``: a BinaryNet training step at batch 100 through the real
  :class:`~bopsweep.train.Trainer` (Bop + Adam) against the same network in full
  precision with Adam, in float32 and under bfloat16 autocast; and against the
  Larq + TensorFlow figure measured on a 2-core AMD EPYC (``LARQ_IMAGES_PER_S``).
* ``data_pipeline``: the in-memory device pipeline with ``resize_and_flip`` against a
  torchvision ``DataLoader`` with the usual per-image transforms, on the same images.
* ``sweep_overhead``: a real sweep (Ray Tune + MLflow, ``run_sweep`` as ``bopsweep
  run`` calls it) against the same trials' ``train()`` called one after the other.
* ``logging``: the time :class:`~bopsweep.sweep.tracking.TrialTracker` spends
  logging one epoch, against the time of that epoch (the quickstart MLP on digits).
* ``memory``: peak RSS of a BinaryNet training loop (in a fresh process) and of a
  sweep's driver plus its Ray processes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import benchmark
from torch.utils.benchmark.utils.common import TaskSpec

from bopsweep.train import Callback

# Larq 0.14 + TensorFlow 2.21 (Bop + Adam through Larq's CaseOptimizer) training the
# same BinaryNet at batch 100 on CIFAR-shaped data, 2 threads on a 2-core AMD EPYC.
LARQ_IMAGES_PER_S = 48.7
LARQ_GOAL_FACTOR = 1.5

BATCH_SIZE = 100
# Bop reads the gradient, the moving average and the weight, and writes the last two.
BOP_BYTES_PER_WEIGHT = 5 * 4


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full benchmark, or ``--quick`` (a smoke run that still
    runs every section, Ray and MLflow included)."""

    quick: bool
    rounds: int  # interleaved rounds of each timed comparison
    bop_steps_per_round: int
    train_rounds: int
    train_warmup: int
    data_images: int
    data_rounds: int
    sweep_trials: int
    sweep_epochs: int
    log_epochs: int
    log_server: bool  # a real `mlflow server`, or a sqlite URI
    memory_steps: int
    shared_images_per_batch: int  # CIFAR-10 files of this size for the sharing probe


FULL = Plan(
    quick=False,
    rounds=9,
    bop_steps_per_round=3,
    train_rounds=9,
    train_warmup=2,
    data_images=10_000,
    data_rounds=5,
    sweep_trials=4,
    sweep_epochs=10,
    log_epochs=20,
    log_server=True,
    memory_steps=4,
    shared_images_per_batch=10_000,  # the real CIFAR-10: 50,000 + 10,000 images
)
QUICK = Plan(
    quick=True,
    rounds=5,
    bop_steps_per_round=2,
    train_rounds=3,
    train_warmup=1,
    data_images=2_000,
    data_rounds=3,
    sweep_trials=2,
    sweep_epochs=2,
    log_epochs=6,
    log_server=False,
    memory_steps=2,
    shared_images_per_batch=1_000,
)


# ------------------------------------------------------------------------ helpers
def _timing(measurement: benchmark.Measurement) -> dict[str, float]:
    return {
        "median_s": measurement.median,
        "iqr_s": measurement.iqr,
        "rounds": len(measurement.times),
    }


def _samples(values: list[float], name: str = "wall clock") -> dict[str, float]:
    """Median and IQR of per-call times (seconds), one per round."""
    task = TaskSpec(stmt=name, setup="", num_threads=torch.get_num_threads())
    return _timing(benchmark.Measurement(number_per_run=1, raw_times=values, task_spec=task))


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
) -> dict[str, dict[str, float]]:
    """Time each candidate ``rounds`` times, one round of each in turn, after
    ``warmup`` untimed calls of each; a round is ``number`` calls. The clock reads
    after the device has finished. (Timer.timeit would add two warm-up calls to
    every round, tripling the cost of a training-step round.)"""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(number):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) / number)
    return {name: _samples(values, name) for name, values in times.items()}


_COMPARE = {
    "<": lambda value, bound: value < bound,
    "<=": lambda value, bound: value <= bound,
    ">=": lambda value, bound: value >= bound,
}


def target(value: float, bound: float, kind: str, what: str) -> dict[str, Any]:
    """One target: ``value`` must be ``<``, ``<=`` or ``>=`` ``bound``."""
    met = _COMPARE[kind](value, bound)
    return {"value": value, "kind": kind, "bound": bound, "met": bool(met), "what": what}


def _rss_bytes(pid: int | None = None) -> int:
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


def _descendants(pid: int) -> list[int]:
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


def _peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM belongs to the process image: ru_maxrss would
    also count the parent's pages at the fork that started this process."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _mib(n_bytes: float) -> float:
    return n_bytes / 2**20


# ------------------------------------------------------------------- a. Bop step
def bench_bop_step(device: torch.device, plan: Plan) -> dict[str, Any]:
    from torch import nn

    from bopsweep.bnn.layers import binary_parameters
    from bopsweep.bnn.models import build_model
    from bopsweep.bnn.optim import Bop

    model = build_model("binarynet", (3, 32, 32), 10).to(device)
    # The layout the Trainer gives conv kernels.
    model.to(memory_format=torch.channels_last)
    kernels = [p.detach() for p in binary_parameters(model)]
    numel = sum(k.numel() for k in kernels)
    generator = torch.Generator(device).manual_seed(0)
    grads = [
        torch.randn(k.shape, generator=generator, device=device)
        .mul_(1e-3)
        .to(memory_format=torch.channels_last if k.dim() == 4 else torch.contiguous_format)
        for k in kernels
    ]

    def params() -> list[nn.Parameter]:
        out = [nn.Parameter(k.clone(memory_format=torch.preserve_format)) for k in kernels]
        for p, g in zip(out, grads, strict=True):
            p.grad = g
        return out

    bop_foreach = Bop(params(), threshold=1e-6, gamma=1e-3, foreach=True)
    bop_single = Bop(params(), threshold=1e-6, gamma=1e-3, foreach=False)
    adam = torch.optim.Adam(params(), lr=1e-3, foreach=True)
    # Twice the size of all the kernels together: far larger than any cache.
    source = torch.ones(2 * numel, device=device)
    destination = torch.empty_like(source)
    timings = interleaved(
        {
            "bop_foreach": bop_foreach.step,
            "bop_single_tensor": bop_single.step,
            "adam_foreach": adam.step,
            "copy": lambda: destination.copy_(source),
        },
        plan.rounds,
        number=plan.bop_steps_per_round,
        device=device,
    )
    bandwidth = 2 * source.numel() * source.element_size() / timings["copy"]["median_s"]
    bound_s = numel * BOP_BYTES_PER_WEIGHT / bandwidth
    bop_s = timings["bop_foreach"]["median_s"]
    vs_adam = bop_s / timings["adam_foreach"]["median_s"]
    vs_bound = bop_s / bound_s
    return {
        "binary_weights": numel,
        "tensors": len(kernels),
        **timings,
        "copy_bytes": 2 * source.numel() * source.element_size(),
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "bop_bytes_per_step": numel * BOP_BYTES_PER_WEIGHT,
        "memory_bound_s": bound_s,
        "bop_vs_adam_foreach": vs_adam,
        "bop_vs_memory_bound": vs_bound,
        "single_tensor_vs_foreach": timings["bop_single_tensor"]["median_s"] / bop_s,
        "targets": {
            "bop_vs_adam_foreach": target(vs_adam, 1.0, "<=", "Bop step / Adam(foreach) step"),
            "bop_vs_memory_bound": target(
                vs_bound, 3.0, "<=", "Bop step / (bytes moved / copy bandwidth)"
            ),
        },
    }


# ----------------------------------------------------------------- b. train step
def full_precision_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same network with real-valued kernels and no input binarization: ordinary
    convolutions and dense layers with the same shapes, BatchNorm unchanged."""
    from bopsweep.bnn.layers import binary_layers

    model = copy.deepcopy(model)
    for _, layer in list(binary_layers(model)):
        layer.binary_kernel = False
        layer.input_quantizer = None
        layer.kernel_quantizer = None
        layer.reset_parameters()
    return model


def _train_trainers(device: torch.device, precision: str):
    from bopsweep.bnn.optim import CaseOptimizer
    from bopsweep.config import make_train_config
    from bopsweep.data import make_synthetic
    from bopsweep.train import Trainer

    config = make_train_config(
        model="binarynet",
        dataset="synthetic",
        preprocess_fn="resize_and_flip",
        hparams_set="bop",
        epochs=1,
        device=device.type,
        precision=precision,
    )
    # One batch per epoch: each train_epoch() is one step of the real loop.
    data = make_synthetic(n_train=BATCH_SIZE, n_val=2)
    bnn = Trainer(config, data, device=device)
    fp = Trainer(config, data, device=device)
    fp.model = full_precision_copy(fp.model)
    fp.optimizer = CaseOptimizer(
        fp.model,
        torch.optim.Adam(fp.model.parameters(), lr=fp.hparams.lr),
        None,
        count_flips=False,
    )
    return bnn, fp


def bench_train_step(device: torch.device, plan: Plan) -> dict[str, Any]:
    candidates = {}
    for precision in ("fp32", "bf16"):
        bnn, fp = _train_trainers(device, precision)
        candidates[f"bnn_{precision}"] = bnn.train_epoch
        candidates[f"fp_{precision}"] = fp.train_epoch
    timings = interleaved(candidates, plan.train_rounds, warmup=plan.train_warmup, device=device)
    out: dict[str, Any] = {"batch_size": BATCH_SIZE, **timings}
    for name, timing in timings.items():
        out[f"{name}_images_per_s"] = BATCH_SIZE / timing["median_s"]
    for precision in ("fp32", "bf16"):
        ratio = timings[f"bnn_{precision}"]["median_s"] / timings[f"fp_{precision}"]["median_s"]
        out[f"bnn_vs_fp_{precision}"] = ratio
    best = max(("fp32", "bf16"), key=lambda p: out[f"bnn_{p}_images_per_s"])
    best_rate = out[f"bnn_{best}_images_per_s"]
    out["larq_images_per_s"] = LARQ_IMAGES_PER_S
    out["bnn_fp32_vs_larq"] = out["bnn_fp32_images_per_s"] / LARQ_IMAGES_PER_S
    out["bnn_bf16_vs_larq"] = out["bnn_bf16_images_per_s"] / LARQ_IMAGES_PER_S
    out["best_precision"] = best
    out["targets"] = {
        "bnn_vs_fp_fp32": target(
            out["bnn_vs_fp_fp32"], 1.25, "<=", "BNN step / full-precision step, float32"
        ),
        "bnn_vs_fp_bf16": target(
            out["bnn_vs_fp_bf16"], 1.25, "<=", "BNN step / full-precision step, bf16 autocast"
        ),
        "vs_larq": target(
            best_rate / LARQ_IMAGES_PER_S,
            LARQ_GOAL_FACTOR,
            ">=",
            f"BNN images/s ({best}) / Larq's {LARQ_IMAGES_PER_S} (a CPU figure)",
        ),
    }
    return out


# -------------------------------------------------------------- c. data pipeline
class _PilImages(torch.utils.data.Dataset):
    """uint8 HWC images handed to PIL one by one, as torchvision's CIFAR10 does."""

    def __init__(self, images, labels, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def bench_data_pipeline(device: torch.device, plan: Plan) -> dict[str, Any]:
    from torchvision import transforms as T

    from bopsweep.data import DeviceBatches, get_preprocess, make_synthetic

    data = make_synthetic(n_train=plan.data_images, n_val=2)
    batches = DeviceBatches(data.to(device), get_preprocess("resize_and_flip"), BATCH_SIZE)
    generator = torch.Generator(device).manual_seed(0)

    def device_epoch() -> None:
        for _ in batches.train(generator):
            pass

    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    images = data.train_x.permute(0, 2, 3, 1).contiguous().numpy()
    dataset = _PilImages(images, data.train_y.numpy(), transform)
    workers = max(1, torch.get_num_threads())
    loaders = {
        "dataloader_0_workers": torch.utils.data.DataLoader(
            dataset, batch_size=BATCH_SIZE, shuffle=True
        ),
        f"dataloader_{workers}_workers": torch.utils.data.DataLoader(
            dataset,
            batch_size=BATCH_SIZE,
            shuffle=True,
            num_workers=workers,
            persistent_workers=True,
            pin_memory=device.type == "cuda",
        ),
    }

    def loader_epoch(loader) -> Callable[[], None]:
        def epoch() -> None:
            for x, y in loader:
                x.to(device, non_blocking=True)
                y.to(device, non_blocking=True)

        return epoch

    candidates = {"device_batches": device_epoch}
    candidates.update({name: loader_epoch(loader) for name, loader in loaders.items()})
    timings = interleaved(candidates, plan.data_rounds, device=device)
    out: dict[str, Any] = {"images": plan.data_images, "loader_workers": workers, **timings}
    for name, timing in timings.items():
        out[f"{name}_images_per_s"] = plan.data_images / timing["median_s"]
    loader_best = max(out[f"{name}_images_per_s"] for name in loaders)
    out["device_vs_best_dataloader"] = out["device_batches_images_per_s"] / loader_best
    out["targets"] = {
        "device_vs_dataloader": target(
            out["device_vs_best_dataloader"],
            5.0,
            ">=",
            "device pipeline images/s / best DataLoader images/s",
        )
    }
    return out


# ------------------------------------------------------------- d. sweep overhead
def quickstart_spec_path() -> Path:
    """sweeps/quickstart.yaml of this checkout (or of the working directory)."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        path = root / "sweeps" / "quickstart.yaml"
        if path.is_file():
            return path
    from bopsweep.errors import UserError

    raise UserError("sweeps/quickstart.yaml not found: run the bench from the repository root")


class _RssSampler:
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
            processes = [me, *_descendants(me)]
            driver = _rss_bytes()
            total = driver + sum(_rss_bytes(pid) for pid in processes[1:])
            self.peak_total = max(self.peak_total, total)
            self.peak_driver = max(self.peak_driver, driver)
            self.peak_processes = max(self.peak_processes, len(processes))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench_sweep_overhead(plan: Plan, workdir: Path) -> dict[str, Any]:
    import ray

    from bopsweep.sweep import tracking
    from bopsweep.sweep.spec import expand, load_spec
    from bopsweep.sweep.tuner import run_sweep
    from bopsweep.train import train

    thresholds = ["0.0", "1.0e-6", "1.0e-5", "1.0e-4", "1.0e-3", "1.0e-2"][: plan.sweep_trials]
    overrides = [
        "name=bench_sweep",
        f"train.epochs={plan.sweep_epochs}",
        "parameters.hparams.gamma.values=[1.0e-3]",
        f"parameters.hparams.threshold.values=[{', '.join(thresholds)}]",
    ]
    loaded = load_spec(quickstart_spec_path(), overrides)
    trials = expand(loaded)
    cpus = loaded.spec.resources.cpu

    # The ideal: the same trials' train(), one after the other in this process, each
    # with the thread count a trial gets (its CPU share).
    direct = []
    with _threads(max(1, int(cpus))):
        for trial in trials:
            start = time.perf_counter()
            train(trial.train, device=torch.device("cpu"))
            direct.append(time.perf_counter() - start)

    uri = f"sqlite:///{workdir / 'sweep-mlflow.db'}"
    start = time.perf_counter()
    started_ms = time.time() * 1000
    try:
        with _RssSampler() as sampler:
            outcome = run_sweep(loaded, tracking_uri=uri, storage=str(workdir / "sweep-storage"))
            wall = time.perf_counter() - start
            node_cpus = ray.cluster_resources().get("CPU", 1.0)
    finally:
        ray.shutdown()
    failed = [o.trial.index for o in outcome.outcomes if o.status != "FINISHED"]
    if failed:
        raise RuntimeError(f"bench sweep trials {failed} did not finish")
    concurrency = max(1, min(len(trials), math.floor(node_cpus / cpus)))
    if loaded.spec.max_concurrent_trials:
        concurrency = min(concurrency, loaded.spec.max_concurrent_trials)
    ideal = sum(direct) / concurrency
    runs = tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    first_start_s = (min(r.info.start_time for r in runs) - started_ms) / 1000
    bound = 1.2 * ideal + 15.0
    return {
        "trials": len(trials),
        "epochs_per_trial": plan.sweep_epochs,
        "cpus_per_trial": cpus,
        "concurrency": concurrency,
        "direct_trial_s": direct,
        "ideal_s": ideal,
        "wall_s": wall,
        "overhead_ratio": wall / ideal,
        "overhead_s": wall - ideal,
        "startup_s": first_start_s,
        "peak_rss_total_mb": _mib(sampler.peak_total),
        "peak_rss_driver_mb": _mib(sampler.peak_driver),
        "peak_processes": sampler.peak_processes,
        "targets": {
            "wall_vs_ideal": target(
                wall,
                bound,
                "<=",
                "sweep wall s <= 1.2 x (sum of direct trial s / concurrency) + 15 s",
            )
        },
    }


# ------------------------------------------------------------------- e. logging
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(workdir: Path, timeout_s: float = 90.0) -> Iterator[str]:
    """A local ``mlflow server`` (sqlite store) on a free loopback port, stopped after."""
    port = _free_port()
    log = (workdir / "mlflow-server.log").open("w")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'server-mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "server-artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # Its own session, so stopping it stops the workers it spawns as well.
    server = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start; see {log.name}")
            time.sleep(0.25)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, 9)
            server.wait()
        log.close()


class _LogEachEpoch(Callback):
    """Logs every epoch through a TrialTracker as a sweep trial does, timing the
    call the epoch waits for."""

    def __init__(self, tracker) -> None:
        self.tracker = tracker
        self.times: list[float] = []

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        start = time.perf_counter()
        self.tracker.log_epoch(metrics, step=int(metrics["epoch"]))
        self.times.append(time.perf_counter() - start)


def bench_logging(plan: Plan, workdir: Path) -> dict[str, Any]:
    from bopsweep.sweep import tracking
    from bopsweep.sweep.spec import load_spec
    from bopsweep.train import Trainer

    # A quickstart epoch as a sweep trial runs it: the MLP on digits, one thread.
    loaded = load_spec(quickstart_spec_path(), [f"train.epochs={plan.log_epochs}"])
    threads = max(1, int(loaded.spec.resources.cpu))

    server_started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if plan.log_server:
            uri = stack.enter_context(mlflow_server(workdir))
            backend = "mlflow server (sqlite store) on 127.0.0.1"
        else:
            uri = f"sqlite:///{workdir / 'log-mlflow.db'}"
            backend = "sqlite URI (no server: --quick)"
        server_start_s = time.perf_counter() - server_started
        exp_id = tracking.experiment_id(uri, "bopsweep-bench")
        _, parent = tracking.start_parent_run(
            uri, "bopsweep-bench", "logging", tags={}, params={}, artifacts={}
        )
        # The same training without and with live logging, alternating so that
        # drift in the machine's speed hits both alike.
        plain: list[float] = []
        logged: list[float] = []
        waits: list[float] = []
        send_s = send_cpu_s = 0.0
        for round_index in range(2):
            with _threads(threads):
                plain.extend(m["epoch_time_s"] for m in Trainer(loaded.spec.train).fit())
                tracker = tracking.TrialTracker(uri, exp_id, parent, round_index, "logging")
                callback = _LogEachEpoch(tracker)
                history = Trainer(loaded.spec.train).fit([callback])
                logged.extend(m["epoch_time_s"] for m in history)
                waits.extend(callback.times)
                tracker.finish("FINISHED")
                send_s += tracker.send_s
                send_cpu_s += tracker.send_cpu_s
    epochs = len(logged)
    epoch = _samples(plain)
    with_logging = _samples(logged)
    log = _samples(waits)
    ratio = log["median_s"] / epoch["median_s"]
    return {
        "backend": backend,
        "tracking_uri": uri,
        "server_start_s": server_start_s if plan.log_server else None,
        "metrics_per_epoch": len(history[0]),
        "epoch": epoch,
        "epoch_with_logging": with_logging,
        "log_epoch": log,
        # The sender thread's work, off the training thread: wall seconds in
        # requests and CPU seconds, per epoch.
        "sender_wall_per_epoch_s": send_s / epochs,
        "sender_cpu_per_epoch_s": send_cpu_s / epochs,
        "log_vs_epoch": ratio,
        "epoch_with_vs_without_logging": with_logging["median_s"] / epoch["median_s"],
        "targets": {
            "log_vs_epoch": target(
                ratio, 0.01, "<", "time an epoch waits in MLflow logging / quickstart epoch"
            )
        },
    }


# -------------------------------------------------------------------- f. memory
def training_memory_probe(device: str, precision: str, steps: int) -> dict[str, float]:
    """Run in a fresh process: RSS after imports, and peak RSS over ``steps`` BinaryNet
    training steps at batch 100 through the Trainer."""
    from bopsweep.config import make_train_config
    from bopsweep.data import make_synthetic
    from bopsweep.train import Trainer

    data = make_synthetic(n_train=BATCH_SIZE * steps, n_val=2)
    before = _rss_bytes()
    config = make_train_config(
        model="binarynet",
        dataset="synthetic",
        preprocess_fn="resize_and_flip",
        hparams_set="bop",
        epochs=1,
        device=device,
        precision=precision,
    )
    trainer = Trainer(config, data)
    trainer.train_epoch()
    out = {
        "rss_before_mb": _mib(before),
        "peak_rss_mb": _mib(_peak_rss_bytes()),
        "steps": steps,
    }
    if trainer.device.type == "cuda":
        out["cuda_peak_allocated_mb"] = _mib(torch.cuda.max_memory_allocated())
    return out


def _private_mb() -> float | None:
    """This process's private memory (USS: pages no other process maps), in MiB."""
    try:
        rollup = Path("/proc/self/smaps_rollup").read_text()
    except OSError:  # not Linux
        return None
    kib = sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Private_"))
    return kib / 1024


def _write_cifar10(root: Path, per_batch: int) -> Path:
    """Random images in CIFAR-10's python-batches format, ``per_batch`` per file."""
    from bopsweep.data import CIFAR10_FILES, write_cifar10_batch

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10_FILES:
        rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        write_cifar10_batch(folder / name, rows, rng.integers(0, 10, per_batch), name)
    return root


def dataset_sharing_probe(plan: Plan, workdir: Path) -> dict[str, Any]:
    """Two concurrent trial processes on one node get CIFAR-10 from the node's shared
    copy, then two load it themselves: each one's private memory growth."""
    import ray

    from bopsweep.config import TrainConfig
    from bopsweep.data import load_dataset
    from bopsweep.sweep import datacache

    root = _write_cifar10(workdir / "cifar10-full", plan.shared_images_per_batch)
    config = TrainConfig(model="mlp", dataset="cifar10", data_dir=str(root))

    @ray.remote(num_cpus=1)
    def trial(shared: bool) -> float | None:
        before = _private_mb()
        if shared:
            data = datacache.shared_dataset("bench", config)
            assert data is not None, "no shared copy on this node"
        else:
            data = load_dataset(config.dataset, config.data_dir)
        # Read every image, as an epoch does.
        int(data.train_x.sum()) + int(data.val_x.sum())
        after = _private_mb()
        return None if before is None else after - before

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        actors = datacache.start("bench", {"cifar10"})
        try:
            shared = ray.get([trial.remote(True) for _ in range(2)])
        finally:
            datacache.stop(actors)
        own = ray.get([trial.remote(False) for _ in range(2)])
    finally:
        if started_here:
            ray.shutdown()
    images = 6 * plan.shared_images_per_batch
    return {
        "images": images,
        "dataset_mb": images * 3072 / 2**20,
        "trials": 2,
        "shared_private_mb_per_trial": shared,
        "own_copy_private_mb_per_trial": own,
        "note": "private memory (USS) a trial gains by getting the dataset and reading it",
    }


def bench_memory(
    device: torch.device, plan: Plan, sweep: dict[str, Any], workdir: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # --quick: one fresh process (bf16 peaks lower, activations being half the size).
    for precision in ("fp32",) if plan.quick else ("fp32", "bf16"):
        code = (
            "import json; from bopsweep.bench import training_memory_probe as probe; "
            f"print(json.dumps(probe({device.type!r}, {precision!r}, {plan.memory_steps})))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory probe failed: {done.stderr.strip()[-800:]}")
        probe = json.loads(done.stdout.strip().splitlines()[-1])
        probe["training_mb"] = probe["peak_rss_mb"] - probe["rss_before_mb"]
        out[f"train_{precision}"] = probe
    if "peak_rss_total_mb" in sweep:
        out["sweep"] = {
            key: sweep[key] for key in ("peak_rss_total_mb", "peak_rss_driver_mb", "peak_processes")
        }
        out["sweep"]["trials"] = sweep["trials"]
        out["sweep"]["note"] = "driver + Ray processes, shared pages counted once per process"
    out["dataset_sharing"] = dataset_sharing_probe(plan, workdir)
    return out


# ----------------------------------------------------------------------- runner
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
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "loadavg_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


SECTIONS = ("bop_step", "train_step", "data_pipeline", "logging", "sweep_overhead", "memory")


def run_bench(
    device_name: str = "cpu",
    *,
    quick: bool = False,
    only: tuple[str, ...] = (),
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Every section (or those in ``only``), in order; a section that fails records
    its error and the rest still run."""
    from bopsweep.errors import UserError

    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise UserError(
            f"unknown bench section {', '.join(map(repr, unknown))}; "
            f"valid sections: {', '.join(SECTIONS)}"
        )
    if device_name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device_name!r}; valid devices: cpu, cuda")
    if device_name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for, but CUDA is not available here")
    device = torch.device(device_name)
    plan = QUICK if quick else FULL
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine_info(device),
        "plan": asdict(plan),
        "sections": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="bopsweep-bench-"))
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "bop_step": lambda: bench_bop_step(device, plan),
        "train_step": lambda: bench_train_step(device, plan),
        "data_pipeline": lambda: bench_data_pipeline(device, plan),
        "logging": lambda: bench_logging(plan, workdir),
        "sweep_overhead": lambda: bench_sweep_overhead(plan, workdir),
        "memory": lambda: bench_memory(
            device, plan, results["sections"].get("sweep_overhead", {}), workdir
        ),
    }
    try:
        for name in [name for name in SECTIONS if not only or name in only]:
            progress(f"{name}...")
            section_start = time.perf_counter()
            try:
                section = runners[name]()
            except Exception as error:  # one broken section must not hide the others
                section = {
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc()[-4000:],
                }
            section["elapsed_s"] = time.perf_counter() - section_start
            results["sections"][name] = section
            progress(f"{name} done in {section['elapsed_s']:.1f} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["elapsed_s"] = time.perf_counter() - started
    return results


def failed_sections(results: dict[str, Any]) -> list[str]:
    return [name for name, section in results["sections"].items() if "error" in section]


# ------------------------------------------------------------------------ table
def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"{text}{unit}"
    return f"{value}{unit}"


def _ms(timing: dict[str, float]) -> str:
    return f"{timing['median_s'] * 1e3:.1f} ms (IQR {timing['iqr_s'] * 1e3:.1f})"


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(section, figure, value, target, met) rows of the summary table."""
    rows: list[tuple[str, str, str, str, str]] = []
    sections = results["sections"]

    def targets(name: str) -> None:
        for key, t in sections[name].get("targets", {}).items():
            rows.append(
                (
                    name,
                    f"{key}: {t['what']}",
                    _fmt(t["value"]),
                    f"{t['kind']} {_fmt(t['bound'])}",
                    "yes" if t["met"] else "NO",
                )
            )

    for name in [name for name in SECTIONS if name in sections]:
        section = sections[name]
        if "error" in section:
            rows.append((name, "error", section["error"][:120], "", "NO"))
            continue
        if name == "bop_step":
            for key in ("bop_foreach", "bop_single_tensor", "adam_foreach"):
                rows.append((name, key, _ms(section[key]), "", ""))
            rows.append((name, "memory bound", f"{section['memory_bound_s'] * 1e3:.1f} ms", "", ""))
            rows.append(
                (name, "copy bandwidth", _fmt(section["copy_bandwidth_gb_s"], " GB/s"), "", "")
            )
        elif name == "train_step":
            for key in ("bnn_fp32", "fp_fp32", "bnn_bf16", "fp_bf16"):
                rows.append(
                    (
                        name,
                        f"{key} images/s",
                        f"{section[key + '_images_per_s']:.1f} ({_ms(section[key])}/step)",
                        "",
                        "",
                    )
                )
        elif name == "data_pipeline":
            for key in section:
                if key.endswith("_images_per_s"):
                    rows.append(
                        (name, key.removesuffix("_per_s") + "/s", _fmt(section[key]), "", "")
                    )
        elif name == "sweep_overhead":
            rows.append(
                (
                    name,
                    f"{section['trials']} trials x {section['epochs_per_trial']} epochs",
                    f"wall {section['wall_s']:.1f} s, ideal {section['ideal_s']:.1f} s, "
                    f"start-up {section['startup_s']:.1f} s",
                    "",
                    "",
                )
            )
        elif name == "logging":
            rows.append(
                (
                    name,
                    f"log_epoch ({section['backend']})",
                    _ms(section["log_epoch"]),
                    "",
                    "",
                )
            )
            rows.append((name, "quickstart epoch", _ms(section["epoch"]), "", ""))
            rows.append((name, "epoch while logging", _ms(section["epoch_with_logging"]), "", ""))
            rows.append(
                (
                    name,
                    "sender thread / epoch",
                    f"{section['sender_wall_per_epoch_s'] * 1e3:.1f} ms wall, "
                    f"{section['sender_cpu_per_epoch_s'] * 1e3:.1f} ms CPU",
                    "",
                    "",
                )
            )
        elif name == "memory":
            for key in ("train_fp32", "train_bf16"):
                if key in section:
                    probe = section[key]
                    rows.append(
                        (
                            name,
                            f"{key} peak RSS",
                            f"{probe['peak_rss_mb']:.0f} MiB "
                            f"(+{probe['training_mb']:.0f} over imports)",
                            "",
                            "",
                        )
                    )
            if "sweep" in section:
                rows.append(
                    (
                        name,
                        "sweep peak RSS (driver + Ray)",
                        f"{section['sweep']['peak_rss_total_mb']:.0f} MiB "
                        f"({section['sweep']['peak_processes']} processes)",
                        "",
                        "",
                    )
                )
            sharing = section.get("dataset_sharing")
            if sharing and None not in sharing["shared_private_mb_per_trial"]:
                for key, label in (("shared", "node's copy"), ("own_copy", "own copy")):
                    per_trial = sharing[f"{key}_private_mb_per_trial"]
                    rows.append(
                        (
                            name,
                            f"CIFAR-10 ({sharing['dataset_mb']:.0f} MiB), {label}",
                            "+" + ", +".join(f"{mb:.0f}" for mb in per_trial) + " MiB per trial",
                            "",
                            "",
                        )
                    )
        targets(name)
    return rows
