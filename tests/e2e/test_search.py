"""A Bayesian search through real Ray Tune into a real MLflow server: Optuna
proposes each trial while the sweep runs, W&B's early_terminate stops poor ones,
and the leaderboard comes back as JSON."""

from __future__ import annotations

import json
import math

import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import bopsweep

pytestmark = pytest.mark.e2e

SPEC = """\
# yaml-language-server: $schema=schema.json
name: bayes-digits
train: {model: mlp, dataset: digits, hparams_set: bop, epochs: 3, max_train_samples: 600}
method: bayes
num_samples: 2
seeds: [0, 1]
parameters:
  hparams.gamma: {distribution: log_uniform, min: -9.2, max: -4.6}
  hparams.threshold: {values: [0, 1e-6]}
metric: {name: val_accuracy, goal: maximize}
early_terminate: {type: hyperband, min_iter: 1, eta: 2}
max_concurrent_trials: 2
checkpoint: {every_s: null}
"""


def test_bayes_search_with_early_termination(mlflow_server, workdir):
    spec = workdir / "bayes.yaml"
    spec.write_text(SPEC)
    experiment = "e2e-bayes-from-env"
    result = bopsweep(
        "run",
        str(spec),
        "--json",
        cwd=workdir,
        env={"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_EXPERIMENT_NAME": experiment},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # stdout is the JSON alone; the live table and the leaderboard went to stderr.
    outcome = json.loads(result.stdout)
    assert "leaderboard" in result.stderr
    assert outcome["sweep"] == "bayes-digits" and outcome["mode"] == "max"
    assert outcome["counts"]["FINISHED"] == 4 and not outcome["interrupted"]
    board = outcome["leaderboard"]
    assert [row["rank"] for row in board] == [1, 2, 3, 4]
    assert sorted(row["trial"] for row in board) == [0, 1, 2, 3]
    best = [row["best_val_accuracy"] for row in board]
    assert best == sorted(best, reverse=True)
    by_trial = {row["trial"]: row["swept"] for row in board}
    for index, swept in by_trial.items():
        assert math.exp(-9.2) <= swept["hparams.gamma"] <= math.exp(-4.6)
        assert swept["hparams.threshold"] in (0, 1e-6)
        assert swept["seed"] == [0, 1][index % 2]
    # Each proposal is trained once per seed (Ray Tune's Repeater).
    for first in (0, 2):
        a, b = by_trial[first], by_trial[first + 1]
        assert {k: v for k, v in a.items() if k != "seed"} == {
            k: v for k, v in b.items() if k != "seed"
        }

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "MLFLOW_EXPERIMENT_NAME was not honoured"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4
    for child in children:
        index = int(child.data.tags["bopsweep.trial_key"].rpartition(":")[2])
        assert float(child.data.tags["swept.hparams.gamma"]) == pytest.approx(
            by_trial[index]["hparams.gamma"]
        )
        assert float(child.data.params["hparams.gamma"]) == pytest.approx(
            by_trial[index]["hparams.gamma"]
        )

    report = bopsweep(
        "report",
        "bayes-digits",
        "--json",
        "--no-log-to-parent",
        "--out",
        str(workdir / "report"),
        cwd=workdir,
        env={"MLFLOW_TRACKING_URI": mlflow_server.uri},
    )
    assert report.returncode == 0, report.stderr[-3000:]
    again = json.loads(report.stdout)
    assert again["parent_run_id"] == outcome["parent_run_id"]
    assert [r["trial"] for r in again["leaderboard"]] == [r["trial"] for r in board]
    assert any(path.endswith("leaderboard.csv") for path in again["files"])
