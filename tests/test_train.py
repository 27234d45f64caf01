"""The training loop: per-epoch metrics, divergence, resuming, determinism, and the
digits reference run."""

from __future__ import annotations

import io
import math
import time

import pytest
import torch

from bopsweep.bnn.layers import binary_layers
from bopsweep.bnn.optim import Bop, Bop2ndOrder
from bopsweep.config import make_train_config
from bopsweep.data import make_synthetic
from bopsweep.errors import TrainingDiverged, UserError
from bopsweep.train import Callback, Trainer, resolve_device, train

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
TIMING_KEYS = {"epoch_time_s", "samples_per_s"}
VARIANTS = {
    "bop": ("bop", {}),
    "bop2": ("bop", {"optimizer": "bop2"}),
    "bop2_unbiased": ("bop", {"optimizer": "bop2_unbiased"}),
    "latent": ("default", {}),
}


def _config(variant: str = "bop", epochs: int = 2, seed: int = 0, **hparams):
    hparams_set, overrides = VARIANTS[variant]
    return make_train_config(
        model="mlp",
        dataset="synthetic",
        hparams_set=hparams_set,
        hparams={**overrides, **hparams},
        epochs=epochs,
        seed=seed,
        device="cpu",
    )


def _data(n_train: int = 256, n_val: int = 64):
    return make_synthetic(shape=(1, 8, 8), num_classes=2, n_train=n_train, n_val=n_val, seed=0)


def _without_timing(history):
    return [{k: v for k, v in metrics.items() if k not in TIMING_KEYS} for metrics in history]


# ----------------------------------------------------------------------- metrics
def test_metrics_of_every_epoch():
    result = train(_config("bop"), data=_data(), device=CPU)
    layers = ["dense1", "dense2", "dense3"]
    expected_keys = {
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "flip_ratio",
        "log_flip_ratio",
        "gamma",
        "threshold",
        "lr",
        "epoch_time_s",
        "samples_per_s",
        "epoch",
        "log_flip_ratio_last",
        *(f"flip_ratio/{layer}" for layer in layers),
    }
    assert len(result.history) == 2
    sizes = {"dense1": 64 * 256, "dense2": 256 * 256, "dense3": 256 * 2}
    steps = 256 // 32  # the bop set's batch of 32
    for epoch, metrics in enumerate(result.history):
        assert set(metrics) == expected_keys
        assert metrics["epoch"] == epoch
        series = metrics.pop("log_flip_ratio_last")
        assert all(isinstance(v, int | float) and math.isfinite(v) for v in metrics.values())
        # The paper's log pi of the last layer, one point per optimizer step; the
        # epoch's flip ratio of that layer is the mean of the steps' ratios.
        assert [step for step, _ in series] == list(range(epoch * steps, (epoch + 1) * steps))
        ratios = [math.exp(value) - math.exp(-9) for _, value in series]
        assert all(-1e-12 <= r <= 1 for r in ratios)
        assert sum(ratios) / steps == pytest.approx(metrics["flip_ratio/dense3"], abs=1e-12)
        assert 0.0 <= metrics["train_accuracy"] <= 1.0
        assert 0.0 <= metrics["val_accuracy"] <= 1.0
        assert metrics["train_loss"] > 0 and metrics["val_loss"] > 0
        assert 0.0 < metrics["flip_ratio"] < 1.0
        assert metrics["log_flip_ratio"] == pytest.approx(
            math.log(metrics["flip_ratio"] + math.exp(-9)), rel=1e-12
        )
        # The overall ratio is over all binary weights: the size-weighted mean.
        weighted = sum(metrics[f"flip_ratio/{n}"] * s for n, s in sizes.items())
        assert metrics["flip_ratio"] == pytest.approx(weighted / sum(sizes.values()))
        assert (metrics["gamma"], metrics["threshold"], metrics["lr"]) == (1e-3, 1e-6, 0.01)
        assert metrics["epoch_time_s"] > 0 and metrics["samples_per_s"] > 0
    assert result.final is result.history[-1]
    assert result.hparams.epochs == 2


def test_the_per_step_series_is_window_means_when_an_epoch_has_many_steps():
    from bopsweep.train import STEP_POINTS, Trainer

    n_train = 32 * (2 * STEP_POINTS + 10)  # 210 steps: 70 windows of 3
    trainer = Trainer(_config("bop", epochs=1), _data(n_train=n_train), device=CPU)
    (history,) = trainer.fit()
    series = history[0]["log_flip_ratio_last"]
    assert len(series) == STEP_POINTS - 30  # ceil(210 / 3)
    assert [step for step, _ in series][:3] == [2, 5, 8] and series[-1][0] == 209
    ratios = [math.exp(value) - math.exp(-9) for _, value in series]
    assert sum(ratios) * 3 / 210 == pytest.approx(history[0]["flip_ratio/dense3"], rel=1e-9)


def test_top5_accuracy_with_more_than_five_classes():
    data = make_synthetic(shape=(1, 8, 8), num_classes=10, n_train=256, n_val=64, seed=0)
    result = train(_config("bop", epochs=1), data=data, device=CPU)
    metrics = result.final
    for split in ("train", "val"):
        top1, top5 = metrics[f"{split}_accuracy"], metrics[f"{split}_top5_accuracy"]
        assert top1 <= top5 <= 1.0
        assert top5 > top1  # 10 classes after one epoch: not all right at top-1
    # Two classes (the other tests' data): top-5 would always be 1, so it is absent.
    assert "val_top5_accuracy" not in train(_config("bop", epochs=1), data=_data()).final


def test_validation_split_holds_out_training_data_and_scores_the_test_set():
    config = make_train_config(
        model="mlp",
        dataset="digits",
        hparams_set="bop",
        epochs=2,
        device="cpu",
        validation_split=True,
    )
    trainer = Trainer(config, device=CPU)
    # digits: 1438 training images (fixed 80/20 split), 359 test images.
    assert len(trainer.data.train_y) == 1294 and len(trainer.data.val_y) == 144
    assert len(trainer.data.test_y) == 359
    plain = Trainer(_digits_config(1), device=CPU)
    # The held-out part is the end of the training set; the test set is the old val.
    assert torch.equal(trainer.data.val_x, plain.data.train_x[1294:])
    assert torch.equal(trainer.data.test_y, plain.data.val_y)
    history = trainer.fit()[0]
    for metrics in history:
        assert {"val_accuracy", "val_top5_accuracy", "test_accuracy", "test_loss"} <= set(metrics)
        assert 0.5 < metrics["test_accuracy"] <= 1.0
        assert metrics["test_accuracy"] != metrics["val_accuracy"]
    # Without the split there is no test_* metric: val is the test set.
    assert not any(k.startswith("test_") for k in plain.evaluate()[0])


def test_latent_metrics_have_no_bop_rates():
    result = train(_config("latent"), data=_data(), device=CPU)
    metrics = result.final
    assert "gamma" not in metrics and "threshold" not in metrics
    assert metrics["lr"] == 5e-3
    assert {"flip_ratio", "log_flip_ratio", "flip_ratio/dense3"} <= set(metrics)


def test_rates_follow_their_schedules():
    config = _config(
        "bop",
        epochs=3,
        gamma_schedule="exponential",
        gamma_decay_factor=0.5,
        gamma_decay_epochs=1,
        lr_schedule="linear",
        lr_end=1e-3,
    )
    history = train(config, data=_data(), device=CPU).history
    # Logged after each epoch: the value the next step will use.
    assert [m["gamma"] for m in history] == pytest.approx([5e-4, 2.5e-4, 1.25e-4])
    assert [m["lr"] for m in history] == pytest.approx([7e-3, 4e-3, 1e-3])


class _CountSignChanges(Callback):
    """Counts, outside the optimizer, how many binary values change per step."""

    def on_train_start(self, trainer):
        self.layers = dict(binary_layers(trainer.model))
        self.previous = {n: layer.weight.detach() >= 0 for n, layer in self.layers.items()}
        self.changed = dict.fromkeys(self.layers, 0)
        self.steps = 0
        self.checked = 0

    def on_batch_end(self, trainer, step):
        for name, layer in self.layers.items():
            now = layer.weight.detach() >= 0
            self.changed[name] += int((now != self.previous[name]).sum())
            self.previous[name] = now
        self.steps += 1

    def on_epoch_end(self, trainer, members):
        (metrics,) = members
        total = weights = 0
        for name, layer in self.layers.items():
            size = layer.weight.numel() * self.steps
            assert metrics[f"flip_ratio/{name}"] == pytest.approx(
                self.changed[name] / size, rel=1e-12, abs=1e-15
            )
            total += self.changed[name]
            weights += size
        assert metrics["flip_ratio"] == pytest.approx(total / weights, rel=1e-12)
        assert total > 0
        self.changed = dict.fromkeys(self.layers, 0)
        self.steps = 0
        self.checked += 1


@pytest.mark.parametrize("variant", ["bop", "bop2", "latent"])
def test_flip_ratio_counts_sign_changes(variant):
    counter = _CountSignChanges()
    train(_config(variant), [counter], data=_data(), device=CPU)
    assert counter.checked == 2


def test_optimizer_per_variant():
    data = _data()
    assert type(Trainer(_config("bop"), data, device=CPU).optimizer.binary) is Bop
    assert type(Trainer(_config("bop2"), data, device=CPU).optimizer.binary) is Bop2ndOrder
    latent = Trainer(_config("latent"), data, device=CPU)
    assert isinstance(latent.optimizer.binary, torch.optim.Adam)
    assert latent.optimizer.clip_binary
    assert all(layer.kernel_quantizer == "ste_sign" for _, layer in binary_layers(latent.model))


def test_sample_limits():
    config = make_train_config(
        model="mlp",
        dataset="synthetic",
        hparams_set="bop",
        epochs=1,
        device="cpu",
        max_train_samples=40,
        max_val_samples=9,
    )
    trainer = Trainer(config, _data(), device=CPU)
    assert len(trainer.data.train_y) == 40 and len(trainer.data.val_y) == 9
    assert trainer.steps_per_epoch == 2  # batch 32: 32 + 8


# -------------------------------------------------------------------- divergence
class _PoisonLastBatchNorm(Callback):
    """A parameter gone NaN (as after an overflow), before the first step."""

    def on_train_start(self, trainer):
        with torch.no_grad():
            trainer.model.bn3.bias[0] = float("nan")


def test_nan_loss_raises_training_diverged():
    with pytest.raises(TrainingDiverged, match=r"loss is nan in epoch 0"):
        train(_config("bop"), [_PoisonLastBatchNorm()], data=_data(), device=CPU)


def test_exploding_lr_raises_training_diverged():
    config = _config("bop", fp_optimizer="sgd", lr=1e38)
    with pytest.raises(TrainingDiverged, match=r"training diverged: loss is (inf|nan)"):
        train(config, data=_data(), device=CPU)


# ------------------------------------------------------------------------ resume
def _round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class _SaveAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, metrics):
        if trainer.epoch == 1:
            self.state = _round_trip(trainer.state_dict())


@pytest.mark.parametrize("variant", ["bop", "bop2", "bop2_unbiased", "latent"])
def test_resume_after_epoch_one_matches_an_uninterrupted_run(variant):
    config = _config(
        variant, epochs=2, lr_schedule="linear", lr_end=1e-3, gamma_schedule="exponential",
        gamma_decay_factor=0.5, gamma_decay_epochs=1,
    )  # fmt: skip
    saver = _SaveAfterFirstEpoch()
    uninterrupted = train(config, [saver], data=_data(), device=CPU).history
    assert saver.state["epoch"] == 1

    resumed = train(config, data=_data(), resume_state=saver.state, device=CPU).history
    assert len(resumed) == 2
    assert _without_timing(resumed) == _without_timing(uninterrupted)
    # The second epoch was really trained again, not copied from the checkpoint.
    assert len(saver.state["histories"][0]) == 1


def test_resume_from_a_finished_run_trains_nothing_more():
    config = _config("bop", epochs=1)
    trainer = Trainer(config, _data(), device=CPU)
    trainer.fit()
    state = _round_trip(trainer.state_dict())
    again = train(config, data=_data(), resume_state=state, device=CPU)
    assert again.history == trainer.history


# ------------------------------------------------------------------ determinism
def _digits_config(epochs: int, seed: int = 0):
    return make_train_config(
        model="mlp", dataset="digits", hparams_set="bop", epochs=epochs, seed=seed, device="cpu"
    )


def test_same_seed_same_history():
    first = train(_digits_config(3), device=CPU).history
    second = train(_digits_config(3), device=CPU).history
    assert _without_timing(first) == _without_timing(second)
    other = train(_digits_config(3, seed=1), device=CPU).history
    assert _without_timing(other) != _without_timing(first)


def test_digits_mlp_with_bop_reaches_95_percent():
    start = time.perf_counter()
    history = train(_digits_config(30), device=CPU).history
    seconds = time.perf_counter() - start
    accuracies = [m["val_accuracy"] for m in history]
    best = max(accuracies)
    print(
        f"digits mlp bop: best val_accuracy {best:.4f} (epoch {accuracies.index(best) + 1}), "
        f"final {accuracies[-1]:.4f}, 30 epochs in {seconds:.2f} s "
        f"on {torch.get_num_threads()} thread(s)"
    )
    assert len(history) == 30
    assert best >= 0.95
    assert accuracies[-1] >= 0.9
    # Bop keeps flipping, ever less often, as gamma's average settles.
    assert history[-1]["flip_ratio"] < history[0]["flip_ratio"]


# ------------------------------------------------------------------------ device
def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_user_error():
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA host syncs: needs a GPU")
@pytest.mark.parametrize("members", [1, 3])
def test_cuda_training_steps_never_wait_for_the_gpu(members):
    """No training step waits for the GPU (a host sync per step stalls the launch
    queue): an epoch of 10 steps syncs no more than one of 2, give or take the one the
    allocator may take (measured on an H200: 3 and 2 syncs at K = 1, 2 and 2 fused)."""
    import warnings

    configs = [
        make_train_config(
            model="binarynet",
            dataset="synthetic",
            hparams_set="bop",
            hparams={"batch_size": 8, "gamma": 10.0 ** -(2 + k)},
            epochs=1,
            device="cuda",
        )
        for k in range(members)
    ]
    counts = []
    for steps in (2, 10):
        trainer = Trainer(configs, make_synthetic(n_train=8 * steps, n_val=8))
        trainer.train_epoch()  # cuDNN's algorithm search syncs on the first steps
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_epoch()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[1] - counts[0] <= 1, f"host syncs in an epoch of 2 and of 10 steps: {counts}"
