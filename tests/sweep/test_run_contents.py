"""What a trial's run holds besides its metrics, against a real MLflow store: its
models, which take raw pixels and load in a fresh process with no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bopsweep.sweep import mlflow_client, mlflow_runs
from bopsweep.sweep.run_contents import ModelKeeper
from bopsweep.sweep.tracking import TrialTracker


@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _parent(uri: str) -> tuple[str, str]:
    return mlflow_runs.start_parent_run(
        uri, "models-test", "sweep", tags={}, params={}, artifacts={}
    )


def test_final_and_best_models_are_mlflow_models(store, tmp_path, monkeypatch):
    import mlflow.pytorch
    import torch

    from bopsweep.config import TrainConfig
    from bopsweep.train import Callback, Trainer

    monkeypatch.chdir(tmp_path)  # MLflow's local artifact store goes here
    exp_id, parent = _parent(store)
    config = TrainConfig.model_validate(
        {"model": "mlp", "dataset": "digits", "epochs": 2, "device": "cpu"}
    )
    trainer = Trainer(config)
    tracker = TrialTracker(store, exp_id, parent, 0, "t0")

    keeper = ModelKeeper(tracker, ["final", "best"])

    class Log(Callback):
        def on_epoch_end(self, trainer, members):
            (metrics,) = members
            tracker.log_epoch(metrics, step=int(metrics["epoch"]))
            keeper.after_epoch(trainer, trainer.epoch >= trainer.hparams.epochs)

    trainer.fit([Log()])
    assert tracker.finish("FINISHED"), tracker.job_errors
    run = mlflow_client.client(store).get_run(tracker.run_id)
    raw = trainer.data.val_x[:5].clone()
    for name in ("final_model", "best_model"):
        uri = run.data.tags[f"bopsweep.model.{name}"]
        with mlflow_client.fluent_target(store):  # where models:/ URIs resolve
            model = mlflow.pytorch.load_model(uri)
            info = mlflow.models.get_model_info(uri)
        # The signature and the example say what a user feeds it: the raw pixels.
        assert info.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
        assert info.saved_input_example_info is not None
        assert "raw pixel values in [0, 16]" in info.metadata["input"]
        with torch.no_grad():
            assert model(raw).shape == (5, 10)
        assert torch.equal(raw, trainer.data.val_x[:5])  # the input is left as it was
        # MLflow 3's logged models belong to an experiment: the sweep's, where its
        # Models tab lists them (not "Default").
        logged = mlflow_client.client(store).get_logged_model(uri.rpartition("/")[2])
        assert logged.experiment_id == exp_id
    # In a fresh process that sees no GPU, through models:/ as a user loads it, the
    # raw validation digits are classified as the trial scored them.
    script = (
        "import json, sys, mlflow.pytorch, torch\n"
        "from bopsweep.data import load_dataset\n"
        "data = load_dataset('digits')\n"
        "out = {}\n"
        "for name, uri in json.loads(sys.argv[1]).items():\n"
        "    model = mlflow.pytorch.load_model(uri)\n"
        "    with torch.no_grad():\n"
        "        predicted = model(data.val_x).argmax(-1)\n"
        "    out[name] = (predicted == data.val_y).double().mean().item()\n"
        "print(json.dumps(out))\n"
    )
    uris = {name: run.data.tags[f"bopsweep.model.{name}"] for name in ("final_model", "best_model")}
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(uris)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = json.loads(done.stdout.strip().splitlines()[-1])
    one_image = 1 / len(trainer.data.val_y)
    assert accuracy["final_model"] == pytest.approx(run.data.metrics["val_accuracy"], abs=one_image)
    assert accuracy["best_model"] == pytest.approx(
        run.data.metrics["best_val_accuracy"], abs=one_image
    )
    assert tracker.job_errors == []
    # Nothing of the sweep's store is left for processes started later to inherit.
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ
