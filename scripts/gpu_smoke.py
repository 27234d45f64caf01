"""One command that goes through every CUDA path a bopsweep user meets, on one GPU.

Run from the repository root (``scripts/gpu_smoke.sh`` calls this): MLflow's GPU
system metrics, the CUDA tests, one warm epoch of each model at each precision
(images per second, peak memory), a fused group, ``compile: true``, checkpoints
GPU -> GPU (``bopsweep train --resume``) and GPU -> CPU, the fusion bench on CUDA,
the section 5.1 grid on synthetic CIFAR-shaped data with ``resources.gpu: 0.25``
fused and unfused and with ``resources.gpu: 0`` (whose trials must not see the GPU),
and a model logged by a GPU trial loaded where no GPU is visible. The sizes are
chosen to finish within 8 minutes on one GPU; each check's seconds are recorded.

Every check ends ``passed``, ``failed`` or ``skipped`` with the reason it could not
run here (no GPU, no native bf16, no pytest, out of the time budget): a check that did
not run is never counted as passed. On a machine without a GPU the checks that need
none still run; ``--rehearse`` runs the GPU checks' own code on the CPU at small sizes
(what can go wrong in the script itself shows before a GPU's scarce minutes are spent).
Results: ``<out>/gpu_smoke.json`` (rewritten after every check, so a run cut short keeps
what it measured) and a table (also ``<out>/gpu_smoke.txt``); the exit code is 1 when a
check failed. Nothing outside ``<out>`` is written: MLflow, Ray's
results and bopsweep's cache (the fusion gains the bench records) live there.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Per model: the input shape of its synthetic data, training images, batch size. The
# CIFAR-sized models train on CIFAR-shaped images; AlexNet and XNOR-Net need ImageNet's.
MODELS = {
    "mlp": ((3, 32, 32), 10, 5000, 100),
    "binarynet": ((3, 32, 32), 10, 5000, 100),
    "birealnet": ((3, 32, 32), 10, 5000, 100),
    "binary_alexnet": ((3, 224, 224), 100, 512, 128),
    "xnornet": ((3, 224, 224), 100, 512, 128),
}
PRECISIONS = ("fp32", "bf16")
# --rehearse: the same models on the CPU, a few batches each.
REHEARSAL_MODELS = {
    "mlp": ((3, 32, 32), 10, 200, 50),
    "binarynet": ((3, 32, 32), 10, 100, 50),
    "birealnet": ((3, 32, 32), 10, 100, 50),
    "binary_alexnet": ((3, 224, 224), 100, 16, 8),
    "xnornet": ((3, 224, 224), 100, 16, 8),
}
FUSED_MEMBERS = 4
# Host syncs per training step: BinaryNet, one step = one batch, counted by CUDA's sync
# debug mode over an epoch of few and one of many steps (the difference is per step).
SYNC_STEPS = (4, 16)
GRID_TRIALS = 9  # sweeps/sec51_grid.yaml: threshold x gamma, 3 x 3


class Skip(Exception):
    """A check that cannot run here, and why."""


class Smoke:
    def __init__(
        self, out: Path, rehearse: bool = False, budget_s: float = 1e9, skip: Sequence[str] = ()
    ) -> None:
        import torch

        self.out = out
        self.cuda = torch.cuda.is_available()
        self.rehearse = rehearse and not self.cuda
        self.device = "cuda" if self.cuda else "cpu"
        self.models = REHEARSAL_MODELS if self.rehearse else MODELS
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.skip = tuple(skip)
        self.results: list[dict[str, Any]] = []
        self.env = {
            **os.environ,
            # The checkout's bopsweep, in this process, its commands and Ray's workers.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            # bopsweep's cache (fusion gains, MLflow's store template) stays in <out>.
            "XDG_CACHE_HOME": str(out / "cache"),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
        for key in [k for k in self.env if k.startswith(("MLFLOW_", "RAY_ADDRESS"))]:
            del self.env[key]
        self.tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
        self.epochs: dict[str, dict[str, Any]] = {}
        self.logged_model: dict[str, Any] | None = None

    # ---------------------------------------------------------------- running
    def check(self, name: str, function: Callable[[], dict[str, Any]]) -> None:
        print(f"gpu_smoke: {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            if started - self.started > self.budget_s:
                raise Skip(f"out of the smoke's time budget ({self.budget_s:g} s)")
            if any(fnmatch.fnmatch(name, pattern) for pattern in self.skip):
                raise Skip("left out by --skip")
            record = {"status": "passed", **function()}
        except Skip as why:
            record = {"status": "skipped", "reason": str(why)}
        except Exception as error:
            record = {
                "status": "failed",
                "error": f"{type(error).__name__}: {error}"[-2000:],
                "traceback": traceback.format_exc()[-4000:],
            }
        record = {"check": name, **record, "seconds": round(time.perf_counter() - started, 1)}
        self.results.append(record)
        print(f"gpu_smoke: {name}: {record['status']}", file=sys.stderr, flush=True)
        self.write()

    def write(self) -> dict[str, Any]:
        report = {
            "elapsed_s": round(time.perf_counter() - self.started, 1),
            "rehearsal": self.rehearse,
            "checks": self.results,
        }
        (self.out / "gpu_smoke.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        return report

    def need_cuda(self, what: str = "", rehearsable: bool = True) -> None:
        """Skip without a GPU, unless rehearsing a check whose code also runs on the CPU."""
        if not self.cuda and not (self.rehearse and rehearsable):
            raise Skip("no CUDA device visible here" + (f" ({what})" if what else ""))

    def reset_peak(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict[str, Any]:
        import torch

        if not self.cuda:
            return {}
        torch.cuda.synchronize()
        return {
            "peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20),
            "peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20),
        }

    def command(self, args: list[str], timeout: float, env: dict | None = None, cwd=None):
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            cwd=cwd or self.out,
        )

    def bopsweep(self, *args: str, timeout: float = 300, env: dict | None = None):
        beside = Path(sys.executable).with_name("bopsweep")
        console_script = [sys.executable, "-c", "from bopsweep.cli import command; command()"]
        entry = [str(beside)] if beside.exists() else console_script
        return self.command([*entry, *args], timeout, env)

    def python(self, code: str, timeout: float = 300, env: dict | None = None):
        return self.command([sys.executable, "-c", code], timeout, env)

    # ----------------------------------------------------------------- checks
    def environment(self) -> dict[str, Any]:
        import torch

        info: dict[str, Any] = {
            "torch": torch.__version__,
            "cuda_build": torch.version.cuda,
            "cuda_available": self.cuda,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "c_compiler": shutil.which("cc") or shutil.which("gcc"),
            "cxx_compiler": shutil.which("c++") or shutil.which("g++"),
        }
        try:
            import pynvml  # noqa: F401

            info["nvidia_ml_py"] = True
        except ImportError:
            info["nvidia_ml_py"] = False
        if self.cuda:
            from bopsweep.precision import native_bf16

            info["gpu"] = torch.cuda.get_device_name(0)
            info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            info["gpu_memory_gib"] = round(
                torch.cuda.get_device_properties(0).total_memory / 2**30, 1
            )
            info["native_bf16"] = native_bf16("cuda")
            info["gpus_visible"] = torch.cuda.device_count()
        return info

    def cuda_context(self) -> dict[str, Any]:
        """What a CUDA process holds outside torch's allocator (what the memory cap of a
        GPU share leaves out: bopsweep.device.CUDA_CONTEXT_BYTES)."""
        self.need_cuda(rehearsable=False)
        import pynvml
        import torch

        from bopsweep.device import CUDA_CONTEXT_BYTES

        torch.ones(1, device="cuda").sum().item()
        torch.cuda.synchronize()
        pynvml.nvmlInit()
        index = torch.cuda.current_device()
        uuid = torch.cuda.get_device_properties(index).uuid
        handles = [
            pynvml.nvmlDeviceGetHandleByIndex(i)
            for i in range(pynvml.nvmlDeviceGetCount())
            if str(uuid) in str(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)))
        ]
        if not handles:
            raise Skip(f"NVML lists no GPU with this device's UUID ({uuid})")
        handle = handles[0]
        used = [
            p.usedGpuMemory
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            if p.pid == os.getpid() and p.usedGpuMemory
        ]
        if not used:
            raise Skip("NVML does not list this process (another PID namespace, a container)")
        outside = used[0] - torch.cuda.memory_reserved(index)
        return {
            "cuda_context_mib": round(outside / 2**20),
            "assumed_mib": CUDA_CONTEXT_BYTES // 2**20,
            "note": "measured after a first kernel; cuBLAS/cuDNN handles add more later",
        }

    def gpu_system_metrics(self) -> dict[str, Any]:
        """MLflow's system metrics monitor finds the GPUs (through nvidia-ml-py)."""
        self.need_cuda(rehearsable=False)
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitor = GPUMonitor()  # raises without nvidia-ml-py or a working NVML
        monitor.collect_metrics()
        names = sorted(monitor.aggregate_metrics())
        if not names:
            raise RuntimeError("the GPU monitor collected no metric")
        return {
            "gpus": monitor.num_gpus,
            "metrics": names[:4] + (["..."] if len(names) > 4 else []),
        }

    def cuda_tests(self) -> dict[str, Any]:
        self.need_cuda("every CUDA test would skip", rehearsable=False)
        try:
            import pytest  # noqa: F401
        except ImportError:
            raise Skip("pytest is not installed (pip install -e .[test])") from None
        files = [
            "tests/test_device.py",
            "tests/test_checkpoint_devices.py",
            "tests/bnn/test_optim.py",
            "tests/test_train.py",
            "tests/test_train_precision.py",
            "tests/sweep/test_preflight.py",
            "tests/sweep/test_ray_backend.py",
            "tests/sweep/test_fusion.py",
        ]
        args = ["-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-q", "-rfEs"]
        args += ["--tb=short", "--durations=0", "-k", "cuda or gpu or tf32 or device", *files]
        done = self.command([sys.executable, *args], timeout=300, cwd=REPO)
        (self.out / "cuda_tests.log").write_text(done.stdout + done.stderr)
        lines = done.stdout.strip().splitlines() or [""]
        if done.returncode != 0:
            failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
            raise RuntimeError(f"pytest exited {done.returncode}: {failed or lines[-1]}")
        return {"summary": lines[-1]}

    def _trainer_epochs(self, model: str, precision: str, **extra) -> dict[str, Any]:
        import torch

        from bopsweep.config import make_train_config
        from bopsweep.data import make_synthetic
        from bopsweep.train import Trainer

        shape, classes, n_train, batch = self.models[model]
        config = make_train_config(
            model=model,
            dataset="synthetic",
            hparams_set="bop",
            hparams={"batch_size": batch},
            epochs=2,
            device=self.device,
            precision=precision,
            **extra,
        )
        data = make_synthetic(shape=shape, num_classes=classes, n_train=n_train, n_val=256)
        self.reset_peak()
        trainer = Trainer(config, data)
        trainer.fit()
        history = trainer.history
        figures = {
            "precision": trainer.precision,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "batch_size": batch,
            "input_shape": list(shape),
            "first_epoch_s": round(history[0]["epoch_time_s"], 2),
            "images_per_s": round(history[-1]["samples_per_s"]),
            **self.peak(),
            "final_train_loss": round(history[-1]["train_loss"], 4),
        }
        del trainer, data
        return figures

    def epoch(self, model: str, precision: str) -> dict[str, Any]:
        self.need_cuda()
        from bopsweep.precision import native_bf16

        if precision == "bf16" and not native_bf16(self.device):
            raise Skip("this GPU has no native bf16 (compute capability < 8.0): emulated")
        figures = self._trainer_epochs(model, precision)
        self.epochs[f"{model}/{precision}"] = figures
        return figures

    def _binarynet_members(self, members: int, epochs: int) -> list:
        """BinaryNet configs on synthetic data, one gamma per member."""
        from bopsweep.config import make_train_config

        batch = self.models["binarynet"][3]
        return [
            make_train_config(
                model="binarynet",
                dataset="synthetic",
                hparams_set="bop",
                hparams={"batch_size": batch, "gamma": 10.0 ** -(2 + k)},
                epochs=epochs,
                device=self.device,
            )
            for k in range(members)
        ]

    def fused_group(self) -> dict[str, Any]:
        self.need_cuda()
        import torch

        from bopsweep.data import make_synthetic
        from bopsweep.train import Trainer

        shape, classes, n_train, _ = self.models["binarynet"]
        configs = self._binarynet_members(FUSED_MEMBERS, epochs=2)
        data = make_synthetic(shape=shape, num_classes=classes, n_train=n_train, n_val=256)
        self.reset_peak()
        trainer = Trainer(configs, data, device=torch.device(self.device))
        histories = trainer.fit()
        last = [h[-1] for h in histories]
        if len(last) != FUSED_MEMBERS or not all(m["train_loss"] < float("inf") for m in last):
            raise RuntimeError(f"members did not all finish: {[len(h) for h in histories]}")
        member_rate = FUSED_MEMBERS * last[0]["samples_per_s"]
        figures: dict[str, Any] = {
            "members": FUSED_MEMBERS,
            "member_images_per_s": round(member_rate),
            **self.peak(),
        }
        single = self.epochs.get(f"binarynet/{trainer.precision}")
        if single:
            figures["vs_one_trial"] = round(member_rate / single["images_per_s"], 2)
        del trainer
        return figures

    def compiled(self) -> dict[str, Any]:
        self.need_cuda("Triton's GPU kernels")
        figures = self._trainer_epochs("binarynet", "fp32", compile=True)
        eager = self.epochs.get("binarynet/fp32")
        if eager:
            figures["vs_eager"] = round(figures["images_per_s"] / eager["images_per_s"], 2)
        figures["compile_epoch_s"] = figures.pop("first_epoch_s")
        return figures

    def checkpoints(self) -> dict[str, Any]:
        """GPU -> GPU: `bopsweep train --resume` after a SIGKILL in epoch 1; GPU -> CPU:
        the same checkpoint resumed by a process that sees no GPU."""
        self.need_cuda("a GPU run writes the checkpoint")
        from bopsweep.testing import KILL_AT_EPOCH_ENV, KILL_CALLBACK, KILL_MARKER_ENV

        folder = self.out / "checkpoints"
        run, copy = folder / "gpu", folder / "gpu-for-cpu"
        shutil.rmtree(folder, ignore_errors=True)
        args = ["train", "mlp", "--dataset", "digits", "--hparams-set", "bop", "--epochs", "3"]
        args += ["--device", self.device, "--output-dir", str(run)]
        kill = {
            "BOPSWEEP_TRIAL_CALLBACKS": KILL_CALLBACK,
            KILL_AT_EPOCH_ENV: "1",
            KILL_MARKER_ENV: str(folder / "killed"),
        }
        killed = self.bopsweep(*args, env=kill)
        if killed.returncode != -9:
            raise RuntimeError(
                f"the run was not killed (exit {killed.returncode}): {killed.stderr[-800:]}"
            )
        shutil.copytree(run, copy)
        resumed = self.bopsweep(*args, "--resume", env=kill)
        if resumed.returncode != 0:
            raise RuntimeError(
                f"GPU -> GPU resume exited {resumed.returncode}: {resumed.stderr[-800:]}"
            )
        epochs = [
            json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
        ]
        if epochs != [0, 1, 2]:
            raise RuntimeError(f"GPU -> GPU: epochs {epochs}, expected [0, 1, 2]")
        code = f"""
import json
from pathlib import Path
import torch
from bopsweep.config import make_train_config
from bopsweep.local_run import _resume_state
from bopsweep.train import Trainer
assert not torch.cuda.is_available()
folder = Path({str(copy)!r})
state = _resume_state(folder, json.loads((folder / "config.json").read_text()))
config = make_train_config(model="mlp", dataset="digits", hparams_set="bop", epochs=3, device="cpu")
trainer = Trainer(config)
trainer.load_state_dict(state)
trainer.fit()
print(json.dumps([m["epoch"] for m in trainer.history]))
"""
        on_cpu = self.python(code, env={"CUDA_VISIBLE_DEVICES": ""})
        if on_cpu.returncode != 0:
            raise RuntimeError(f"GPU -> CPU resume failed: {on_cpu.stderr[-1200:]}")
        cpu_epochs = json.loads(on_cpu.stdout.strip().splitlines()[-1])
        if cpu_epochs != [0, 1, 2]:
            raise RuntimeError(f"GPU -> CPU: epochs {cpu_epochs}, expected [0, 1, 2]")
        return {"gpu_to_gpu_epochs": epochs, "gpu_to_cpu_epochs": cpu_epochs}

    def grid(self, label: str, gpu: float, fuse: str, models: bool = False) -> dict[str, Any]:
        """sweeps/sec51_grid.yaml, one epoch on synthetic CIFAR-shaped data."""
        if gpu > 0:
            self.need_cuda(f"resources.gpu={gpu:g}", rehearsable=False)
        name = f"smoke_sec51_{label}"
        samples = "512" if gpu > 0 else "200"
        overrides = [
            f"name={name}",
            f"tracking.experiment={name}",
            "train.dataset=synthetic",
            "train.device=auto",
            "train.epochs=1",
            f"train.max_train_samples={samples}",
            "train.max_val_samples=100",
            "resources.cpu=1",
            f"resources.gpu={gpu:g}",
            f"fuse={fuse}",
            "max_failures=0",
        ]
        if models:
            overrides.append("tracking.models=[final]")
        args = ["run", str(REPO / "sweeps" / "sec51_grid.yaml"), "--json"]
        args += ["--tracking-uri", self.tracking_uri, "--storage", str(self.out / "results")]
        for override in overrides:
            args += ["--set", override]
        started = time.perf_counter()
        done = self.bopsweep(*args, timeout=240)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"bopsweep run exited {done.returncode}: {done.stderr[-1500:]}")
        children = self._children(name)
        finished = [r for r in children if r.info.status == "FINISHED"]
        if len(finished) != GRID_TRIALS:
            raise RuntimeError(f"{len(finished)} of {GRID_TRIALS} child runs FINISHED")
        saw_gpu = [r.data.tags.get("bopsweep.gpu") for r in children]
        figures: dict[str, Any] = {"wall_s": round(wall, 1), "runs_finished": len(finished)}
        ray_trials = self.out / "results" / name
        figures["ray_trials"] = sorted(
            p.name for p in ray_trials.iterdir() if p.name.startswith(("trial_", "fused_"))
        )
        if gpu > 0:
            if not all(saw_gpu):
                raise RuntimeError("a trial given a GPU share trained without a GPU")
            figures["trial_gpu"] = saw_gpu[0]
        elif self.cuda:
            if any(saw_gpu):
                raise RuntimeError(
                    "trials with resources.gpu=0 saw the GPU (CUDA_VISIBLE_DEVICES not blanked)"
                )
            figures["gpu_hidden_from_trials"] = True
        else:
            figures["gpu_hidden_from_trials"] = "not applicable: no GPU on this machine"
        if models:
            tagged = [r for r in children if "bopsweep.model.final_model" in r.data.tags]
            if not tagged:
                raise RuntimeError("no child run logged its final model")
            self.logged_model = {
                "uri": tagged[0].data.tags["bopsweep.model.final_model"],
                "logged_on": "gpu" if gpu > 0 else "cpu",
            }
        return figures

    def _children(self, experiment: str) -> list:
        import mlflow

        client = mlflow.MlflowClient(self.tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise RuntimeError(f"no MLflow experiment {experiment}")
        runs = client.search_runs([found.experiment_id], max_results=1000)
        return [r for r in runs if "mlflow.parentRunId" in r.data.tags]

    def model_without_gpu(self) -> dict[str, Any]:
        if self.logged_model is None:
            raise Skip("no sweep logged a model in this run")
        code = f"""
import mlflow, mlflow.pytorch, torch
assert not torch.cuda.is_available()
mlflow.set_tracking_uri({self.tracking_uri!r})
model = mlflow.pytorch.load_model({self.logged_model["uri"]!r})
with torch.no_grad():
    out = model(torch.zeros(2, 3, 32, 32))
assert tuple(out.shape) == (2, 10), out.shape
print(next(model.parameters()).device)
"""
        done = self.python(code, env={"CUDA_VISIBLE_DEVICES": ""})
        if done.returncode != 0:
            raise RuntimeError(f"loading with no GPU failed: {done.stderr[-1500:]}")
        figures = {**self.logged_model, "loaded_on": done.stdout.strip().splitlines()[-1]}
        if self.logged_model["logged_on"] == "cpu":
            figures["note"] = "logged by a CPU trial (no GPU here): GPU -> CPU needs a GPU machine"
        return figures

    def host_syncs(self) -> dict[str, Any]:
        """Host syncs per BinaryNet training step, K = 1 and fused, counted by CUDA's
        sync debug mode (each synchronizing call warns once)."""
        self.need_cuda()
        import warnings

        import torch

        from bopsweep.data import make_synthetic
        from bopsweep.train import Trainer

        shape, classes, _, batch = self.models["binarynet"]
        figures: dict[str, Any] = {}
        for members in (1, FUSED_MEMBERS):
            configs = self._binarynet_members(members, epochs=1)
            counts = []
            for steps in SYNC_STEPS:
                data = make_synthetic(
                    shape=shape, num_classes=classes, n_train=batch * steps, n_val=batch
                )
                trainer = Trainer(configs, data, device=torch.device(self.device))
                trainer.train_epoch()  # warm-up: cuDNN's algorithm search syncs
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    if self.cuda:
                        torch.cuda.set_sync_debug_mode("warn")
                    try:
                        trainer.train_epoch()
                    finally:
                        if self.cuda:
                            torch.cuda.set_sync_debug_mode(0)
                counts.append(sum("synchroniz" in str(w.message) for w in caught))
                del trainer, data
            few, many = SYNC_STEPS
            per_step = (counts[1] - counts[0]) / (many - few)
            figures[f"K{members}_per_step"] = round(per_step, 2)
            figures[f"K{members}_per_epoch_fixed"] = round(counts[0] - few * per_step, 2)
        if not self.cuda:
            figures["note"] = "rehearsal: no CUDA, nothing counted"
        return figures

    def fusion_bench(self) -> dict[str, Any]:
        self.need_cuda()
        output = self.out / f"bench-fusion-{self.device}.json"
        quick = ["--quick"] if self.rehearse else []
        done = self.bopsweep(
            "bench",
            "--only",
            "fusion",
            *quick,
            "--device",
            self.device,
            "--output",
            str(output),
            timeout=200,
        )
        if not output.exists():
            raise RuntimeError(f"bopsweep bench exited {done.returncode}: {done.stderr[-1500:]}")
        section = json.loads(output.read_text())["sections"]["fusion"]
        if "binarynet" not in section:
            raise RuntimeError(f"no BinaryNet figures: {section} {done.stderr[-1200:]}")
        gains = {k: round(v["gain"], 2) for k, v in section["binarynet"].items() if "gain" in v}
        figures = {"gain_by_members": gains, "recorded": section.get("recorded_gains")}
        if done.returncode != 0:
            figures["bench_exit"] = done.returncode  # a target missed: the figures stand
        return figures

    # ------------------------------------------------------------------ report
    def table(self) -> str:
        lines = [f"{'check':<28} {'status':<8} {'s':>6}  details"]
        for record in self.results:
            if record["status"] == "skipped":
                details = record["reason"]
            elif record["status"] == "failed":
                details = record["error"].splitlines()[0][:150]
            else:
                shown = {
                    k: v
                    for k, v in record.items()
                    if k not in ("check", "status", "seconds", "traceback")
                }
                details = ", ".join(f"{k}={v}" for k, v in shown.items())[:220]
            lines.append(
                f"{record['check']:<28} {record['status']:<8} {record['seconds']:>6}  {details}"
            )
        counts = {
            s: sum(r["status"] == s for r in self.results) for s in ("passed", "failed", "skipped")
        }
        lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_smoke_results"))
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="without a GPU: run the GPU checks' code on the CPU at small sizes",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="checks not started after this many seconds are skipped (default: 480)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out the checks whose name matches (fnmatch; repeatable): 'epoch/xnornet/*'",
    )
    args = parser.parse_args()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    os.environ["XDG_CACHE_HOME"] = str(out / "cache")  # this process's bopsweep cache too
    sys.path.insert(0, str(REPO))
    smoke = Smoke(out, rehearse=args.rehearse, budget_s=args.budget_s, skip=args.skip)
    smoke.check("environment", smoke.environment)
    smoke.check("cuda_context", smoke.cuda_context)
    smoke.check("gpu_system_metrics", smoke.gpu_system_metrics)
    smoke.check("cuda_tests", smoke.cuda_tests)
    for model in smoke.models:
        for precision in PRECISIONS:
            smoke.check(
                f"epoch/{model}/{precision}", lambda m=model, p=precision: smoke.epoch(m, p)
            )
    smoke.check("fused_group", smoke.fused_group)
    smoke.check("host_syncs", smoke.host_syncs)
    smoke.check("compile", smoke.compiled)
    smoke.check("checkpoints", smoke.checkpoints)
    smoke.check("sec51/gpu0.25/fused", lambda: smoke.grid("gpu025_fused", 0.25, "3"))
    smoke.check(
        "sec51/gpu0.25/unfused", lambda: smoke.grid("gpu025_unfused", 0.25, "off", models=True)
    )
    smoke.check(
        "sec51/gpu0", lambda: smoke.grid("gpu0", 0.0, "auto", models=smoke.logged_model is None)
    )
    smoke.check("logged_model_without_gpu", smoke.model_without_gpu)
    # Last: the longest, and the one a short budget can best do without.
    smoke.check("fusion_bench", smoke.fusion_bench)
    report = smoke.write()
    table = smoke.table() + f"\nin {report['elapsed_s']} s; wrote {out / 'gpu_smoke.json'}"
    (out / "gpu_smoke.txt").write_text(table + "\n")
    print(table)
    return 1 if any(r["status"] == "failed" for r in smoke.results) else 0


if __name__ == "__main__":
    sys.exit(main())
