"""The training loop: a group of K >= 1 members of one model, pure PyTorch.

``bopsweep train`` runs one member; a Ray Tune trial runs a group of K members
through callbacks that report and checkpoint. Nothing here imports Ray or MLflow, so
a run behaves the same inside and outside a sweep.

K = 1 is a plain run: the plain model and optimizers, nothing fused. K > 1 members
share everything but per-member values (:func:`bopsweep.config.fusion_key`: Bop's
threshold, gamma and sigma, the learning rate, weight decay, their schedules, and
the seed) and train as one stacked model (:mod:`bopsweep.bnn.fused`). Each member
starts from exactly the weights its own run would (its model is built under its
seed), draws its batches in the order of its own seed (members that share a seed
share their batches, which then go through the model once), and gets the same
per-epoch metrics under the same names as a run of its own.

Per epoch the loop produces the metrics the paper looks at: losses and accuracies,
the flip ratio over all binary weights and per binary layer, its log form, and the
current gamma / threshold / learning rate; and, as the paper's Figure 1 plots it,
``log_flip_ratio_last``: the log flip ratio of the last binary layer per optimizer
step, a metric whose value is a list of ``[step, value]`` pairs (every step, or the
means of equal windows of steps when an epoch has more than :data:`STEP_POINTS`).
Losses, accuracies and flip counts are accumulated on the device and read once per
epoch, so the loop never waits on a host sync per step.

A member whose loss stops being finite is stopped (:meth:`Trainer.stop`: its weights,
optimizer state and BatchNorm statistics stop changing, its loss leaves the sum that
is backpropagated) and the others go on; a member can also be stopped on purpose
(successive halving in a sweep). The loop ends when every member is done.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bopsweep.bnn.fused import (
    FusedBop,
    fuse_models,
    member_cross_entropy,
    member_state_dict,
    member_view,
)
from bopsweep.bnn.layers import binary_layers, use_latent_weights
from bopsweep.bnn.metrics import (
    TOP5,
    flip_metrics,
    member_flip_metrics,
    step_flip_series,
    topk_correct,
)
from bopsweep.bnn.models import build_model
from bopsweep.bnn.optim import Bop
from bopsweep.config import FUSABLE_OPTIMIZERS, MEMBER_HPARAMS, TrainConfig, fusion_key
from bopsweep.data import Dataset, load_dataset
from bopsweep.device import enable_tf32
from bopsweep.errors import TrainingDiverged, UserError
from bopsweep.hparams import HParams
from bopsweep.optimizers import build_optimizer
from bopsweep.precision import resolve_precision

# The per-step flip series (the paper's log pi of the last binary layer): a point per
# step up to this many an epoch, else the means of equal windows of steps, so that an
# epoch's metrics stay one MLflow request (log_batch takes 1,000 values) and a long
# run's history stays small in its checkpoints.
STEP_POINTS = 100
STEP_FLIP_METRIC = "log_flip_ratio_last"

__all__ = ["Callback", "TrainResult", "Trainer", "build_optimizer", "resolve_device", "train"]


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present (in a Ray trial: the GPU Ray assigned), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def check_group(configs: Sequence[TrainConfig]) -> None:
    """Refuse members that cannot train as one stacked model."""
    if not configs:
        raise ValueError("a group needs at least one member")
    if len(configs) == 1:
        return
    kinds = {c.resolved_hparams().optimizer for c in configs}
    if not kinds <= FUSABLE_OPTIMIZERS:
        raise UserError(
            f"optimizer {', '.join(sorted(kinds - FUSABLE_OPTIMIZERS))} cannot train "
            f"fused; fused groups take {', '.join(sorted(FUSABLE_OPTIMIZERS))} (fuse: off)"
        )
    if len({fusion_key(c) for c in configs}) > 1:
        raise UserError(
            "these configs cannot train fused: they may differ only in the seed and "
            f"the hparams {', '.join(sorted(MEMBER_HPARAMS))}"
        )


def _restore_generator(generator: torch.Generator, saved: torch.Tensor) -> None:
    """Continue ``generator`` from a checkpoint's state. A state written on another
    device type (CUDA's Philox seed and offset, 16 bytes; the CPU's Mersenne Twister,
    5056) cannot continue that stream here: a seed drawn from the saved state starts a
    new one, the same on every resume of that checkpoint."""
    if saved.numel() == generator.get_state().numel():
        generator.set_state(saved)
        return
    digest = hashlib.sha256(saved.cpu().numpy().tobytes()).digest()
    generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class Callback:
    """Hooks into the loop; every method is optional. ``metrics[k]`` is member k's
    epoch (None once it stopped)."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_batch_end(self, trainer: Trainer, step: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, metrics: list[dict[str, float] | None]) -> None: ...


@dataclass
class TrainResult:
    config: TrainConfig
    hparams: HParams
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


class Trainer:
    """Model, optimizers, data and RNGs of K >= 1 members; resumable through its
    state dict. ``hparams`` is the first member's (epochs, batch size and the model's
    options are every member's); ``member_hparams`` has each member's."""

    def __init__(
        self,
        configs: TrainConfig | Sequence[TrainConfig],
        data: Dataset | None = None,
        *,
        device: torch.device | None = None,
    ) -> None:
        configs = [configs] if isinstance(configs, TrainConfig) else list(configs)
        check_group(configs)
        first = configs[0]
        self.configs = configs
        self.config = first
        self.members = len(configs)
        self.member_hparams = [c.resolved_hparams() for c in configs]
        self.hparams = self.member_hparams[0]
        self.epochs = self.hparams.epochs
        self.device = device or resolve_device(first.device)
        torch.manual_seed(first.seed)
        if data is None:
            data = load_dataset(first.dataset, first.data_dir, first.download)
        if first.validation_split:
            # Select on held-out training data; the test set is scored as test_*.
            data = data.split_validation()
        self.data = data.limit(first.max_train_samples, first.max_val_samples)
        # In memory: both splits move to the device; from files: DataLoader workers.
        self.batches = self.data.batches(first.preprocess_fn, self.hparams.batch_size, self.device)
        models = [self._build_member(k) for k in range(self.members)]
        model = models[0] if self.members == 1 else fuse_models(models)
        del models
        self.model = model.to(self.device)
        # Convolutions run in NHWC in oneDNN (CPU) and in cuDNN's tensor-core kernels;
        # with the weights stored that way, activations follow without reorders.
        self.channels_last = any(isinstance(m, nn.Conv2d) for m in self.model.modules())
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.members > 1:
                self.model.channels_last = True
        # What the forward passes really run in ("auto" resolved for this device and
        # model): the one value to log with the run.
        self.precision = resolve_precision(first.precision, self.device, self.model)
        if self.device.type == "cuda":
            # Input shapes are fixed: let cuDNN time its algorithms once and keep the best.
            torch.backends.cudnn.benchmark = True
            # Dense layers' float32 products on TF32 tensor cores, as cuDNN's convolutions
            # already are; +-1 operands are exact in TF32 (bopsweep.device).
            enable_tf32()
        if first.compile:
            # In place, so state dicts (checkpoints) keep the plain module's keys.
            self.model.compile()
        # The original code's top_k_categorical_accuracy, where top-5 means something.
        self.top5 = self.batches.num_classes > TOP5
        self.steps_per_epoch = self.batches.steps_per_epoch()
        hparams = self.hparams if self.members == 1 else self.member_hparams
        self.optimizer = build_optimizer(self.model, hparams, self.steps_per_epoch)
        body = self.model if self.members == 1 else self.model.body
        self.layer_names = {layer.weight: name for name, layer in binary_layers(body)}
        # The last binary layer's kernel, whose flips are also kept per step.
        self.last_binary = next(reversed(self.layer_names), None)
        self._step_flips: list[torch.Tensor] = []
        # One generator per distinct seed: members that share a seed share batches.
        self.seeds = sorted({c.seed for c in configs})
        self.generators = {
            seed: torch.Generator(self.device).manual_seed(seed) for seed in self.seeds
        }
        self.epoch = 0
        self.histories: list[list[dict[str, float]]] = [[] for _ in configs]
        # Why a member stopped before the last epoch ("training diverged: ...", ...).
        self.stopped: dict[int, str] = {}
        self._kept_buffers: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _build_member(self, member: int) -> nn.Module:
        config, hp = self.configs[member], self.member_hparams[member]
        # Each member's initial weights are those of its own run.
        torch.manual_seed(config.seed)
        model = build_model(
            config.model, self.batches.input_shape, self.batches.num_classes, **hp.model_options()
        )
        if hp.optimizer == "latent":
            use_latent_weights(model)
        return model

    @property
    def history(self) -> list[dict[str, float]]:
        """The first member's epochs (a plain run's history)."""
        return self.histories[0]

    def member_model(self, member: int) -> nn.Module:
        """Member ``member`` as a plain model (a copy when fused, the model itself at K = 1)."""
        if self.members == 1:
            return self.model
        model = self._build_member(member).to(self.device)
        model.load_state_dict({k: v.clone() for k, v in self.member_state(member).items()})
        return model.eval()

    def member_state(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s state dict with the plain model's keys (views when fused)."""
        if self.members == 1:
            return self.model.state_dict()
        return member_state_dict(self.model, member)

    # ----------------------------------------------------------------- members
    @property
    def active(self) -> list[int]:
        return [k for k in range(self.members) if k not in self.stopped]

    def stop(self, member: int, reason: str) -> None:
        """Stop ``member``: its weights, optimizer state and BatchNorm statistics stop
        changing (a plain run simply ends)."""
        self.stopped[member] = reason
        if self.members == 1:
            return
        self.optimizer.freeze(member)
        # Training-mode forward passes still update every member's running statistics.
        self._kept_buffers[member] = [
            (view, view.clone())
            for buffer in self.model.buffers()
            if buffer.dim() > 0
            for view in [member_view(buffer, self.members)[member]]
        ]

    def raise_if_diverged(self) -> None:
        """A plain run's divergence as the error ``bopsweep train`` ends with."""
        reason = self.stopped.get(0)
        if self.members == 1 and reason is not None:
            raise TrainingDiverged(reason)

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generators": {s: g.get_state() for s, g in self.generators.items()},
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "histories": [list(h) for h in self.histories],
            "stopped": dict(self.stopped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "members" not in state:
            # A plain run's checkpoint from before groups: one generator, one history.
            seed = self.configs[0].seed
            state = {
                **state,
                "members": 1,
                "generators": {seed: state["generator"]},
                "histories": [state["history"]],
                "stopped": {},
            }
        if state["members"] != self.members:
            raise ValueError(f"a checkpoint of {state['members']} members, not {self.members}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for seed, generator in self.generators.items():
            _restore_generator(generator, state["generators"][seed])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = state["epoch"]
        self.histories = [list(h) for h in state["histories"]]
        for member, reason in state["stopped"].items():
            self.stop(int(member), reason)

    # -------------------------------------------------------------------- loop
    def _autocast(self) -> torch.autocast:
        # bfloat16 keeps float32's exponent range (no loss scaling), and the +-1 inputs
        # and kernels of binarized layers are exact in it; accumulation stays float32.
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    def _forward(self, x: torch.Tensor, shared: bool = True) -> torch.Tensor:
        """Each member's logits, ``[K, B, classes]`` (one member: ``[B, classes]``, the
        plain model's, which every per-member sum below broadcasts), in float32 whatever
        the precision of the forward (the loss and the accuracy are computed in float32)."""
        with self._autocast():
            if self.members > 1:
                # The fused model lays out its members' batches itself.
                return self.model(x, shared=shared).float()
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float()

    def _losses(self, logits: torch.Tensor, y: torch.Tensor, total: bool = False) -> torch.Tensor:
        """Each member's mean cross-entropy over the batch, ``[K]`` (its sum: ``total``);
        one member's is a scalar."""
        if self.members == 1:
            return F.cross_entropy(logits, y, reduction="sum" if total else "mean")
        losses = member_cross_entropy(logits, y)
        return losses.double() * y.shape[-1] if total else losses

    def _train_batches(self):
        """Per step: the batch (shared, or ``[K, B, ...]``), the labels, and whether
        the batch is shared by every member."""
        if len(self.seeds) == 1:
            for x, y in self.batches.train(self.generators[self.seeds[0]]):
                yield x, y, True
            return
        streams = {s: self.batches.train(g) for s, g in self.generators.items()}
        index = [self.seeds.index(c.seed) for c in self.configs]
        for pairs in zip(*streams.values(), strict=True):
            xs = torch.stack([pairs[i][0] for i in index])
            ys = torch.stack([pairs[i][1] for i in index])
            yield xs, ys, False

    def train_epoch(self, callbacks: Sequence[Callback] = ()) -> list[dict[str, float]]:
        self.model.train()
        members, device = self.members, self.device
        loss_sum = torch.zeros(members, device=device, dtype=torch.float64)
        top1, top5 = (torch.zeros(members, device=device, dtype=torch.int64) for _ in "15")
        seen = 0
        # Each member's loss gets gradient 1 (as the sum's), with no extra op per step.
        ones = torch.ones(members, device=device) if members > 1 else None
        # Stopped members leave the sum: no gradient reaches them (a NaN loss times
        # zero would still be NaN, hence where, not a product).
        mask = None
        if self.stopped:
            mask = torch.zeros(members, device=device, dtype=torch.bool)
            mask[self.active] = True
        self._step_flips = []
        for step, (x, y, shared) in enumerate(self._train_batches()):
            logits = self._forward(x, shared)
            losses = self._losses(logits, y)
            self.optimizer.zero_grad()
            (losses if mask is None else torch.where(mask, losses, 0.0)).backward(ones)
            self.optimizer.step()
            if self.last_binary is not None:
                # The running count after this step, on the device (no host sync).
                total = self.optimizer.flip_total(self.last_binary)
                if total is not None:
                    self._step_flips.append(total.clone())
            batch = y.shape[-1]
            loss_sum += losses.detach() * batch
            top1 += (logits.argmax(-1) == y).sum(-1)
            if self.top5:
                top5 += topk_correct(logits.detach(), y, TOP5)
            seen += batch
            for cb in callbacks:
                cb.on_batch_end(self, step)
        for kept in self._kept_buffers.values():
            for view, value in kept:
                view.copy_(value)
        return self._member_metrics("train", loss_sum, torch.stack([top1, top5]), seen)

    def _member_metrics(self, prefix: str, loss_sum, correct, seen: int) -> list[dict]:
        losses, (top1, top5) = loss_sum.tolist(), correct.tolist()
        out = []
        for k in range(self.members):
            metrics = {f"{prefix}_loss": losses[k] / seen, f"{prefix}_accuracy": top1[k] / seen}
            if self.top5:
                metrics[f"{prefix}_top5_accuracy"] = top5[k] / seen
            out.append(metrics)
        return out

    @torch.no_grad()
    def _score(self, batches, prefix: str) -> list[dict[str, float]]:
        members, device = self.members, self.device
        loss_sum = torch.zeros(members, device=device, dtype=torch.float64)
        correct = torch.zeros(2, members, device=device, dtype=torch.int64)
        seen = 0
        for x, y in batches:
            logits = self._forward(x)
            loss_sum += self._losses(logits, y, total=True)
            correct[0] += (logits.argmax(-1) == y).sum(-1)
            if self.top5:
                correct[1] += topk_correct(logits, y, TOP5)
            seen += len(y)
        if seen == 0:
            return [{} for _ in range(members)]
        return self._member_metrics(prefix, loss_sum, correct, seen)

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        """Each member's ``val_*`` metrics, and ``test_*`` when validation is held out."""
        self.model.eval()
        val, test = self._score(self.batches.val(), "val"), self._score(self.batches.test(), "test")
        return [{**v, **t} for v, t in zip(val, test, strict=True)]

    def _step_flip_series(self) -> list[list[list[float]]] | None:
        """Each member's per-step series of the last binary layer over the epoch just
        trained (read before :meth:`_flip_metrics` resets the counts)."""
        if not self._step_flips:
            return None
        weights = self.last_binary.numel() // self.members
        last_step = self.optimizer.step_count - 1
        return step_flip_series(self._step_flips, weights, last_step, STEP_POINTS)

    def _flip_metrics(self) -> list[dict[str, float]]:
        flips = self.optimizer.read_flips()
        if self.members == 1:
            return [flip_metrics(flips, self.layer_names)]
        return member_flip_metrics(flips, self.layer_names, self.members)

    def _current_rates(self, member: int) -> dict[str, float]:
        # A plain optimizer's rates take no member; a fused one's take the member.
        at = () if self.members == 1 else (member,)
        rates: dict[str, float] = {}
        if isinstance(self.optimizer.binary, (Bop, FusedBop)):
            rates["gamma"] = self.optimizer.binary.current("gamma", *at)
            rates["threshold"] = self.optimizer.binary.current("threshold", *at)
        lr = self.optimizer.current_lr(*at)
        if lr is not None:
            rates["lr"] = lr
        return rates

    def fit(self, callbacks: Sequence[Callback] = ()) -> list[list[dict[str, float]]]:
        """Train every active member to the last epoch; returns each member's history."""
        for cb in callbacks:
            cb.on_train_start(self)
        while self.epoch < self.epochs and self.active:
            start = time.perf_counter()
            active = self.active
            metrics: list[dict[str, Any] | None] = list(self.train_epoch(callbacks))
            train_time = time.perf_counter() - start
            series = self._step_flip_series()
            flips = self._flip_metrics()
            evaluation = self.evaluate()
            epoch_time = time.perf_counter() - start
            for k in range(self.members):
                if k not in active:
                    metrics[k] = None
                    continue
                loss = metrics[k]["train_loss"]
                if not math.isfinite(loss):
                    self.stop(k, f"training diverged: loss is {loss} in epoch {self.epoch}")
                    metrics[k] = None
                    continue
                metrics[k].update(flips[k])
                if series is not None:
                    metrics[k][STEP_FLIP_METRIC] = series[k]
                metrics[k].update(evaluation[k])
                metrics[k].update(self._current_rates(k))
                # The group's time: every member trained in the same seconds.
                metrics[k]["epoch_time_s"] = epoch_time
                metrics[k]["samples_per_s"] = self.batches.num_train / train_time
                metrics[k]["epoch"] = self.epoch
                self.histories[k].append(metrics[k])
            self.epoch += 1
            for cb in callbacks:
                cb.on_epoch_end(self, metrics)
        return self.histories


def train(
    config: TrainConfig,
    callbacks: Sequence[Callback] = (),
    *,
    data: Dataset | None = None,
    resume_state: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Train one configuration to the end; ``resume_state`` continues a checkpoint.
    Raises :class:`~bopsweep.errors.TrainingDiverged` when the loss stops being finite."""
    trainer = Trainer(config, data, device=device)
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
    trainer.fit(callbacks)
    trainer.raise_if_diverged()
    return TrainResult(config, trainer.hparams, trainer.history)
