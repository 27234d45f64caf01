"""The spec's typed, frozen model: what a sweep is, whichever tool's words it uses.

:class:`SweepSpec` takes bopsweep's keys and, beside them, W&B's (``project``,
``run_cap``, ``early_terminate``, ``metric.goal``, nested ``parameters``; its agent
settings ``program``, ``command``, ``entity``, ``controller`` are accepted and not
used) and Ray Tune's (``metric: NAME`` with ``mode``, ``num_samples``, its search
space functions). :func:`read_spec_forms` rewrites the other tools' places into
bopsweep's before validation, so the rest of the code sees one shape.

Checks that need several keys at once (the method against each parameter, a count
for a random search) are :func:`cross_problems`, written to run on a valid model
and, piece by piece, on a spec whose other parts failed: every problem of a spec is
reported in one run. The JSON Schema editors use is generated from the same model
(:func:`json_schema`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bopsweep.config import HPARAM_KEYS, TrainConfig
from bopsweep.sweep.spec.parameters import (
    RAY_FORMS,
    UNBOUNDED,
    ParameterSpec,
    flatten_parameters,
    is_sampled,
)


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class MetricSpec(_Strict):
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


# ---------------------------------------------------------------- early stopping
class SchedulerSpec(_Strict):
    """Early stopping of poor trials, in epochs: ``asha`` (asynchronous successive
    halving), ``hyperband`` (synchronous HyperBand: pauses and resumes trials),
    ``median`` (median stopping rule) or ``fifo`` (none)."""

    type: Literal["asha", "hyperband", "median", "fifo"] = "asha"
    grace_period: int = Field(
        1, gt=0, description="asha, median: epochs before a trial may be stopped"
    )
    reduction_factor: float = Field(2.0, gt=1, description="asha, hyperband: eta")
    brackets: int = Field(1, gt=0, description="asha: brackets")
    max_t: int | None = Field(None, gt=0, description="asha, hyperband: at most this many epochs")
    min_samples_required: int = Field(
        3, gt=0, description="median: trials that must report before one is stopped"
    )


# W&B computes up to 100 cut points from min_iter; none beyond this many epochs matters.
MAX_CUT_POINT = 1_000_000


def wandb_cut_points(
    min_iter: int | None, max_iter: int | None, s: int | None, eta: float
) -> list[int]:
    """The epochs at which W&B's hyperband compares runs (its "bands"), computed and
    rounded as wandb/sweeps ``hyperband_stopping.py`` does: from ``max_iter``,
    ``int(max_iter / eta**k)`` for k = 1..s (those >= 1); else ``int(min_iter *
    eta**k)`` for k = 0, 1, ... ``max_iter`` wins when both are given."""
    bands: list[int] = []
    if max_iter is not None:
        band: float = max_iter
        for _ in range(s or 0):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
    elif min_iter is not None:
        band = min_iter
        for _ in range(100):
            bands.append(int(band))
            band *= eta
    return sorted({b for b in bands if b <= MAX_CUT_POINT})


class WandbHyperbandSpec(_Strict):
    """W&B's hyperband stopping as bopsweep runs it (:mod:`bopsweep.sweep.hyperband`):
    at each cut point, the runs' metric there; a trial past a cut point whose value
    (strict: at the cut point; else its best so far) is behind the best ``1/eta`` of
    them stops."""

    type: Literal["wandb_hyperband"] = "wandb_hyperband"
    cut_points: list[int]
    eta: float
    strict: bool


class EarlyTerminateSpec(_Strict):
    """W&B's ``early_terminate``: its hyperband stopping, with its meaning of every key
    (wandb/sweeps ``hyperband_stopping.py``): cut points at ``min_iter * eta**k``, or
    ``s`` of them below ``max_iter`` (``max_iter / eta**k``), rounded down."""

    type: Literal["hyperband"]
    min_iter: int | None = Field(None, ge=1, description="the first cut point, in epochs")
    max_iter: int | None = Field(
        None, gt=0, description="with s: the cut points are max_iter / eta^k, k = 1..s"
    )
    s: int | None = Field(None, gt=0, description="with max_iter: the number of cut points")
    eta: float = Field(3.0, gt=1, description="cut point multiplier; the best 1/eta go on")
    strict: bool = Field(
        True,
        description="compare a trial's value at the cut point (W&B's default since 2024), "
        "not its best so far",
    )

    @model_validator(mode="after")
    def _cut_points(self) -> EarlyTerminateSpec:
        if self.max_iter is not None and self.s is None:
            raise ValueError("max_iter needs s, the number of cut points below it (W&B's rule)")
        if self.max_iter is None and self.min_iter is None:
            raise ValueError("hyperband needs min_iter (or max_iter with s)")
        if not self.cut_points:
            raise ValueError(
                f"no cut point: max_iter {self.max_iter} / eta {self.eta:g} is below 1. "
                "Try increasing s, decreasing eta, or increasing min_iter (W&B's advice)"
            )
        return self

    @property
    def cut_points(self) -> list[int]:
        return wandb_cut_points(self.min_iter, self.max_iter, self.s, self.eta)

    def as_scheduler(self) -> WandbHyperbandSpec:
        return WandbHyperbandSpec(cut_points=self.cut_points, eta=self.eta, strict=self.strict)


def asha_rungs(stopping: SchedulerSpec, max_t: int) -> list[int]:
    """The epochs at which Ray Tune's ASHA (first bracket) may stop a trial: its
    milestones ``grace_period * reduction_factor**k`` below ``max_t``, each reached
    once a trial has trained that many epochs."""
    grace, factor = stopping.grace_period, stopping.reduction_factor
    if max_t < grace:
        return []
    count = int(math.log(max_t / grace) / math.log(factor) + 1)
    milestones = (grace * factor**k for k in range(count))
    return sorted({math.ceil(m) for m in milestones if m < max_t})


def stopping_summary(
    stopping: SchedulerSpec | WandbHyperbandSpec | None, epochs: int
) -> str | None:
    """How ``plan`` says when trials of at most ``epochs`` epochs may be stopped."""
    if stopping is None or stopping.type == "fifo":
        return None
    if isinstance(stopping, WandbHyperbandSpec):
        points = [p for p in stopping.cut_points if p < epochs]
        head = f"early stopping: W&B's hyperband (eta {stopping.eta:g}"
        head += ", strict)" if stopping.strict else ")"
        if not points:
            return f"{head}: no cut point below the trials' {epochs} epochs, none is stopped"
        value = "value at its last cut point" if stopping.strict else "best value so far"
        return (
            f"{head}: trials compared at epochs {', '.join(map(str, points))} (of {epochs}); "
            f"after each epoch from epoch {points[0]} on, a trial whose {value} is behind "
            f"the best 1/{stopping.eta:g} at that cut point is stopped"
        )
    if stopping.type == "asha":
        max_t = stopping.max_t or epochs
        rungs = asha_rungs(stopping, min(max_t, epochs))
        where = f"at epochs {', '.join(map(str, rungs))}" if rungs else "at no epoch (grace_period)"
        brackets = f", {stopping.brackets} brackets" if stopping.brackets > 1 else ""
        return (
            f"early stopping: asha{brackets}: a trial behind the best "
            f"1/{stopping.reduction_factor:g} may be stopped {where}"
            + (f"; trials end at max_t {max_t}" if max_t < epochs else "")
        )
    if stopping.type == "median":
        return (
            f"early stopping: median: from epoch {stopping.grace_period} on, any epoch "
            f"(once {stopping.min_samples_required} trials reported)"
        )
    return f"early stopping: {stopping.type} (Ray Tune's synchronous HyperBand: pauses trials)"


# ----------------------------------------------------------------- the rest of it
class ResourcesSpec(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, description="fractional GPUs pack trials on one GPU")


class TrackingSpec(_Strict):
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


class CheckpointSpec(_Strict):
    """When trials checkpoint: always after their last epoch, and in between when
    ``every_s`` seconds have passed since the last checkpoint or every ``every``
    epochs (either may be null). A crash loses at most that much training, never a
    logged epoch."""

    every: int | None = Field(None, gt=0, description="also checkpoint every N epochs")
    every_s: float | None = Field(
        60.0, gt=0, description="checkpoint when this many seconds passed since the last one"
    )
    keep: int = Field(2, gt=0, description="checkpoints kept per trial")


# W&B's keys for its agent and account: accepted so its specs load, not used.
WANDB_IGNORED = ("program", "command", "entity", "controller")


def name_from(stem: str) -> str:
    """A sweep name from a file name: the characters a results folder takes."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).lstrip("_.-")
    return name or "sweep"


def read_spec_forms(data: Any, default_name: str | None = None) -> Any:
    """W&B's and Ray Tune's places for what bopsweep keeps elsewhere, moved there:
    nested parameters -> dotted names; ``metric: NAME`` + ``mode`` -> ``metric``;
    ``project`` -> ``tracking.experiment`` (unless given); no ``method``: random when
    a parameter is drawn (as Ray Tune samples), else grid; ``run_cap`` -> the
    ``num_samples`` of a random or bayes search that gives none; no ``name``:
    ``default_name`` (the file's). Never raises: what does not fit is left for the
    validation to report."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "name" not in data and default_name is not None:
        data["name"] = default_name
    if isinstance(data.get("metric"), str):
        data["metric"] = {"name": data["metric"]}
    mode = data.get("mode")
    if mode is not None and isinstance(data.get("metric"), dict):
        metric = dict(data["metric"])
        if "mode" not in metric:
            metric["mode"] = mode
            del data["mode"]
        elif metric["mode"] == mode:
            del data["mode"]
        data["metric"] = metric
    if isinstance(data.get("parameters"), dict):
        data["parameters"] = flatten_parameters(data["parameters"])
    if "method" not in data:
        params = data.get("parameters")
        sampled = isinstance(params, dict) and any(is_sampled(p) for p in params.values())
        data["method"] = "random" if sampled else "grid"
    if (
        data.get("method") in ("random", "bayes")
        and "num_samples" not in data
        and data.get("run_cap") is not None
    ):
        data["num_samples"] = data["run_cap"]
    project = data.get("project")
    tracking = data.get("tracking", {})
    if project is not None and isinstance(tracking, dict) and tracking.get("experiment") is None:
        data["tracking"] = {**tracking, "experiment": project}
    return data


class SweepSpec(_Strict):
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


# ------------------------------------------------------------------------- schema
SCHEMA_FILE = "sweeps/schema.json"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec, for editors (``bopsweep schema``, ``sweeps/schema.json``).

    Pydantic's schema of :class:`SweepSpec`, with the registries' names as the
    choices of ``train.model``, ``dataset``, ``preprocess_fn`` and ``hparams_set``,
    and the keys of ``train.hparams`` and ``parameters`` (dotted, or ``hparams`` as
    a nested block), so an editor completes them and flags unknown ones as
    ``bopsweep plan`` does."""
    from bopsweep.bnn.models import model_names
    from bopsweep.config import HPARAM_SETS, HParams
    from bopsweep.data import DATASETS, PREPROCESS_FNS

    schema = SweepSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bopsweep sweep spec"
    # W&B's name is optional: bopsweep takes the file's.
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    train = schema["$defs"]["TrainConfig"]["properties"]
    train["model"]["enum"] = model_names()
    train["dataset"]["enum"] = sorted(DATASETS)
    train["preprocess_fn"]["enum"] = sorted(PREPROCESS_FNS)
    train["hparams_set"]["enum"] = sorted({name for sets in HPARAM_SETS.values() for name in sets})
    hparams = HParams.model_json_schema()
    train["hparams"] = {
        "type": "object",
        "description": "overrides of the hparams set",
        "properties": hparams["properties"],
        "additionalProperties": False,
    }
    # Metric names trials report (the layer flip ratios by their prefix).
    metric = schema["$defs"]["MetricSpec"]["properties"]["name"]
    metric["anyOf"] = [
        {"enum": list(EPOCH_METRICS)},
        {"type": "string", "pattern": f"^{re.escape(LAYER_METRIC_PREFIX)}"},
    ]
    schema["properties"]["metric"] = {
        "anyOf": [{"$ref": "#/$defs/MetricSpec"}, {"enum": list(EPOCH_METRICS)}],
        "description": "the metric, or (Ray Tune) its name with mode: beside it",
    }
    # A parameter: its own fields, a bare constant (Ray Tune), or a nested block.
    parameter = {"$ref": "#/$defs/ParameterSpec"}
    nested = {
        "type": "object",
        "properties": {"parameters": {"type": "object", "additionalProperties": parameter}},
        "required": ["parameters"],
        "additionalProperties": False,
    }
    names = swept_keys()
    schema["properties"]["parameters"]["propertyNames"] = {"enum": [*names, "hparams"]}
    schema["properties"]["parameters"]["additionalProperties"] = {
        "anyOf": [parameter, nested, {"type": ["string", "number", "boolean"]}]
    }
    spec = schema["$defs"]["ParameterSpec"]
    spec["description"] += " Ray Tune's forms: " + ", ".join(RAY_FORMS) + "."
    return schema


def json_schema_text() -> str:
    import json

    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
