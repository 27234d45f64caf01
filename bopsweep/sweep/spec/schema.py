"""The spec's typed, frozen model: what a sweep is, whichever tool's words it uses.

:class:`SweepSpec` takes bopsweep's keys and, beside them, W&B's (``project``,
``run_cap``, ``early_terminate``, ``metric.goal``, nested ``parameters``; its agent
settings ``program``, ``command``, ``entity``, ``controller`` are accepted and not
used) and Ray Tune's (``metric: NAME`` with ``mode``, ``num_samples``, its search
space functions). :mod:`~bopsweep.sweep.spec.forms` rewrites the other tools'
places into bopsweep's before validation, so the rest of the code sees one shape.

Checks that need several keys at once (the method against each parameter, a count
for a random search) are :func:`cross_problems`, written to run on a valid model
and, piece by piece, on a spec whose other parts failed: every problem of a spec is
reported in one run. The JSON Schema editors use is generated from the same model
(:mod:`~bopsweep.sweep.spec.json_schema`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bopsweep.config import TrainConfig
from bopsweep.hparams import HPARAM_KEYS
from bopsweep.sweep.spec.forms import name_from, read_spec_forms
from bopsweep.sweep.spec.parameters import ParameterSpec, StrictModel
from bopsweep.sweep.spec.stopping import EarlyTerminateSpec, SchedulerSpec, WandbHyperbandSpec
from bopsweep.sweep.spec.vocabulary import UNBOUNDED

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

# What a trial reports after each epoch (bopsweep/train.py's history, with
# bnn/metrics.py's flip ratios): the names a sweep's metric can take. test_* only
# with train.validation_split (val is the test set otherwise); top-5 accuracies for
# datasets of more than five classes.
EPOCH_METRICS = (
    "val_accuracy",
    "val_loss",
    "val_top5_accuracy",
    "test_accuracy",
    "test_loss",
    "test_top5_accuracy",
    "train_accuracy",
    "train_loss",
    "train_top5_accuracy",
    "flip_ratio",
    "log_flip_ratio",
    "gamma",
    "threshold",
    "lr",
    "epoch_time_s",
    "samples_per_s",
    "epoch",
)
LAYER_METRIC_PREFIX = "flip_ratio/"  # flip_ratio/<layer>: one per binary layer


def swept_keys() -> list[str]:
    """The parameter names a sweep can vary: ``train``'s keys and ``hparams.*``."""
    fields = sorted(set(TrainConfig.model_fields) - {"hparams"})
    return fields + [f"hparams.{k}" for k in HPARAM_KEYS]


def _known_parameter(key: str) -> str:
    head, _, rest = key.partition(".")
    if (head == "hparams" and rest in HPARAM_KEYS) or (
        key in TrainConfig.model_fields and key != "hparams"
    ):
        return key
    raise ValueError(f"unknown parameter {key!r}; choose from: {', '.join(swept_keys())}")


ParameterName = Annotated[str, AfterValidator(_known_parameter)]


class SpecProblems(ValueError):
    """Several problems, each at its place in the spec: ``[(loc, message), ...]``."""

    def __init__(self, problems: list[tuple[tuple[Any, ...], str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


# -------------------------------------------------------------------------- metric
GOALS = {"maximize": "max", "minimize": "min"}


def _direction_hint(name: str) -> str:
    if name.endswith(("loss", "_s")):
        return " (lower is better for it)"
    if name.endswith(("accuracy", "per_s")):
        return " (higher is better for it)"
    return ""


class MetricSpec(StrictModel):
    """The metric trials are ranked by (W&B's ``metric``; Ray Tune's ``metric`` and
    ``mode``). A named metric needs its direction: W&B minimizes by default, Ray
    Tune has none and bopsweep maximized, so a spec that leaves it out is refused."""

    name: str = Field(
        "val_accuracy", description="what a trial reports each epoch (val_accuracy, val_loss, ...)"
    )
    mode: Literal["max", "min"] = "max"
    goal: Literal["maximize", "minimize"] | None = Field(
        None, description="W&B's name for mode: maximize (max) or minimize (min)"
    )
    target: float | None = Field(
        None, description="stop the sweep once a trial reaches this value of the metric"
    )
    impute: str | None = Field(None, exclude=True, description="W&B's bayes search only: ignored")
    impute_while_running: str | bool | None = Field(
        None, exclude=True, description="W&B's bayes search only: ignored"
    )

    @model_validator(mode="before")
    @classmethod
    def _goal_is_mode(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "name" in data and "goal" not in data and "mode" not in data:
            name = data["name"]
            raise ValueError(
                f"metric {name!r} has no goal: W&B minimizes by default, Ray Tune needs a "
                f"mode and bopsweep used to maximize, so say which{_direction_hint(str(name))}: "
                "goal: minimize or goal: maximize (or mode: min | max)"
            )
        if data.get("goal") in GOALS:
            mode = GOALS[data["goal"]]
            if data.get("mode", mode) != mode:
                raise ValueError(
                    f"goal {data['goal']!r} contradicts mode {data['mode']!r}: give one of them"
                )
            data = {**data, "mode": mode}
        return data

    @field_validator("name")
    @classmethod
    def _reported(cls, name: str) -> str:
        if name in EPOCH_METRICS or name.startswith(LAYER_METRIC_PREFIX):
            return name
        raise ValueError(
            f"trials do not report {name!r}; they report: {', '.join(EPOCH_METRICS)}, "
            f"{LAYER_METRIC_PREFIX}<layer>"
        )

    def reached(self, value: float) -> bool:
        """Whether ``value`` meets the target."""
        if self.target is None or value is None or math.isnan(value):
            return False
        return value >= self.target if self.mode == "max" else value <= self.target


# ----------------------------------------------------------------- the rest of it
class ResourcesSpec(StrictModel):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, description="fractional GPUs pack trials on one GPU")


class TrackingSpec(StrictModel):
    experiment: str | None = Field(
        None, description="MLflow experiment; default: W&B's project, then the name"
    )
    uri: str | None = None
    models: list[Literal["final", "best"]] = Field(
        default_factory=list,
        description="each trial's models logged as MLflow models (final, best); none by default",
    )
    register_model: str | None = Field(
        None, description="register the best trial's model under this name in the registry"
    )
    system_metrics_s: float | None = Field(
        5.0, gt=0, description="MLflow system metrics (CPU, memory, GPU) every N s; null: off"
    )

    @model_validator(mode="after")
    def _register_needs_models(self) -> TrackingSpec:
        if self.register_model and not self.models:
            raise ValueError("register_model needs models: [final] or [best] to register")
        return self


class CheckpointSpec(StrictModel):
    """When trials checkpoint: always after their last epoch, and in between when
    ``every_s`` seconds have passed since the last checkpoint or every ``every``
    epochs (either may be null). A crash loses at most that much training, never a
    logged epoch."""

    every: int | None = Field(None, gt=0, description="also checkpoint every N epochs")
    every_s: float | None = Field(
        60.0, gt=0, description="checkpoint when this many seconds passed since the last one"
    )
    keep: int = Field(2, gt=0, description="checkpoints kept per trial")


class SweepSpec(StrictModel):
    """A sweep: the base training config, what to sweep and how to run it."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="names the results folder and the MLflow parent run; default: the "
        "spec file's name",
    )
    description: str = ""
    train: TrainConfig
    parameters: dict[ParameterName, ParameterSpec] = Field(
        default_factory=dict,
        description="dot paths into train (hparams.gamma), or nested (W&B's parameters: "
        "blocks, Ray Tune's dicts)",
    )
    method: Literal["grid", "random", "bayes"] = Field(
        "grid",
        description="grid | random | bayes (Optuna's TPE sampler proposes each "
        "configuration). Default: random when a parameter is drawn, else grid",
    )
    num_samples: int = Field(
        1,
        gt=0,
        description="random, bayes: configurations tried; grid: times the grid is run "
        "(each with its own seed), as in Ray Tune",
    )
    run_cap: int | None = Field(
        None, gt=0, description="W&B: at most this many trials (random, bayes: the count)"
    )
    search_seed: int = 0
    seeds: list[int] | None = Field(None, min_length=1)
    metric: MetricSpec = Field(default_factory=MetricSpec)
    scheduler: SchedulerSpec | None = None
    early_terminate: EarlyTerminateSpec | None = Field(
        None, description="W&B's hyperband: {type: hyperband, min_iter | max_iter + s, eta}"
    )
    time_budget_s: float | None = Field(
        None, gt=0, description="stop the sweep after this many seconds"
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent_trials: int | None = Field(None, gt=0)
    max_failures: int = Field(
        3,
        ge=0,
        description="retries of a trial whose worker or node died (a trial's own failure is "
        "never retried), from its last checkpoint",
    )
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: str | None = None
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    fuse: Literal["auto", "off"] | int = Field(
        "auto",
        description="train trials that differ only in per-member values (threshold, "
        "gamma, sigma, lr, weight decay, their schedules, seed) as one stacked model: "
        "auto (where measured to pay on the device), off, or N (groups of at most N)",
    )
    # Other tools' keys: read into the fields above, or accepted and not used.
    mode: Literal["min", "max"] | None = Field(
        None, exclude=True, description="Ray Tune: the metric's mode, beside metric: NAME"
    )
    project: str | None = Field(
        None, exclude=True, description="W&B: the MLflow experiment (unless tracking.experiment)"
    )
    program: str | None = Field(None, exclude=True, description="W&B's agent: not used")
    command: list[Any] | None = Field(None, exclude=True, description="W&B's agent: not used")
    entity: str | None = Field(None, exclude=True, description="W&B's account: not used")
    controller: dict[str, Any] | None = Field(
        None, exclude=True, description="W&B's controller: not used"
    )

    @model_validator(mode="before")
    @classmethod
    def _other_forms(cls, data: Any, info: ValidationInfo) -> Any:
        context = info.context if isinstance(info.context, dict) else {}
        if isinstance(data, dict) and "method" not in data:
            context["method_inferred"] = True  # for the messages: nobody wrote it
        return read_spec_forms(data, context.get("default_name"))

    @field_validator("name", mode="before")
    @classmethod
    def _folder_name(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.match(NAME_PATTERN, value):
            raise ValueError(
                f"{value!r} names the results folder and the MLflow parent run: letters, "
                f"digits and _ . - only, e.g. name: {name_from(value)}"
            )
        return value

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse_words(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false (and `on` as true).
        if value is False:
            return "off"
        if value is True:
            return "auto"
        if value in ("auto", "off") or (isinstance(value, int) and value >= 1):
            return value
        raise ValueError(f"fuse takes auto, off or a group size (an integer >= 1), got {value!r}")

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> SweepSpec:
        given = set(self.model_fields_set)
        if isinstance(info.context, dict) and info.context.get("method_inferred"):
            given.discard("method")
        problems = cross_problems(
            method=self.method,
            parameters=self.parameters,
            given=given,
            num_samples=self.num_samples,
            run_cap=self.run_cap,
            seeds=self.seeds,
            has_scheduler=self.scheduler is not None,
            has_early_terminate=self.early_terminate is not None,
            metric=self.metric.name,
            validation_split=self.train.validation_split,
            leftover_mode=self.mode,
            metric_mode=self.metric.mode,
        )
        if problems:
            raise SpecProblems(problems)
        return self

    @property
    def stopping(self) -> SchedulerSpec | WandbHyperbandSpec | None:
        """The early-stopping scheduler, from ``scheduler`` or ``early_terminate``."""
        if self.early_terminate is not None:
            return self.early_terminate.as_scheduler()
        return self.scheduler

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name


def cross_problems(
    *,
    method: str | None,
    parameters: dict[str, ParameterSpec],
    given: Iterable[str],
    num_samples: int | None,
    run_cap: int | None,
    seeds: list[int] | None,
    has_scheduler: bool,
    has_early_terminate: bool,
    metric: str | None,
    validation_split: bool | None,
    leftover_mode: str | None,
    metric_mode: str | None,
) -> list[tuple[tuple[Any, ...], str]]:
    """What is wrong between keys, each at its place; ``None`` for a part that did not
    validate (it is reported on its own)."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    given = set(given)
    for key, param in parameters.items():
        where = ("parameters", key)
        if method == "grid":
            if param.probabilities is not None:
                problems.append(
                    (
                        where,
                        "probabilities weigh a random choice; a grid runs every value "
                        "(W&B refuses them in a grid too): use method: random",
                    )
                )
            elif param.grid_values() is None:
                problems.append(
                    (
                        where,
                        f"method 'grid' takes values (and int_uniform, q_uniform, which "
                        f"W&B expands); {param.distribution} is drawn at random: use method: "
                        "random or bayes",
                    )
                )
        elif method == "bayes":
            if param.grid_search is not None:
                problems.append(
                    (
                        where,
                        "grid_search runs every value, and Optuna proposes values: write "
                        f"values: {param.grid_search} (a choice Optuna searches), or use method: "
                        "random (the grid once per sample, as Ray Tune)",
                    )
                )
            elif param.probabilities is not None:
                problems.append(
                    (
                        where,
                        "Optuna's TPE has no weighted choice: leave probabilities out, or "
                        "use method: random",
                    )
                )
            elif param.distribution in UNBOUNDED:
                problems.append(
                    (
                        where,
                        f"{param.distribution} has no bounds for Optuna to search: use "
                        "method: random, or a distribution between min and max",
                    )
                )
    if method in ("random", "bayes") and "num_samples" not in given and run_cap is None:
        if "method" in given:
            why = f"method {method} draws until it is stopped in W&B"
        else:
            why = "parameters are drawn at random (no method: a random search, as in Ray Tune)"
        problems.append(
            (
                ("method",),
                f"{why}; bopsweep plans its trials up front: give run_cap: N "
                "(W&B) or num_samples: N (Ray Tune), or --set run_cap=N",
            )
        )
    if method == "grid" and num_samples is not None and num_samples > 1 and seeds:
        problems.append(
            (
                ("num_samples",),
                f"num_samples {num_samples} repeats the grid with seeds "
                "train.seed, train.seed + 1, ... (as Ray Tune repeats it); seeds: lists them "
                "itself: give one of the two",
            )
        )
    if has_scheduler and has_early_terminate:
        problems.append(
            (("early_terminate",), "give either 'scheduler' or 'early_terminate', not both")
        )
    if (
        metric is not None
        and metric.startswith("test_")
        and validation_split is False
        and "validation_split" not in parameters
    ):
        problems.append(
            (
                ("metric", "name"),
                f"{metric} is reported only with train.validation_split: "
                "true (without it, val_* is the test set): use val_" + metric.removeprefix("test_"),
            )
        )
    if leftover_mode is not None:
        if metric_mode is not None and "metric" in given:
            message = f"mode {leftover_mode} contradicts the metric's mode {metric_mode}"
        else:
            message = "mode (Ray Tune's) goes with metric: NAME"
        problems.append((("mode",), message))
    return problems


@dataclass(frozen=True)
class Trial:
    """One configuration of a sweep, with the values that make it differ."""

    index: int
    swept: dict[str, Any]
    train: TrainConfig

    @property
    def name(self) -> str:
        values = " ".join(
            f"{k.removeprefix('hparams.')}={_short(v)}" for k, v in self.swept.items()
        )
        return f"trial_{self.index:03d}" + (f" {values}" if values else "")


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
