"""Every shipped sweep runs end to end in a smoke form: each trial of its real grid,
one epoch on small data, through Ray Tune into an MLflow store.

CIFAR-10 sweeps run on a tiny CIFAR-10 folder of generated python batches (read
once per node and shared by the trials), ImageNet sweeps on a tiny ImageNet folder
of generated JPEGs; digits is bundled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from bopsweep.sweep.runner import RunOptions, run_sweep
from bopsweep.sweep.spec import load_spec
from tests.conftest import make_tiny_cifar10
from tests.e2e.conftest import REPO

pytestmark = pytest.mark.e2e

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
COMMON = [
    "train.epochs=1",
    "train.device=cpu",
    "resources.gpu=0",
    "resources.cpu=1",
    "max_concurrent_trials=2",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A data folder with a tiny CIFAR-10 (8 images per batch) and ImageNet."""
    root = tmp_path_factory.mktemp("data")
    make_tiny_cifar10(root, per_batch=8, n_test=10)
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            folder = root / "imagenet2012" / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", format="JPEG")
    return root


def smoke_overrides(path: Path, data_dir: Path) -> list[str]:
    dataset = load_spec(path).spec.train.dataset
    if dataset == "imagenet2012":
        return [f"train.data_dir={data_dir}", "train.hparams.batch_size=2"]
    if dataset == "cifar10":
        return [f"train.data_dir={data_dir}"]
    return ["train.max_train_samples=128"]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_runs_end_to_end(path, local_ray, tiny_data, tmp_path, monkeypatch):
    # As a user runs it, in a folder of its own: MLflow's artifacts go to ./mlruns.
    monkeypatch.chdir(tmp_path)
    overrides = [*COMMON, *smoke_overrides(path, tiny_data)]
    loaded = load_spec(path, overrides)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_sweep(loaded, RunOptions(tracking_uri=uri, storage=str(tmp_path / "results")))
    assert not outcome.interrupted and outcome.tracking_error is None and not outcome.stopped
    assert [t.status for t in outcome.trials] == ["FINISHED"] * len(outcome.trials), [
        (t.name, t.error) for t in outcome.failed
    ]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(loaded.spec.experiment)
    children = client.search_runs([exp.experiment_id], "tags.`bopsweep.role` = 'trial'")
    assert len(children) == len(outcome.trials) >= 1
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [0]
        # CIFAR-10 is read once on the node and shared; the others are each trial's own.
        copy = "node" if loaded.spec.train.dataset == "cifar10" else "trial"
        assert child.data.tags["bopsweep.dataset_copy"].startswith(copy)
