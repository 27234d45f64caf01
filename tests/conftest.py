"""Fixtures shared by the core tests: a tiny CIFAR-10 on disk in the real
python-batches format, and the Larq-style "a BNN trains" check used for every
optimizer variant; and how the suite is spread over pytest-xdist's workers."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from bopsweep.bnn.layers import binary_parameters
from bopsweep.config import make_train_config
from bopsweep.data import CIFAR10_FILES, make_synthetic
from bopsweep.testing import write_cifar10_batch
from bopsweep.train import Callback, Trainer, train


@dataclass
class TinyCifar10:
    """A generated CIFAR-10 folder and the arrays written into it."""

    data_dir: Path  # the parent of cifar-10-batches-py, as --data-dir expects
    folder: Path
    train_rows: np.ndarray  # (N, 3072) uint8, batches 1..5 concatenated
    train_labels: np.ndarray
    test_rows: np.ndarray
    test_labels: np.ndarray


TESTS = Path(__file__).resolve().parent

# Session fixtures that each xdist worker may start for itself: a server on its own
# port and store costs a few seconds, less than keeping every test that uses it on
# one worker would.
_PER_WORKER = {"mlflow_server", "auth_server", "s3_server", "cifar10_factory", "private_cache"}


def _shared_scope(item: pytest.Item) -> str | None:
    """Where the widest costly fixture ``item`` uses is shared: its module for a
    module-scoped fixture, the defining conftest's folder for a session-scoped one."""
    shared = None
    for name, definitions in item._fixtureinfo.name2fixturedefs.items():
        definition = definitions[-1]
        source = Path(inspect.getfile(definition.func)).resolve()
        if name in _PER_WORKER or not source.is_relative_to(TESTS):
            continue  # pytest's own fixtures (tmp_path_factory, ...) cost nothing
        if definition.scope == "session":
            return f"session:{source.parent.relative_to(TESTS)}"
        if definition.scope in ("package", "module", "class"):
            shared = f"module:{item.nodeid.split('::')[0]}"
    return shared


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core, at most four. Most of the suite's time is end-to-end
    sweeps, each already two trial processes beside Ray's and MLflow's; more workers
    than that only add memory and contention."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU
    cores = len(affinity(0)) if affinity else os.cpu_count() or 1
    return min(cores, 4)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (pyproject's default), tests that share an expensive
    fixture run on one worker, so it is built once (the quick bench's run, a Ray
    cluster); every other test goes to whichever worker is free. A test that reads the
    quick bench is end to end (that bench runs real sweeps: Ray, MLflow, the CLI)."""
    for item in items:
        if "quick_bench" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
        group = _shared_scope(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The suite never reads or writes this user's bopsweep cache (the fusion gains
    `bench` records, MLflow's empty-store template): what it finds there would change
    what `fuse: auto` decides, and the quick bench would overwrite the user's figures."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


def make_tiny_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_rows, train_labels = [], []
    for name in CIFAR10_FILES:
        n = n_test if name == "test_batch" else per_batch
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        write_cifar10_batch(folder / name, rows, labels, name)
        if name == "test_batch":
            test_rows, test_labels = rows, labels
        else:
            train_rows.append(rows)
            train_labels.append(labels)
    return TinyCifar10(
        root,
        folder,
        np.concatenate(train_rows),
        np.concatenate(train_labels),
        test_rows,
        test_labels,
    )


@pytest.fixture
def one_thread():
    """Run on one thread: the small models here gain nothing from more, and on a busy
    machine two OpenMP threads spin-waiting for each other make a training loop of
    small ops tens of times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray instance (2 CPUs), started as a local sweep starts it, for a
    test module; run_sweep and the tests' own tasks use it as it is."""
    from bopsweep.sweep import ray_backend

    ray_backend.init_local(num_cpus=2, logging_level="ERROR")
    yield
    ray_backend.shutdown()


@pytest.fixture
def tiny_cifar10(tmp_path: Path) -> TinyCifar10:
    return make_tiny_cifar10(tmp_path / "data")


@pytest.fixture(scope="session")
def cifar10_factory() -> Callable[..., TinyCifar10]:
    """``make_tiny_cifar10`` for fixtures of a wider scope than ``tmp_path``."""
    return make_tiny_cifar10


# Which hparams set of the mlp each variant starts from, and what it overrides.
VARIANTS = {
    "bop": ("bop", {}),
    "bop2": ("bop", {"optimizer": "bop2"}),
    "bop2_unbiased": ("bop", {"optimizer": "bop2_unbiased"}),
    "latent": ("default", {}),
}


class _Snapshot(Callback):
    """Keeps the parameters at the start and the trainer itself, for the checks."""

    def on_train_start(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def assert_bnn_trains(variant: str, accuracy_bar: float = 0.75) -> None:
    """Larq's optimizer check: a small BNN trained for 2 epochs on learnable data
    moves every parameter, keeps binary weights exactly +-1 (latent weights: inside
    [-1, 1]) and reaches ``accuracy_bar`` training accuracy."""
    hparams_set, overrides = VARIANTS[variant]
    config = make_train_config(
        model="mlp",
        dataset="synthetic",
        hparams_set=hparams_set,
        hparams=overrides,
        epochs=2,
        seed=0,
        device="cpu",
    )
    data = make_synthetic(shape=(1, 8, 8), num_classes=2, n_train=512, n_val=128, seed=0)
    snapshot = _Snapshot()
    result = train(config, [snapshot], data=data, device=torch.device("cpu"))
    assert result.hparams.optimizer == variant
    model = snapshot.trainer.model

    for name, param in model.named_parameters():
        assert not torch.equal(param, snapshot.initial[name]), f"{name} did not move"
    binary = binary_parameters(model)
    assert len(binary) == 3
    for param in binary:
        if variant == "latent":
            assert param.abs().max() <= 1.0
            assert not torch.all(param.abs() == 1.0)  # real-valued, not binary
        else:
            assert torch.all(param.abs() == 1.0)
    assert result.final["train_accuracy"] >= accuracy_bar, result.final


@pytest.fixture
def check_bnn_trains() -> Callable[[str], None]:
    return assert_bnn_trains
