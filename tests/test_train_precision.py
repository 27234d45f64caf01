"""The training loop's speed options: bf16 autocast, channels_last for conv nets and
torch.compile. Whatever the option, binary weights and Bop's state stay float32 and
the weights exactly +-1, checkpoints keep working, and a bf16 run still learns."""

from __future__ import annotations

import pytest
import torch

from bopsweep.bnn.layers import binary_parameters
from bopsweep.config import make_train_config
from bopsweep.data import make_synthetic
from bopsweep.train import Trainer, train

CPU = torch.device("cpu")


def _binarynet(**options) -> Trainer:
    config = make_train_config(
        model="binarynet",
        dataset="synthetic",
        preprocess_fn="resize_and_flip",
        hparams_set="bop",
        epochs=1,
        device="cpu",
        **options,
    )
    # One batch of 16 CIFAR-shaped images per epoch: a couple of real steps, quickly.
    return Trainer(config, make_synthetic(n_train=16, n_val=8), device=CPU)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_binary_weights_stay_float32_and_exactly_plus_minus_one(precision):
    trainer = _binarynet(precision=precision)
    assert trainer.channels_last
    initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.fit()
    trainer.train_epoch()
    binary = binary_parameters(trainer.model)
    assert len(binary) == 9
    flipped = 0
    for name, param in trainer.model.named_parameters():
        assert param.dtype == torch.float32, name
        if param.dim() == 4:
            assert param.is_contiguous(memory_format=torch.channels_last), name
    for param in binary:
        assert torch.all(param.abs() == 1.0)
        assert param.grad is not None and param.grad.dtype == torch.float32
        state = trainer.optimizer.binary.state[param]
        assert state["m"].dtype == torch.float32
        name = next(n for n, p in trainer.model.named_parameters() if p is param)
        flipped += int((param != initial[name]).sum())
    assert flipped > 0  # Bop did flip weights
    # The real-valued parameters (BatchNorm shifts) moved as well.
    assert not torch.equal(trainer.model.bn1.bias, initial["bn1.bias"])
    metrics = trainer.history[-1]
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


def test_checkpoints_round_trip_with_channels_last_and_bf16():
    trainer = _binarynet(precision="bf16")
    trainer.fit()
    state = trainer.state_dict()
    again = _binarynet(precision="bf16")
    again.load_state_dict(state)
    pairs = zip(trainer.model.named_parameters(), again.model.parameters(), strict=True)
    for (name, a), b in pairs:
        assert torch.equal(a, b), name
        assert a.stride() == b.stride(), name
    for p, q in zip(binary_parameters(trainer.model), binary_parameters(again.model), strict=True):
        state_p = trainer.optimizer.binary.state[p]["m"]
        assert torch.equal(state_p, again.optimizer.binary.state[q]["m"])


def test_bf16_training_on_digits_still_learns():
    config = make_train_config(
        model="mlp", dataset="digits", hparams_set="bop", epochs=5, device="cpu", precision="bf16"
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(config, device=CPU)
    finally:
        torch.set_num_threads(previous)
    assert result.final["val_accuracy"] >= 0.9, result.final


def test_mlp_is_not_switched_to_channels_last():
    config = make_train_config(model="mlp", dataset="synthetic", epochs=1, device="cpu")
    trainer = Trainer(config, make_synthetic(shape=(1, 8, 8), n_train=64, n_val=8), device=CPU)
    assert not trainer.channels_last


def test_compile_trains_and_keeps_plain_state_dict_keys():
    config = make_train_config(
        model="mlp", dataset="synthetic", hparams_set="bop", epochs=1, device="cpu", compile=True
    )
    data = make_synthetic(shape=(1, 8, 8), num_classes=2, n_train=64, n_val=16)
    trainer = Trainer(config, data, device=CPU)
    plain = Trainer(config.model_copy(update={"compile": False}), data, device=CPU)
    trainer.fit()
    assert set(trainer.state_dict()["model"]) == set(plain.state_dict()["model"])
    for param in binary_parameters(trainer.model):
        assert torch.all(param.abs() == 1.0)
    assert torch.isfinite(torch.tensor(trainer.history[-1]["val_loss"]))
