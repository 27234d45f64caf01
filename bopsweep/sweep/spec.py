"""YAML sweep specs: load safely, validate against a schema, expand into trials.

A spec is a base training config (``train:``, the keys of ``bopsweep train``), the
parameters to sweep (dot paths into ``train``, grid ``values`` or random-search
distributions with W&B-like names), seeds, the metric, resources and tracking.

Errors point at the file and line: the YAML is composed once more into nodes,
which keep their positions, and a validation error's field path is looked up there.
The trials are expanded here, deterministically, so ``bopsweep plan`` shows exactly
what ``bopsweep run`` will run.
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class ParameterSpec(_Strict):
    """One swept key: ``values`` (grid), ``value`` (fixed) or a ``distribution``."""

    values: list[Any] | None = None
    value: Any = None
    distribution: Literal["uniform", "log_uniform", "int_uniform"] | None = None
    min: float | None = None
    max: float | None = None
    q: float | None = Field(None, gt=0)

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
            if self.distribution == "log_uniform" and self.min <= 0:
                raise ValueError("log_uniform needs min > 0")
        return self

    def sample(self, rng: random.Random) -> Any:
        if self.distribution == "int_uniform":
            value: float = rng.randint(int(self.min), int(self.max))
        elif self.distribution == "log_uniform":
            value = math.exp(rng.uniform(math.log(self.min), math.log(self.max)))
        else:
            value = rng.uniform(self.min, self.max)
        if self.q is not None:
            value = round(value / self.q) * self.q
        return int(value) if self.distribution == "int_uniform" else value


class MetricSpec(_Strict):
    name: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"


class SchedulerSpec(_Strict):
    """Early stopping of poor trials (ASHA), in epochs."""

    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, gt=0)
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, gt=0)


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
    method: Literal["grid", "random"] = "grid"
    num_samples: int = Field(1, gt=0, description="random search: configurations drawn")
    search_seed: int = 0
    seeds: list[int] | None = Field(None, min_length=1)
    metric: MetricSpec = Field(default_factory=MetricSpec)
    scheduler: SchedulerSpec | None = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent_trials: int | None = Field(None, gt=0)
    max_failures: int = Field(0, ge=0)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: str | None = None
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)

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
                "method 'grid' takes 'values' only; use method: random for distributions"
            )
        return self

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
    if spec.method == "random":
        return spec.num_samples * seeds
    return (
        math.prod(len(p.values) if p.values is not None else 1 for p in spec.parameters.values())
        * seeds
    )


def expand(loaded: LoadedSpec) -> list[Trial]:
    """The trials of the sweep, in a fixed order: configurations, then seeds."""
    spec = loaded.spec
    total = count_trials(spec)
    if total > MAX_TRIALS:
        raise UserError(
            f"{loaded.path}: the sweep expands to {total:,} trials (limit {MAX_TRIALS:,}): "
            "narrow the grid or use method: random with num_samples"
        )
    if spec.method == "random":
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
    base = spec.train.model_dump()
    trials = []
    for swept in configurations:
        for seed in spec.seeds or [None]:
            values = {**base, "hparams": dict(base["hparams"])}
            for key, value in swept.items():
                _set_path(values, key, value)
            shown = dict(swept)
            if seed is not None:
                values["seed"] = seed
                shown["seed"] = seed
            try:
                config = make_train_config(**values)
            except UserError as error:
                raise UserError(f"{loaded.path}: trial with {shown}: {error}") from None
            trials.append(Trial(len(trials), shown, config))
    return trials
