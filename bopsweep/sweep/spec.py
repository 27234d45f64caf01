"""YAML sweep specs: load safely, validate against a schema, expand into trials.

A spec is a base training config (``train:``, the keys of ``bopsweep train``), the
parameters to sweep (dot paths into ``train``, grid ``values`` or distributions with
W&B's names), the search method, seeds, the metric, early stopping, resources and
tracking. W&B's spellings are accepted where they exist (``metric.goal``,
``early_terminate``, ``log_uniform`` as exponents), so its users' specs carry over.

Errors point at the file and line: the YAML is composed once more into nodes,
which keep their positions, and a validation error's field path is looked up there.
Grid and random trials are expanded here, deterministically, so ``bopsweep plan``
shows exactly what ``bopsweep run`` will run; a bayes search's values are proposed
while it runs (:mod:`bopsweep.sweep.search`). The JSON Schema editors use is
generated here from the same model (:func:`json_schema`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bopsweep.config import HPARAM_KEYS, TrainConfig, make_train_config
from bopsweep.errors import UserError

# Limits that keep a hostile or mistyped spec from exhausting the machine before
# anything starts: an alias "billion laughs" and grids nobody means to run.
MAX_SPEC_BYTES = 1_000_000
MAX_YAML_NODES = 100_000
MAX_TRIALS = 100_000


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-6`` as a float as YAML 1.2 does.

    YAML 1.1 needs a dot (``1.0e-6``); without this, every threshold written the
    way papers write it would arrive as a string.
    """


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# W&B's distribution names. ``log_uniform`` takes exponents as in W&B (values
# e^min..e^max); ``*_values`` take the values themselves; ``q_*`` round to ``q``.
DISTRIBUTIONS = (
    "uniform",
    "q_uniform",
    "int_uniform",
    "log_uniform",
    "q_log_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
)
Distribution = Literal[
    "uniform",
    "q_uniform",
    "int_uniform",
    "log_uniform",
    "q_log_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
]


class ParameterSpec(_Strict):
    """One swept key: ``values`` (grid, or a choice for random and bayes), ``value``
    (fixed) or a ``distribution`` between ``min`` and ``max`` (W&B's names)."""

    values: list[Any] | None = Field(None, description="grid values, or the choices of a search")
    value: Any = Field(None, description="a fixed value")
    distribution: Distribution | None = Field(
        None,
        description="log_uniform: min/max are exponents (values e^min..e^max), as in W&B; "
        "log_uniform_values: min/max are the values",
    )
    min: float | None = None
    max: float | None = None
    q: float | None = Field(None, gt=0, description="round to multiples of q (q_*: default 1)")

    @model_validator(mode="after")
    def _one_kind(self) -> ParameterSpec:
        kinds = [self.values is not None, self.value is not None, self.distribution is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of 'values', 'value' or 'distribution'")
        if self.values is not None and not self.values:
            raise ValueError("'values' is empty: a grid needs at least one value")
        if self.distribution is not None:
            if self.min is None or self.max is None:
                raise ValueError(f"distribution {self.distribution!r} needs 'min' and 'max'")
            if self.min >= self.max:
                raise ValueError(f"'min' ({self.min}) must be below 'max' ({self.max})")
            if self.distribution.endswith("log_uniform_values") and self.min <= 0:
                raise ValueError(f"{self.distribution} needs min > 0 (they are the values)")
            if self.distribution.endswith("log_uniform") and self.min > 0:
                # bopsweep's log_uniform took the values until W&B's meaning was adopted:
                # every such spec has min > 0, which as an exponent would mean values
                # above e. Refused rather than silently read the other way.
                raise ValueError(
                    f"{self.distribution} takes exponents as in W&B (values e^min..e^max), "
                    f"and min {self.min:g} > 0 reads as a value: write distribution: "
                    f"{self.distribution}_values with min: {self.min:g}, max: {self.max:g}, "
                    f"or min/max as exponents (min: {math.log(self.min):.4g}, "
                    f"max: {math.log(self.max):.4g})"
                )
        return self

    @property
    def step(self) -> float | None:
        """The rounding step: ``q``, 1 for the ``q_*`` distributions by default."""
        if self.q is None and (self.distribution or "").startswith("q_"):
            return 1.0
        return self.q

    @property
    def bounds(self) -> tuple[float, float]:
        """The range of values drawn (exponents turned into values)."""
        if self.distribution in ("log_uniform", "q_log_uniform"):
            return math.exp(self.min), math.exp(self.max)
        return self.min, self.max

    def sample(self, rng: random.Random) -> Any:
        low, high = self.bounds
        if self.distribution == "int_uniform":
            value: float = rng.randint(int(low), int(high))
        elif "log_uniform" in (self.distribution or ""):
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        if self.step is not None:
            value = round(value / self.step) * self.step
        return int(value) if self.distribution == "int_uniform" else value

    def describe(self) -> str:
        """How ``plan`` shows a parameter's search space."""
        if self.values is not None:
            return f"one of {self.values}"
        if self.distribution is None:
            return f"fixed {self.value!r}"
        low, high = self.bounds
        step = f", step {self.step:g}" if self.step is not None else ""
        return f"{self.distribution} [{low:g}, {high:g}]{step}"


class MetricSpec(_Strict):
    """The metric trials are ranked by; ``goal`` is W&B's name for ``mode``."""

    name: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    goal: Literal["maximize", "minimize"] | None = Field(
        None, description="W&B's name for mode: maximize (max) or minimize (min)"
    )
    target: float | None = Field(
        None, description="stop the sweep once a trial reaches this value of the metric"
    )

    @model_validator(mode="before")
    @classmethod
    def _goal_is_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("goal") in GOALS:
            mode = GOALS[data["goal"]]
            if data.get("mode", mode) != mode:
                raise ValueError(
                    f"goal {data['goal']!r} contradicts mode {data['mode']!r}: give one of them"
                )
            data = {**data, "mode": mode}
        return data

    def reached(self, value: float) -> bool:
        """Whether ``value`` meets the target."""
        if self.target is None or value is None or math.isnan(value):
            return False
        return value >= self.target if self.mode == "max" else value <= self.target


GOALS = {"maximize": "max", "minimize": "min"}


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


class EarlyTerminateSpec(_Strict):
    """W&B's ``early_terminate`` (its hyperband is asynchronous: run by ASHA)."""

    type: Literal["hyperband"]
    min_iter: int | None = Field(None, gt=0, description="first bracket, in epochs")
    max_iter: int | None = Field(None, gt=0, description="at most this many epochs")
    eta: float = Field(3.0, gt=1, description="bracket multiplier")
    s: int = Field(1, gt=0, description="number of brackets")
    strict: bool = Field(False, description="accepted for W&B specs; ASHA has no strict mode")

    @model_validator(mode="after")
    def _an_iter(self) -> EarlyTerminateSpec:
        if self.min_iter is None and self.max_iter is None:
            raise ValueError("hyperband needs min_iter (or max_iter with s)")
        return self

    def as_scheduler(self) -> SchedulerSpec:
        grace = self.min_iter or max(1, round(self.max_iter / self.eta**self.s))
        return SchedulerSpec(
            type="asha",
            grace_period=grace,
            reduction_factor=self.eta,
            brackets=self.s,
            max_t=self.max_iter,
        )


class ResourcesSpec(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, description="fractional GPUs pack trials on one GPU")


class TrackingSpec(_Strict):
    experiment: str | None = Field(None, description="MLflow experiment; default: the name")
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


class SweepSpec(_Strict):
    """A sweep: the base training config, what to sweep and how to run it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    train: TrainConfig
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)
    method: Literal["grid", "random", "bayes"] = Field(
        "grid", description="bayes: Optuna's TPE sampler proposes each configuration"
    )
    num_samples: int = Field(1, gt=0, description="random, bayes: configurations tried")
    search_seed: int = 0
    seeds: list[int] | None = Field(None, min_length=1)
    metric: MetricSpec = Field(default_factory=MetricSpec)
    scheduler: SchedulerSpec | None = None
    early_terminate: EarlyTerminateSpec | None = Field(
        None, description="W&B's form of scheduler: {type: hyperband, min_iter, eta, s}"
    )
    time_budget_s: float | None = Field(
        None, gt=0, description="stop the sweep after this many seconds"
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent_trials: int | None = Field(None, gt=0)
    max_failures: int = Field(3, ge=0)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: str | None = None
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    fuse: Literal["auto", "off"] | int = Field(
        "auto",
        description="train trials that differ only in per-member values (threshold, "
        "gamma, sigma, lr, weight decay, their schedules, seed) as one stacked model: "
        "auto (where measured to pay on the device), off, or N (groups of at most N)",
    )

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
    def _known_parameters(self) -> SweepSpec:
        fields = set(TrainConfig.model_fields) - {"hparams"}
        for key in self.parameters:
            head, _, rest = key.partition(".")
            if head == "hparams" and rest in HPARAM_KEYS:
                continue
            if key in fields:
                continue
            valid = sorted(fields) + [f"hparams.{k}" for k in HPARAM_KEYS]
            raise ValueError(f"unknown parameter {key!r}; choose from: {', '.join(valid)}")
        if self.method == "grid" and any(p.distribution for p in self.parameters.values()):
            raise ValueError(
                "method 'grid' takes 'values' only; use method: random or bayes for distributions"
            )
        if self.scheduler is not None and self.early_terminate is not None:
            raise ValueError("give either 'scheduler' or 'early_terminate', not both")
        return self

    @property
    def stopping(self) -> SchedulerSpec | None:
        """The early-stopping scheduler, from ``scheduler`` or ``early_terminate``."""
        if self.early_terminate is not None:
            return self.early_terminate.as_scheduler()
        return self.scheduler

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name


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
    and the keys of ``train.hparams`` and ``parameters``, so an editor completes
    them and flags unknown ones as ``bopsweep plan`` does."""
    from bopsweep.bnn.models import model_names
    from bopsweep.config import HPARAM_SETS, HParams
    from bopsweep.data import DATASETS, PREPROCESS_FNS

    schema = SweepSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bopsweep sweep spec"
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
    swept = sorted(set(TrainConfig.model_fields) - {"hparams"})
    schema["properties"]["parameters"]["propertyNames"] = {
        "enum": swept + [f"hparams.{k}" for k in HPARAM_KEYS]
    }
    return schema


def json_schema_text() -> str:
    import json

    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


# ------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class LoadedSpec:
    spec: SweepSpec
    path: Path
    text: str
    raw: dict[str, Any]

    @property
    def sha256(self) -> str:
        """Hash of the spec as resolved (overrides included): identifies a sweep."""
        canonical = yaml.safe_dump(self.spec.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _count_nodes(node: yaml.Node, budget: list[int]) -> None:
    # Aliases share nodes in the graph; counting them as expanded is what a consumer
    # walking the data would pay, so that is what is limited.
    budget[0] -= 1
    if budget[0] < 0:
        raise UserError(
            f"YAML too large once aliases are expanded (over {MAX_YAML_NODES} nodes): "
            "refusing a possible alias bomb"
        )
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _count_nodes(child, budget)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _count_nodes(key, budget)
            _count_nodes(value, budget)


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if getattr(k, "value", None) == str(part)]
            if not match:
                break
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _format_validation(error: ValidationError, path: Path, root: yaml.Node | None) -> str:
    first = error.errors()[0]
    loc = tuple(p for p in first["loc"] if not str(p).startswith("function-"))
    field = ".".join(str(p) for p in loc)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        parent = _schema_at(loc[:-1])
        valid = ", ".join(parent.model_fields) if parent else ""
        message = f"unknown key {loc[-1]!r}" + (f"; valid keys: {valid}" if valid else "")
    elif first["type"] == "missing":
        message = "required key is missing"
    elif "input" in first and first["type"] not in ("value_error",):
        message += f" (got {first['input']!r})"
    line = _line_of(root, loc)
    where = f"{path}:{line}" if line else str(path)
    return f"{where}: {field or 'spec'}: {message}"


def _schema_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = SweepSpec
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=1`` -> (["train", "epochs"], 1); values typed as YAML scalars."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects key=value (a dot path into the spec), got {text!r}")
    try:
        parsed = yaml.load(value, Loader=SpecLoader) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = raw
    i = 0
    while i < len(path) - 1:
        part = path[i]
        if part == "parameters" and isinstance(node.get(part), dict):
            # Parameter names are dot paths themselves: match the longest one.
            params = node[part]
            rest = path[i + 1 :]
            for cut in range(len(rest) - 1, 0, -1):
                candidate = ".".join(rest[:cut])
                if candidate in params or cut == len(rest) - 1:
                    node = params.setdefault(candidate, {})
                    i += 1 + cut
                    break
            continue
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {'.'.join(path)}: {part!r} is not a mapping")
        node = child
        i += 1
    node[path[-1]] = value


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedSpec:
    """Read, validate and apply ``--set`` overrides, or raise one clear UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"spec file not found: {path}")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise UserError(f"{path}: spec larger than {MAX_SPEC_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        # A binary file or another encoding passed by mistake: say so, not a traceback.
        raise UserError(
            f"{path}: not a text file (UTF-8): byte 0x{error.object[error.start]:02x} at "
            f"offset {error.start} cannot be decoded; a spec is a YAML text file"
        ) from None
    try:
        root = yaml.compose(text, Loader=SpecLoader)
        if root is not None:
            _count_nodes(root, [MAX_YAML_NODES])
        raw = yaml.load(text, Loader=SpecLoader)  # a SafeLoader: no object construction
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = error.problem or str(error)
        if error.context and error.context_mark is not None:
            problem += f" ({error.context} started at line {error.context_mark.line + 1})"
        if "constructor" in problem:
            problem += " (specs are plain YAML: tags that construct objects are refused)"
        raise UserError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else f"a {type(raw).__name__}"
        raise UserError(f"{path}: a spec must be a mapping of keys (name, train, ...), got {kind}")
    for override in overrides:
        apply_override(raw, *parse_override(override))
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise UserError(_format_validation(error, path, root)) from None
    loaded = LoadedSpec(spec, path, text, raw)
    expand(loaded)  # every trial must validate before anything starts
    return loaded


# ----------------------------------------------------------------------- expansion
def _set_path(values: dict[str, Any], key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if head == "hparams":
        values["hparams"] = {**values.get("hparams", {}), rest: value}
    else:
        values[key] = value


def count_trials(spec: SweepSpec) -> int:
    seeds = len(spec.seeds) if spec.seeds else 1
    if spec.method in ("random", "bayes"):
        return spec.num_samples * seeds
    return (
        math.prod(len(p.values) if p.values is not None else 1 for p in spec.parameters.values())
        * seeds
    )


def searched(spec: SweepSpec) -> dict[str, ParameterSpec]:
    """The parameters a bayes searcher proposes values for (all but fixed ones)."""
    return {k: p for k, p in spec.parameters.items() if p.value is None}


def fixed(spec: SweepSpec) -> dict[str, Any]:
    return {k: p.value for k, p in spec.parameters.items() if p.value is not None}


def make_trial(spec: SweepSpec, index: int, swept: dict[str, Any], where: Path | str) -> Trial:
    """Trial ``index`` with the ``swept`` values (a ``seed`` among them) set on the base
    config; a value the training config refuses is a UserError naming ``where``."""
    base = spec.train.model_dump()
    values = {**base, "hparams": dict(base["hparams"])}
    for key, value in swept.items():
        _set_path(values, key, value)
    try:
        config = make_train_config(**values)
    except UserError as error:
        raise UserError(f"{where}: trial with {swept}: {error}") from None
    return Trial(index, dict(swept), config)


def _probes(spec: SweepSpec) -> list[dict[str, Any]]:
    """For a search whose values are proposed as it runs: one configuration per
    choice and per end of each range, so a value out of bounds is refused up front."""
    probes = []
    for key, param in searched(spec).items():
        ends = list(param.values) if param.values is not None else list(param.bounds)
        if param.distribution == "int_uniform":
            ends = [int(v) for v in ends]
        probes += [{key: value} for value in ends]
    return probes


def expand(loaded: LoadedSpec) -> list[Trial]:
    """The trials of the sweep, in a fixed order: configurations, then seeds.

    With ``method: bayes`` the searcher proposes each configuration while the sweep
    runs: the trials here are placeholders holding only the fixed values and the
    seed (every choice and range end is validated against the training config)."""
    spec = loaded.spec
    total = count_trials(spec)
    if total > MAX_TRIALS:
        raise UserError(
            f"{loaded.path}: the sweep expands to {total:,} trials (limit {MAX_TRIALS:,}): "
            "narrow the grid or use method: random with num_samples"
        )
    if spec.method == "bayes":
        for probe in _probes(spec):
            make_trial(spec, 0, {**fixed(spec), **probe}, loaded.path)
        configurations = [fixed(spec)] * spec.num_samples
    elif spec.method == "random":
        rng = random.Random(spec.search_seed)
        configurations = [
            {
                k: (
                    p.sample(rng)
                    if p.distribution
                    else p.value
                    if p.values is None
                    else rng.choice(p.values)
                )
                for k, p in spec.parameters.items()
            }
            for _ in range(spec.num_samples)
        ]
    else:
        keys = list(spec.parameters)
        grids = [p.values if p.values is not None else [p.value] for p in spec.parameters.values()]
        configurations = [
            dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grids)
        ]
    trials = []
    for swept in configurations:
        for seed in spec.seeds or [None]:
            shown = dict(swept) if seed is None else {**swept, "seed": seed}
            trials.append(make_trial(spec, len(trials), shown, loaded.path))
    return trials
