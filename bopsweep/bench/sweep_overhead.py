"""Bench section ``sweep_overhead``: what a sweep costs on top of its trials' training.

A real sweep (Ray Tune + MLflow, ``run_sweep`` as ``bopsweep run`` calls it) against
the same trials' ``train()`` called one after the other; the sweep's peak memory
(driver plus Ray processes) is sampled on the way for the ``memory`` section.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from bopsweep.bench.common import (
    Context,
    Row,
    RssSampler,
    mib,
    quickstart_spec_path,
    target,
    threads,
)


def measure(context: Context) -> dict[str, Any]:
    import ray

    from bopsweep.sweep import mlflow_client
    from bopsweep.sweep.runner import RunOptions, run_sweep
    from bopsweep.sweep.spec import expand, load_spec
    from bopsweep.train import train

    plan, workdir = context.plan, context.workdir
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
    with threads(max(1, int(cpus))):
        for trial in trials:
            start = time.perf_counter()
            train(trial.train, device=torch.device("cpu"))
            direct.append(time.perf_counter() - start)

    uri = f"sqlite:///{workdir / 'sweep-mlflow.db'}"
    start = time.perf_counter()
    started_ms = time.time() * 1000
    try:
        with RssSampler() as sampler:
            options = RunOptions(tracking_uri=uri, storage=str(workdir / "sweep-storage"))
            outcome = run_sweep(loaded, options)
            wall = time.perf_counter() - start
            # run_sweep stops the local Ray it started, whose CPUs are this machine's.
            if ray.is_initialized():
                node_cpus = ray.cluster_resources().get("CPU", 1.0)
            else:
                node_cpus = float(os.cpu_count() or 1)
    finally:
        ray.shutdown()
    failed = [trial.index for trial in outcome.failed]
    if failed:
        raise RuntimeError(f"bench sweep trials {failed} did not finish")
    concurrency = max(1, min(len(trials), math.floor(node_cpus / cpus)))
    if loaded.spec.max_concurrent_trials:
        concurrency = min(concurrency, loaded.spec.max_concurrent_trials)
    ideal = sum(direct) / concurrency
    runs = mlflow_client.child_runs(
        mlflow_client.client(uri), outcome.experiment_id, outcome.parent_run_id
    )
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
        "peak_rss_total_mb": mib(sampler.peak_total),
        "peak_rss_driver_mb": mib(sampler.peak_driver),
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


def rows(section: dict[str, Any]) -> list[Row]:
    return [
        (
            "sweep_overhead",
            f"{section['trials']} trials x {section['epochs_per_trial']} epochs",
            f"wall {section['wall_s']:.1f} s, ideal {section['ideal_s']:.1f} s, "
            f"start-up {section['startup_s']:.1f} s",
            "",
            "",
        )
    ]
