"""The training loop's speed options: bf16 autocast, channels_last for conv nets and
torch.compile. Whatever the option, binary weights and Bop's state stay float32 and
the weights exactly +-1, checkpoints keep working, and a bf16 run still learns.
``precision: auto`` picks bf16 only where it is native (the probe is overridden here
with ``BOPSWEEP_NATIVE_BF16``, so both kinds of machine are tested on either)."""

from __future__ import annotations

import math
import platform
import warnings

import pytest
import torch

from bopsweep.bnn.layers import binary_parameters
from bopsweep.config import make_train_config
from bopsweep.data import make_synthetic
from bopsweep.errors import UserError
from bopsweep.precision import NATIVE_BF16_ENV, _cpu_flags, _warn_not_native, native_bf16
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
    assert all(torch.isfinite(torch.tensor(v)).all() for v in metrics.values())


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


# ------------------------------------------------------------- precision "auto"
@pytest.fixture
def native(monkeypatch):
    """Set whether bf16 counts as native, whatever this machine's CPU does, and let
    the once-per-process warning be seen again."""
    _warn_not_native.cache_clear()

    def set_native(value: bool) -> None:
        monkeypatch.setenv(NATIVE_BF16_ENV, "1" if value else "0")

    yield set_native
    _warn_not_native.cache_clear()


def _mlp(**options) -> Trainer:
    config = make_train_config(
        model="mlp", dataset="synthetic", hparams_set="bop", epochs=1, device="cpu", **options
    )
    return Trainer(config, make_synthetic(shape=(1, 8, 8), n_train=64, n_val=8), device=CPU)


def test_auto_is_the_default():
    assert make_train_config(model="mlp", dataset="digits").precision == "auto"


def test_auto_is_fp32_where_bf16_is_not_native(native):
    native(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        trainer = _binarynet()
    assert trainer.precision == "fp32"
    assert not trainer._autocast()._enabled


def test_auto_is_bf16_for_a_conv_net_where_bf16_is_native(native):
    native(True)
    trainer = _binarynet()
    assert trainer.precision == "bf16"
    assert trainer._autocast()._enabled
    trainer.fit()
    assert all(torch.all(p.abs() == 1.0) for p in binary_parameters(trainer.model))


def test_auto_keeps_the_dense_only_mlp_in_fp32_even_where_bf16_is_native(native):
    native(True)
    assert _mlp().precision == "fp32"
    # Asked for explicitly, bf16 is what it gets.
    assert _mlp(precision="bf16").precision == "bf16"


def test_explicit_precisions_are_obeyed(native):
    native(True)
    assert _binarynet(precision="fp32").precision == "fp32"
    assert _binarynet(precision="bf16").precision == "bf16"


def test_explicit_bf16_where_not_native_warns_once_and_still_runs(native):
    native(False)
    with pytest.warns(RuntimeWarning, match="no native bfloat16") as caught:
        trainer = _mlp(precision="bf16")
    assert len(caught) == 1
    assert trainer.precision == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: the second run is quiet
        again = _mlp(precision="bf16")
    again.fit()
    assert math.isfinite(again.history[-1]["train_loss"])


def test_explicit_bf16_where_native_does_not_warn(native):
    native(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _mlp(precision="bf16").precision == "bf16"


def test_an_unknown_precision_is_a_user_error_naming_the_choices():
    with pytest.raises(UserError) as error:
        make_train_config(model="mlp", dataset="digits", precision="fp16")
    message = str(error.value)
    assert message.startswith("precision:")
    for choice in ("'auto'", "'fp32'", "'bf16'"):
        assert choice in message


@pytest.mark.parametrize("value", ["0", "1"])
def test_the_environment_overrides_the_probe_on_every_device(monkeypatch, value):
    monkeypatch.setenv(NATIVE_BF16_ENV, value)
    assert native_bf16("cpu") is (value == "1")
    assert native_bf16("cuda") is (value == "1")


def test_the_cpu_probe_agrees_with_the_cpu_flags(monkeypatch):
    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)
    flags = _cpu_flags()
    if platform.machine() != "x86_64" or not flags:
        pytest.skip("needs /proc/cpuinfo of an x86-64 CPU")
    assert native_bf16("cpu") is bool(flags & {"avx512_bf16", "amx_bf16"})
