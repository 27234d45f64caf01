"""Typed, frozen training configuration: everything one run needs, and which runs
can train fused.

A run's hyperparameters resolve as :mod:`bopsweep.hparams` says (defaults -> a named
set -> overrides); the resolved config is frozen before training starts and logged
with the run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bopsweep.bnn.models import canonical_model_name
from bopsweep.data import DATASETS, PREPROCESS_FNS
from bopsweep.errors import UserError, unknown_name
from bopsweep.hparams import HParams, resolve_hparams


class TrainConfig(BaseModel):
    """Everything one training run needs; the same keys as ``bopsweep train``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    dataset: str = "cifar10"
    preprocess_fn: str = "default"
    hparams_set: str = "default"
    hparams: dict[str, float | int | bool | str] = Field(default_factory=dict)
    epochs: int | None = Field(None, gt=0, description="overrides the hparams set's epochs")
    seed: int = 0
    data_dir: str = "data"
    download: bool = False
    device: str = "auto"
    max_train_samples: int | None = Field(None, gt=1)
    max_val_samples: int | None = Field(None, gt=0)
    validation_split: bool = Field(
        False,
        description="the original code's --validationset: hold out a fixed 10% of the "
        "training set as val (the metric to select on); the test set is logged as test_*",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16: forward passes under bfloat16 autocast (binary weights, Bop's "
        "state and the optimizers stay float32). auto: bf16 for models with convolutions "
        "on hardware that computes bf16 natively (CUDA compute capability >= 8.0, CPUs "
        "with AVX512-BF16 or AMX), fp32 otherwise: emulated bf16 is many times slower, "
        "and the dense-only MLP is slower under autocast even where bf16 is native. "
        "An explicit bf16 where it is not native warns once and runs (slowly). "
        "BOPSWEEP_NATIVE_BF16=0 or 1 overrides the hardware probe.",
    )
    compile: bool = Field(False, description="torch.compile the model (slow first steps)")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        try:
            return canonical_model_name(value)
        except UserError as error:  # pydantic reports ValueErrors with the field path
            raise ValueError(str(error)) from None

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(str(unknown_name("dataset", value, DATASETS)))
        return value

    @field_validator("preprocess_fn")
    @classmethod
    def _known_preprocess(cls, value: str) -> str:
        if value not in PREPROCESS_FNS:
            raise ValueError(str(unknown_name("preprocess fn", value, PREPROCESS_FNS)))
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError(f"unknown device {value!r}; valid devices: auto, cpu, cuda, cuda:N")
        return value

    def resolved_hparams(self) -> HParams:
        return resolve_hparams(self.model, self.hparams_set, dict(self.hparams), self.epochs)


def make_train_config(**values: Any) -> TrainConfig:
    """Build and fully validate a TrainConfig (hparams included) or raise UserError."""
    try:
        config = TrainConfig(**values)
    except ValidationError as error:
        raise UserError(_first_error(error)) from None
    config.resolved_hparams()
    return config


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"unknown key; valid keys: {', '.join(TrainConfig.model_fields)}"
    return f"{field}: {message}" if field else message


# ---------------------------------------------------------------- fused trials
# What may differ between the members of one fused group (bopsweep.train):
# each member's optimizers hold their own rates and schedules of them, and its
# own seed decides its initial weights and batch order. Everything else must match.
MEMBER_HPARAMS: frozenset[str] = frozenset(
    f"{rate}{suffix}"
    for rate in ("threshold", "gamma", "lr", "sigma")
    for suffix in ("", "_schedule", "_end", "_decay_factor", "_decay_epochs", "_decay_steps")
) & set(HParams.model_fields) | {"sigma", "weight_decay", "adam_epsilon"}
# The binary optimizers a fused group can train (bopsweep.bnn.fused.FusedBop and the
# latent-weight baseline); others train one trial per process.
FUSABLE_OPTIMIZERS: frozenset[str] = frozenset({"bop", "bop2", "latent"})
MEMBER_FIELDS: frozenset[str] = frozenset({"seed", "hparams"})


def fusion_key(config: TrainConfig) -> tuple:
    """What every member of a fused group has in common; configs with equal keys can
    train as one stacked model."""
    shared = {k: v for k, v in config.model_dump().items() if k not in MEMBER_FIELDS}
    hparams = config.resolved_hparams().model_dump()
    shared.update({f"hparams.{k}": v for k, v in hparams.items() if k not in MEMBER_HPARAMS})
    return tuple(sorted((k, repr(v)) for k, v in shared.items()))
