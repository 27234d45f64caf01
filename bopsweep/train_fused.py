"""The training loop of fused trials: K configurations of one model trained as one.

:class:`FusedTrainer` is :class:`~bopsweep.train.Trainer` for a group of configs
that share everything but per-member values (:func:`member_fields` says which):
Bop's threshold, gamma and sigma, the learning rate, weight decay, their schedules,
and the seed. Each member starts from exactly the weights its own run would (its
model is built under its seed, then the K models are stacked), draws its batches in
the order of its own seed (members that share a seed share their batches, which
then go through the model once), and gets the same per-epoch metrics, under the same
names, as an unfused run. Like ``train.py``, nothing here imports Ray or MLflow.

A member whose loss stops being finite is marked failed and frozen (its weights and
optimizer state stop changing, its loss leaves the sum that is backpropagated); the
others go on. A member can also be stopped on purpose (:meth:`FusedTrainer.stop`,
successive halving inside the group).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bopsweep.bnn.fused import (
    FusedBop,
    FusedCaseOptimizer,
    MemberOptimizers,
    SharedOptimizer,
    fuse_models,
    member_cross_entropy,
    member_view,
)
from bopsweep.bnn.fused.optim import member_flip_metrics
from bopsweep.bnn.layers import binary_layers, binary_parameters, use_latent_weights
from bopsweep.bnn.metrics import TOP5, topk_correct
from bopsweep.bnn.models import build_model
from bopsweep.config import (
    FUSABLE_OPTIMIZERS,
    MEMBER_HPARAMS,
    HParams,
    TrainConfig,
    fusion_key,
)
from bopsweep.data import Dataset, load_dataset
from bopsweep.errors import UserError
from bopsweep.precision import resolve_precision
from bopsweep.train import resolve_device


class FusedCallback:
    """Hooks into the fused loop; ``metrics[k]`` is member k's epoch (None once it
    stopped)."""

    def on_train_start(self, trainer: FusedTrainer) -> None: ...

    def on_batch_end(self, trainer: FusedTrainer, step: int) -> None: ...

    def on_epoch_end(
        self, trainer: FusedTrainer, metrics: list[dict[str, float] | None]
    ) -> None: ...


def _fp_factory(hparams: Sequence[HParams], steps_per_epoch: int):
    def factory(member: int, views: list[torch.Tensor]) -> torch.optim.Optimizer:
        # Views of one member, or whole fused tensors (shared settings): kernels
        # have more than one dimension either way.
        hp = hparams[member]
        lr = hp.schedule("lr", steps_per_epoch)(0)
        # L2 on full-precision kernels only, as in train.build_optimizer.
        kernels = [v for v in views if v.dim() > 1]
        rest = [v for v in views if v.dim() <= 1]
        groups = [
            {"params": group, "weight_decay": decay}
            for group, decay in ((kernels, hp.weight_decay), (rest, 0.0))
            if group
        ]
        if hp.fp_optimizer == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=0.9)
        return torch.optim.Adam(groups, lr=lr)

    return factory


def _fp_settings(hp: HParams) -> tuple:
    """What a member's full-precision optimizer depends on."""
    lr = tuple((k, getattr(hp, k)) for k in sorted(HParams.model_fields) if k.startswith("lr"))
    return (hp.fp_optimizer, hp.weight_decay, lr)


def build_fused_optimizer(
    model, hparams: Sequence[HParams], steps_per_epoch: int
) -> FusedCaseOptimizer:
    """:func:`bopsweep.train.build_optimizer` for a fused model, member by member."""
    members = model.members
    binary = binary_parameters(model)
    binary_ids = {id(p) for p in binary}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in binary_ids]
    lr_schedules = [hp.schedule("lr", steps_per_epoch) for hp in hparams]
    factory = _fp_factory(hparams, steps_per_epoch)
    if not others:
        fp = None
    elif len({_fp_settings(hp) for hp in hparams}) == 1:
        fp = SharedOptimizer(others, members, factory(0, others))
    else:
        fp = MemberOptimizers(others, members, factory)
    kind = hparams[0].optimizer
    if kind == "latent":
        latent = MemberOptimizers(
            binary,
            members,
            lambda k, views: torch.optim.Adam(views, lr=lr_schedules[k](0)),
        )
        return FusedCaseOptimizer(model, latent, fp, clip_binary=True, lr_schedules=lr_schedules)
    thresholds = [hp.schedule("threshold", steps_per_epoch) for hp in hparams]
    gammas = [hp.schedule("gamma", steps_per_epoch) for hp in hparams]
    sigmas = [hp.sigma for hp in hparams] if kind == "bop2" else None
    bop = FusedBop(binary, members, thresholds, gammas, sigmas)
    return FusedCaseOptimizer(model, bop, fp, lr_schedules=lr_schedules)


class FusedTrainer:
    """Model, optimizers, data and RNGs of K members; resumable through its state dict."""

    def __init__(
        self,
        configs: Sequence[TrainConfig],
        data: Dataset | None = None,
        *,
        device: torch.device | None = None,
    ) -> None:
        if not configs:
            raise ValueError("a fused group needs at least one config")
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
        first = configs[0]
        self.configs = list(configs)
        self.members = len(configs)
        self.hparams = [c.resolved_hparams() for c in configs]
        self.epochs = self.hparams[0].epochs
        self.device = device or resolve_device(first.device)
        if data is None:
            data = load_dataset(first.dataset, first.data_dir, first.download)
        if first.validation_split:
            # Select on held-out training data; the test set is scored as test_*.
            data = data.split_validation()
        self.data = data.limit(first.max_train_samples, first.max_val_samples)
        self.batches = self.data.batches(
            first.preprocess_fn, self.hparams[0].batch_size, self.device
        )
        models = []
        for config, hp in zip(self.configs, self.hparams, strict=True):
            # Each member's initial weights are those of its own unfused run.
            torch.manual_seed(config.seed)
            model = build_model(
                config.model,
                self.batches.input_shape,
                self.batches.num_classes,
                **hp.model_options(),
            )
            if hp.optimizer == "latent":
                use_latent_weights(model)
            models.append(model)
        self.model = fuse_models(models).to(self.device)
        del models
        self.model.channels_last = any(isinstance(m, nn.Conv2d) for m in self.model.modules())
        if self.model.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.precision = resolve_precision(first.precision, self.device, self.model)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        # The original code's top_k_categorical_accuracy, where top-5 means something.
        self.top5 = self.batches.num_classes > TOP5
        self.steps_per_epoch = self.batches.steps_per_epoch()
        self.optimizer = build_fused_optimizer(self.model, self.hparams, self.steps_per_epoch)
        self.layer_names = {layer.weight: name for name, layer in binary_layers(self.model.body)}
        # One generator per distinct seed: members that share a seed share batches.
        self.seeds = sorted({c.seed for c in configs})
        self.generators = {
            seed: torch.Generator(self.device).manual_seed(seed) for seed in self.seeds
        }
        self.epoch = 0
        self.histories: list[list[dict[str, float]]] = [[] for _ in configs]
        # Why a member stopped before the last epoch ("diverged: ...", "stopped early").
        self.stopped: dict[int, str] = {}
        self._kept_buffers: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    # ----------------------------------------------------------------- members
    @property
    def active(self) -> list[int]:
        return [k for k in range(self.members) if k not in self.stopped]

    def stop(self, member: int, reason: str) -> None:
        """Freeze ``member``: its weights, optimizer state and BatchNorm statistics
        stop changing."""
        self.stopped[member] = reason
        self.optimizer.freeze(member)
        # Training-mode forward passes still update every member's running statistics.
        self._kept_buffers[member] = [
            (view, view.clone())
            for buffer in self.model.buffers()
            if buffer.dim() > 0
            for view in [member_view(buffer, self.members)[member]]
        ]

    def _restore_frozen_buffers(self) -> None:
        for kept in self._kept_buffers.values():
            for view, value in kept:
                view.copy_(value)

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
        if state["members"] != self.members:
            raise ValueError(f"a checkpoint of {state['members']} members, not {self.members}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for seed, generator in self.generators.items():
            generator.set_state(state["generators"][seed])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = state["epoch"]
        self.histories = [list(h) for h in state["histories"]]
        for member, reason in state["stopped"].items():
            self.stop(int(member), reason)

    # -------------------------------------------------------------------- loop
    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    def _train_batches(self):
        """Per step: the batch (shared or ``[K, B, ...]``) and the labels."""
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

    def train_epoch(self, callbacks: Sequence[FusedCallback] = ()) -> list[dict[str, float]]:
        self.model.train()
        members, device = self.members, self.device
        loss_sum = torch.zeros(members, device=device, dtype=torch.float64)
        correct = torch.zeros(2, members, device=device, dtype=torch.int64)
        seen = 0
        mask = torch.zeros(members, device=device)
        mask[self.active] = 1.0
        for step, (x, y, shared) in enumerate(self._train_batches()):
            with self._autocast():
                logits = self.model(x, shared=shared)
            logits = logits.float()
            losses = member_cross_entropy(logits, y)
            self.optimizer.zero_grad()
            # Stopped members leave the sum: no gradient reaches them (a NaN loss
            # times zero would still be NaN, hence where, not a product).
            torch.where(mask > 0, losses, 0.0).sum().backward()
            self.optimizer.step()
            batch = y.shape[-1]
            loss_sum += losses.detach() * batch
            correct[0] += (logits.argmax(-1) == y).sum(-1)
            if self.top5:
                correct[1] += topk_correct(logits.detach(), y, TOP5)
            seen += batch
            for cb in callbacks:
                cb.on_batch_end(self, step)
        self._restore_frozen_buffers()
        return self._member_metrics("train", loss_sum, correct, seen)

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
            with self._autocast():
                logits = self.model(x, shared=True).float()
            loss_sum += member_cross_entropy(logits, y).double() * len(y)
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

    def _current_rates(self, member: int) -> dict[str, float]:
        rates: dict[str, float] = {}
        if isinstance(self.optimizer.binary, FusedBop):
            rates["gamma"] = self.optimizer.binary.current("gamma", member)
            rates["threshold"] = self.optimizer.binary.current("threshold", member)
        lr = self.optimizer.current_lr(member)
        if lr is not None:
            rates["lr"] = lr
        return rates

    def fit(self, callbacks: Sequence[FusedCallback] = ()) -> list[list[dict[str, float]]]:
        for cb in callbacks:
            cb.on_train_start(self)
        while self.epoch < self.epochs and self.active:
            start = time.perf_counter()
            active = self.active
            metrics: list[dict[str, float] | None] = list(self.train_epoch(callbacks))
            train_time = time.perf_counter() - start
            flips = member_flip_metrics(self.optimizer.read_flips(), self.layer_names, self.members)
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
