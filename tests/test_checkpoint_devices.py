"""A checkpoint written by a GPU run resumes where there is no GPU.

``torch.save`` records each tensor's device; ``torch.load`` puts it back there unless
told otherwise, and a CUDA location on a machine without CUDA is an error. The test
writes a real trainer's checkpoint as a GPU run's would read (every storage tagged
``cuda:0``), so the load is exercised on any machine.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from torch import serialization

from bopsweep.config import make_train_config
from bopsweep.local_run import CHECKPOINT_FILE, _resume_state
from bopsweep.train import Trainer


@contextlib.contextmanager
def saved_as_on_cuda():
    """``torch.save`` tags CPU tensors ``cuda:0``, as it tags a GPU run's tensors."""

    def tagger(storage):
        return "cuda:0" if storage.device.type == "cpu" else None

    def deserializer(storage, location):
        return None  # loading is left to torch's own deserializers

    entry = (-1, tagger, deserializer)  # before torch's own taggers (cpu: 10)
    serialization._package_registry.append(entry)
    serialization._package_registry.sort(key=lambda e: e[0])
    try:
        yield
    finally:
        serialization._package_registry.remove(entry)


def _trainer() -> Trainer:
    config = make_train_config(
        model="mlp", dataset="digits", hparams_set="bop", epochs=1, device="cpu"
    )
    return Trainer(config)


def test_a_gpu_runs_checkpoint_resumes_on_the_cpu(tmp_path: Path, one_thread):
    trainer = _trainer()
    trainer.train_epoch()
    trainer.epoch = 1
    with saved_as_on_cuda():
        torch.save(trainer.state_dict(), tmp_path / CHECKPOINT_FILE)
    if not torch.cuda.is_available():
        # What a plain torch.load does with it here.
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)

    state = _resume_state(tmp_path, {})
    generators = list(state["generators"].values())
    tensors = [*state["model"].values(), *generators, state["torch_rng"]]
    assert all(t.device.type == "cpu" for t in tensors)
    resumed = _trainer()
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_a_trial_checkpoint_written_on_a_gpu_loads_on_the_cpu(tmp_path):
    from ray import tune

    from bopsweep.sweep.trainable import STATE_FILE, _load_state

    trainer = _trainer()
    with saved_as_on_cuda():
        torch.save(trainer.state_dict(), tmp_path / STATE_FILE)
    state = _load_state(tune.Checkpoint.from_directory(tmp_path))
    tensors = [*state["model"].values(), *state["generators"].values(), state["torch_rng"]]
    assert all(t.device.type == "cpu" for t in tensors)


def test_a_gpu_runs_batch_order_state_resumes_on_the_cpu(tmp_path, one_thread):
    """A GPU run's data generator is CUDA's Philox (seed and offset, 16 bytes), which
    the CPU's Mersenne Twister cannot take: the resume draws a new stream from it, the
    same on every resume of that checkpoint."""
    trainer = _trainer()
    trainer.train_epoch()
    trainer.epoch = 0
    state = trainer.state_dict()
    seed_and_offset = torch.tensor([1234, 5678], dtype=torch.int64)
    philox = seed_and_offset.view(torch.uint8)
    assert philox.numel() == 16
    state["generators"] = {s: philox.clone() for s in state["generators"]}
    with saved_as_on_cuda():
        torch.save(state, tmp_path / CHECKPOINT_FILE)
    histories = []
    for _ in range(2):
        resumed = _trainer()
        resumed.load_state_dict(_resume_state(tmp_path, {}))
        resumed.fit()
        histories.append(
            [
                {k: v for k, v in m.items() if "time" not in k and "per_s" not in k}
                for m in resumed.history
            ]
        )
    assert len(histories[0]) == 1
    assert histories[0] == histories[1]
