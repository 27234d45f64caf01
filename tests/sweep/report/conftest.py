"""A real MLflow store (sqlite) filled with synthetic sweeps shaped like the ones
``bopsweep run`` writes, shared by the report's tests: every number in a report is
checked against what MlflowClient returns for these runs."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from bopsweep.sweep.report import write_report

THRESHOLDS = [0.0, 1e-6, 1e-5]
GAMMAS = [1e-2, 1e-3, 1e-4]
SEEDS = [0, 1]
EPOCHS = 4
STEPS = 5  # optimizer steps per epoch of the per-step flip series


def epoch_metrics(threshold: float, gamma: float, seed: int, epochs: int) -> list[dict]:
    """Distinct, plausible curves: more flips with higher gamma and lower threshold."""
    flips = gamma * 10 / (1 + threshold * 1e6) * (1 + 0.1 * seed)
    out = []
    for epoch in range(epochs):
        val = 0.6 + 0.3 * (1 - math.exp(-epoch)) - 5 * gamma - 3e3 * threshold + 0.01 * seed
        ratio = flips / (1 + epoch)
        # The last layer per step, as the trainer reports it: [step, log ratio] pairs.
        steps = [
            [epoch * STEPS + i, math.log(ratio * (0.8 + 0.1 * i) + math.exp(-9))]
            for i in range(STEPS)
        ]
        out.append(
            {
                "train_accuracy": val + 0.02,
                "val_accuracy": val + 0.001 * (epoch % 2),
                "flip_ratio": ratio,
                "log_flip_ratio": math.log(ratio + math.exp(-9)),
                "log_flip_ratio_last": steps,
                "epoch": float(epoch),
            }
        )
    return out


class Store:
    """A sqlite MLflow store, helpers to write sweeps into it as the runner does, and
    to read runs back the plain MlflowClient way (what the report must agree with)."""

    # The grid sweep's values, for the tests to check the report against.
    thresholds, gammas, seeds, epochs = THRESHOLDS, GAMMAS, SEEDS, EPOCHS

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)

    def experiment(self, name: str) -> str:
        existing = self.client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        location = (self.root / "artifacts" / name).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def parent(self, experiment: str, name: str, *, start_time: int | None = None, **params):
        run = self.client.create_run(
            self.experiment(experiment),
            run_name=name,
            start_time=start_time,
            tags={"bopsweep.sweep": name, "bopsweep.role": "sweep"},
        )
        values = {"name": name, "metric.name": "val_accuracy", "metric.mode": "max", **params}
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in values.items()])
        return run

    def child(self, parent, index: int, swept: dict, epochs: list[dict], status="FINISHED"):
        values = " ".join(f"{k.removeprefix('hparams.')}={v:g}" for k, v in swept.items())
        run = self.client.create_run(
            parent.info.experiment_id,
            run_name=f"trial_{index:03d} {values}",
            tags={
                "mlflow.parentRunId": parent.info.run_id,
                "bopsweep.trial_key": f"{parent.info.run_id}:{index}",
                "bopsweep.role": "trial",
                **{f"swept.{k}": str(v) for k, v in swept.items()},
            },
        )
        now = int(time.time() * 1000)
        # As the trial's tracker logs them: a list value is a per-step series.
        metrics = [
            Metric(key, value, now, at)
            for step, row in enumerate(epochs)
            for key, v in row.items()
            for at, value in (v if isinstance(v, list) else [(step, v)])
        ]
        self.client.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=[Param(k.removeprefix("swept."), str(v)) for k, v in swept.items()],
            tags=[RunTag("bopsweep.hostname", "test")],
        )
        if status != "RUNNING":
            self.client.set_terminated(run.info.run_id, status)
        return run

    def children(self, parent_run_id: str) -> list:
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(
            experiments, f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
        )

    def history(self, run_id: str, key: str) -> list[float]:
        metrics = self.client.get_metric_history(run_id, key)
        return [m.value for m in sorted(metrics, key=lambda m: m.step)]


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Store:
    """Sweeps of every shape the report handles, in one store (created once: slow)."""
    store = Store(tmp_path_factory.mktemp("mlflow"))
    # The 3x3 grid with two seeds, in the runner's order (threshold slowest, seed last).
    grid = store.parent("grid", "grid")
    index = 0
    for threshold in THRESHOLDS:
        for gamma in GAMMAS:
            for seed in SEEDS:
                swept = {"hparams.threshold": threshold, "hparams.gamma": gamma, "seed": seed}
                store.child(grid, index, swept, epoch_metrics(threshold, gamma, seed, EPOCHS))
                index += 1
    # The same name twice in one experiment: the latest parent run is the sweep.
    old = store.parent("dup", "dup", start_time=1_000)
    store.child(old, 0, {"hparams.gamma": 1e-2}, epoch_metrics(0, 1e-2, 0, 2))
    new = store.parent("dup", "dup", start_time=2_000_000)
    for i, gamma in enumerate([1e-3, 1e-4]):
        store.child(new, i, {"hparams.gamma": gamma}, epoch_metrics(1e-6, gamma, 0, 3))
    # A sweep whose experiment is not named like it, one trial still running, one
    # failed before its first epoch, and a minimised metric.
    other = store.parent(
        "elsewhere", "partial", **{"metric.name": "val_loss", "metric.mode": "min"}
    )
    for i, gamma in enumerate([1e-2, 1e-3, 1e-4]):
        epochs = [
            {**m, "val_loss": 1 - m["val_accuracy"]} for m in epoch_metrics(1e-6, gamma, 0, 3)
        ]
        status = ["FINISHED", "RUNNING", "FAILED"][i]
        store.child(other, i, {"hparams.gamma": gamma}, epochs if i < 2 else [], status)
    # Random search: scattered points, no grid.
    scattered = store.parent("random", "random")
    for i, (threshold, gamma) in enumerate([(3e-7, 2e-3), (4e-6, 7e-4), (1e-8, 5e-3)]):
        swept = {"hparams.threshold": threshold, "hparams.gamma": gamma}
        store.child(scattered, i, swept, epoch_metrics(threshold, gamma, 0, 3))
    return store


@pytest.fixture(scope="session")
def grid_report(store, tmp_path_factory):
    """The grid sweep's report, logged to its parent run."""
    out = tmp_path_factory.mktemp("report") / "grid"
    return write_report(store.uri, "grid", out)
