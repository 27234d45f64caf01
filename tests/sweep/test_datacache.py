"""The node's shared dataset copy, on a real local Ray instance: trials get the same
data as loading it themselves, from one load, mapped from the object store."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from bopsweep.config import TrainConfig
from bopsweep.sweep import datacache
from tests.conftest import make_tiny_cifar10


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return make_tiny_cifar10(tmp_path_factory.mktemp("data"), per_batch=20, n_test=10)


def _config(cifar, dataset: str = "cifar10") -> TrainConfig:
    return TrainConfig(model="mlp", dataset=dataset, data_dir=str(cifar.data_dir))


@ray.remote(num_cpus=1)
def _in_a_trial(sweep_id: str, config: TrainConfig):
    """What a trial on this node sees: the arrays, and whether two asks share memory."""
    first = datacache.shared_dataset(sweep_id, config)
    if first is None:
        return None
    second = datacache.shared_dataset(sweep_id, config)
    same_memory = first.train_x.data_ptr() == second.train_x.data_ptr()
    return {
        "train_x": first.train_x.numpy().copy(),
        "train_y": first.train_y.numpy().copy(),
        "val_x": first.val_x.numpy().copy(),
        "num_classes": first.num_classes,
        "same_memory": same_memory,
    }


def test_trials_get_the_dataset_from_one_load_on_their_node(local_ray, cifar):
    actors = datacache.start("sweep-a", {"cifar10"})
    try:
        assert len(actors) == 1  # one node
        got = ray.get([_in_a_trial.remote("sweep-a", _config(cifar)) for _ in range(2)])
        for trial in got:
            assert trial is not None
            np.testing.assert_array_equal(trial["train_x"].reshape(-1, 3072), cifar.train_rows)
            np.testing.assert_array_equal(trial["train_y"], cifar.train_labels)
            np.testing.assert_array_equal(trial["val_x"].reshape(-1, 3072), cifar.test_rows)
            assert trial["num_classes"] == 10
            # Asked twice in one process: the same object-store memory, not a copy.
            assert trial["same_memory"]
        # Both asks were answered from the one load: the same objects.
        args = ("cifar10", str(cifar.data_dir), False)
        _, refs_1 = ray.get(actors[0].get.remote(*args))
        _, refs_2 = ray.get(actors[0].get.remote(*args))
        assert [r.hex() for r in refs_1.values()] == [r.hex() for r in refs_2.values()]
    finally:
        datacache.stop(actors)


def test_without_a_node_copy_the_trial_loads_its_own(local_ray, cifar):
    # Another sweep's id: no actor by that name.
    assert ray.get(_in_a_trial.remote("no-such-sweep", _config(cifar))) is None
    # Small generated datasets are not worth an actor per node.
    assert datacache.start("sweep-b", {"digits", "synthetic"}) == []
    assert ray.get(_in_a_trial.remote("sweep-b", _config(cifar, "digits"))) is None


def test_a_dataset_that_fails_to_load_falls_back_to_the_trial(local_ray, tmp_path):
    actors = datacache.start("sweep-c", {"cifar10"})
    try:
        broken = TrainConfig(model="mlp", dataset="cifar10", data_dir=str(tmp_path / "none"))
        # The trial then loads it itself, and reports the missing files as usual.
        assert ray.get(_in_a_trial.remote("sweep-c", broken)) is None
    finally:
        datacache.stop(actors)
