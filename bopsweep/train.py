"""The training loop: one run of one configuration, pure PyTorch.

``bopsweep train`` calls :func:`train` directly; a Ray Tune trial calls it through
callbacks that report and checkpoint. Nothing here imports Ray or MLflow, so a
run behaves the same inside and outside a sweep.

Per epoch the loop produces the metrics the paper looks at: losses and accuracies,
the flip ratio over all binary weights and per binary layer, its log form, and the
current gamma / threshold / learning rate. Losses, accuracies and flip counts are
accumulated on the device and read once per epoch, so the loop never waits on a
host sync per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bopsweep.bnn.layers import binary_layers, binary_parameters, use_latent_weights
from bopsweep.bnn.metrics import TOP5, flip_metrics, topk_correct
from bopsweep.bnn.models import build_model
from bopsweep.bnn.optim import Bop, Bop2ndOrder, Bop2ndOrderUnbiased, CaseOptimizer
from bopsweep.config import HParams, TrainConfig
from bopsweep.data import Dataset, load_dataset
from bopsweep.errors import TrainingDiverged, UserError
from bopsweep.precision import resolve_precision


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present (in a Ray trial: the GPU Ray assigned), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def build_optimizer(model: nn.Module, hp: HParams, steps_per_epoch: int) -> CaseOptimizer:
    """Binary kernels to Bop (or Adam on latent weights), everything else to the fp
    optimizer, with the schedules of ``hp`` expressed in optimizer steps."""
    binary = binary_parameters(model)
    binary_ids = {id(p) for p in binary}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in binary_ids]
    lr_schedule = hp.schedule("lr", steps_per_epoch)

    def fp_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        # L2 on full-precision kernels only, as Keras' kernel_regularizer in the paper's
        # XNOR-Net: BatchNorm parameters and biases are not decayed.
        kernels = [p for p in params if p.dim() > 1]
        rest = [p for p in params if p.dim() <= 1]
        groups = [
            {"params": group, "weight_decay": decay}
            for group, decay in ((kernels, hp.weight_decay), (rest, 0.0))
            if group
        ]
        if hp.fp_optimizer == "sgd":
            return torch.optim.SGD(groups, lr=lr_schedule(0), momentum=0.9)
        return torch.optim.Adam(groups, lr=lr_schedule(0))

    if hp.optimizer == "latent":
        # The baseline: the binary kernels are latent weights trained like the rest.
        return CaseOptimizer(
            model,
            torch.optim.Adam(binary, lr=lr_schedule(0)),
            fp_optimizer(others) if others else None,
            clip_binary=True,
            lr_schedule=lr_schedule,
        )
    threshold = hp.schedule("threshold", steps_per_epoch)
    gamma = hp.schedule("gamma", steps_per_epoch)
    if hp.optimizer == "bop2":
        bop: Bop = Bop2ndOrder(binary, threshold, gamma, hp.sigma)
    elif hp.optimizer == "bop2_unbiased":
        bop = Bop2ndOrderUnbiased(binary, threshold, gamma, hp.sigma)
    else:
        bop = Bop(binary, threshold, gamma)
    return CaseOptimizer(
        model, bop, fp_optimizer(others) if others else None, lr_schedule=lr_schedule
    )


class Callback:
    """Hooks into the loop; every method is optional."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_batch_end(self, trainer: Trainer, step: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    config: TrainConfig
    hparams: HParams
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


class Trainer:
    """Model, optimizer, data and RNG of one run; resumable through its state dict."""

    def __init__(
        self,
        config: TrainConfig,
        data: Dataset | None = None,
        *,
        device: torch.device | None = None,
    ) -> None:
        self.config = config
        self.hparams = config.resolved_hparams()
        self.device = device or resolve_device(config.device)
        torch.manual_seed(config.seed)
        if data is None:
            data = load_dataset(config.dataset, config.data_dir, config.download)
        if config.validation_split:
            # Select on held-out training data; the test set is scored as test_*.
            data = data.split_validation()
        data = data.limit(config.max_train_samples, config.max_val_samples)
        self.data = data
        # In memory: both splits move to the device; from files: DataLoader workers.
        self.batches = data.batches(config.preprocess_fn, self.hparams.batch_size, self.device)
        model = build_model(
            config.model,
            self.batches.input_shape,
            self.batches.num_classes,
            **self.hparams.model_options(),
        )
        if self.hparams.optimizer == "latent":
            use_latent_weights(model)
        self.model = model.to(self.device)
        # Convolutions run in NHWC in oneDNN (CPU) and in cuDNN's tensor-core kernels;
        # with the weights stored that way, activations follow without reorders.
        self.channels_last = any(isinstance(m, nn.Conv2d) for m in self.model.modules())
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # What the forward passes really run in ("auto" resolved for this device and
        # model): the one value to log with the run.
        self.precision = resolve_precision(config.precision, self.device, self.model)
        if self.device.type == "cuda":
            # Input shapes are fixed: let cuDNN time its algorithms once and keep the best.
            torch.backends.cudnn.benchmark = True
        if config.compile:
            # In place, so state dicts (checkpoints) keep the plain module's keys.
            self.model.compile()
        # The original code's top_k_categorical_accuracy, where top-5 means something.
        self.top5 = self.batches.num_classes > TOP5
        self.steps_per_epoch = self.batches.steps_per_epoch()
        self.optimizer = build_optimizer(self.model, self.hparams, self.steps_per_epoch)
        self.layer_names = {layer.weight: name for name, layer in binary_layers(self.model)}
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.epoch = 0
        self.history: list[dict[str, float]] = []

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])

    # -------------------------------------------------------------------- the loop
    def _current_rates(self) -> dict[str, float]:
        rates: dict[str, float] = {}
        if isinstance(self.optimizer.binary, Bop):
            rates["gamma"] = self.optimizer.binary.current("gamma")
            rates["threshold"] = self.optimizer.binary.current("threshold")
        lr = self.optimizer.current_lr()
        if lr is not None:
            rates["lr"] = lr
        return rates

    def _autocast(self) -> torch.autocast:
        # bfloat16 keeps float32's exponent range (no loss scaling), and the +-1 inputs
        # and kernels of binarized layers are exact in it; accumulation stays float32.
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.model(x)
        # The loss and the accuracy in float32 whatever the precision of the forward.
        return logits.float()

    def train_epoch(self, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
        self.model.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        correct5 = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        for step, (x, y) in enumerate(self.batches.train(self.generator)):
            logits = self._forward(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            if self.top5:
                correct5 += topk_correct(logits.detach(), y, TOP5)
            seen += len(y)
            for cb in callbacks:
                cb.on_batch_end(self, step)
        train_loss, train_correct, train_correct5 = (
            v.item() for v in (loss_sum, correct, correct5)
        )
        metrics = {"train_loss": train_loss / seen, "train_accuracy": train_correct / seen}
        if self.top5:
            metrics["train_top5_accuracy"] = train_correct5 / seen
        return metrics

    @torch.no_grad()
    def _score(self, batches, prefix: str) -> dict[str, float]:
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros(2, device=self.device, dtype=torch.int64)
        seen = 0
        for x, y in batches:
            logits = self._forward(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct[0] += (logits.argmax(1) == y).sum()
            if self.top5:
                correct[1] += topk_correct(logits, y, TOP5)
            seen += len(y)
        if seen == 0:
            return {}
        top1, top5 = correct.tolist()
        metrics = {f"{prefix}_loss": loss_sum.item() / seen, f"{prefix}_accuracy": top1 / seen}
        if self.top5:
            metrics[f"{prefix}_top5_accuracy"] = top5 / seen
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """``val_*`` metrics, and ``test_*`` when validation is held out of training."""
        self.model.eval()
        return {
            **self._score(self.batches.val(), "val"),
            **self._score(self.batches.test(), "test"),
        }

    def fit(self, callbacks: Sequence[Callback] = ()) -> list[dict[str, float]]:
        for cb in callbacks:
            cb.on_train_start(self)
        while self.epoch < self.hparams.epochs:
            start = time.perf_counter()
            metrics = self.train_epoch(callbacks)
            train_time = time.perf_counter() - start
            if not math.isfinite(metrics["train_loss"]):
                raise TrainingDiverged(
                    f"training diverged: loss is {metrics['train_loss']} in epoch {self.epoch}"
                )
            metrics.update(flip_metrics(self.optimizer.read_flips(), self.layer_names))
            metrics.update(self.evaluate())
            metrics.update(self._current_rates())
            metrics["epoch_time_s"] = time.perf_counter() - start
            metrics["samples_per_s"] = self.batches.num_train / train_time
            metrics["epoch"] = self.epoch
            self.history.append(metrics)
            self.epoch += 1
            for cb in callbacks:
                cb.on_epoch_end(self, metrics)
        return self.history


def train(
    config: TrainConfig,
    callbacks: Sequence[Callback] = (),
    *,
    data: Dataset | None = None,
    resume_state: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Train one configuration to the end; ``resume_state`` continues a checkpoint."""
    trainer = Trainer(config, data, device=device)
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
    trainer.fit(callbacks)
    return TrainResult(config, trainer.hparams, trainer.history)
