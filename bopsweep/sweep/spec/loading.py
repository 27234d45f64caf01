"""Reading a spec file: safe YAML, ``--set`` overrides, every problem at its line.

The YAML is composed once more into nodes, which keep their positions; each
problem's field path is looked up there (through W&B's nested ``parameters:``
blocks too), so a message reads ``file:line: field: what is wrong``. All problems of
a spec are reported together: pydantic's field errors, the checks between keys
(run piece by piece when other parts failed) and each parameter's values tried on
the training config, before any trial is built. What was read differently from how
it was written (another tool's keys and forms) comes back as notes for ``plan``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bopsweep.errors import UserError
from bopsweep.sweep.spec.expansion import (
    MAX_TRIALS,
    configured,
    count_trials,
    expand,
    full_count,
    make_trial,
    planned,
    probe_values,
)
from bopsweep.sweep.spec.forms import WANDB_IGNORED, name_from, read_spec_forms
from bopsweep.sweep.spec.parameters import ParameterSpec, nested_block
from bopsweep.sweep.spec.schema import (
    MetricSpec,
    SpecProblems,
    SweepSpec,
    cross_problems,
    swept_keys,
)
from bopsweep.sweep.spec.vocabulary import PARAMETER_KEYS, read_parameter
from bopsweep.sweep.spec.yaml_lines import MAX_YAML_NODES, count_nodes, line_of

# Limits that keep a hostile or mistyped spec from exhausting the machine before
# anything starts (with MAX_YAML_NODES): specs nobody means to write.
MAX_SPEC_BYTES = 1_000_000
# Trial-level problems shown at most (the rest are like them).
MAX_TRIAL_PROBLEMS = 5


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


@dataclass(frozen=True)
class LoadedSpec:
    spec: SweepSpec
    path: Path
    text: str
    raw: dict[str, Any]
    notes: tuple[str, ...] = field(default=())

    @property
    def sha256(self) -> str:
        """Hash of the spec as resolved (overrides included): identifies a sweep."""
        canonical = yaml.safe_dump(canonical_dump(self.spec), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def canonical_dump(spec: SweepSpec) -> dict[str, Any]:
    """The spec as hashed: keys added since a release are left out while unset, and
    numbers of distributions as floats, so a sweep started before still resumes."""
    dump = spec.model_dump(mode="json")
    if dump.get("run_cap") is None:
        dump.pop("run_cap", None)
    for param in dump.get("parameters", {}).values():
        for key in ("probabilities", "mu", "sigma", "grid_search"):
            if param.get(key) is None:
                param.pop(key, None)
        if param.get("distribution") != "int_uniform":
            for key in ("min", "max", "q"):
                if param.get(key) is not None:
                    param[key] = float(param[key])
    return dump


@dataclass(frozen=True, order=True)
class Problem:
    line: int
    text: str


def _problem(path: Path, root: yaml.Node | None, loc: tuple[Any, ...], message: str) -> Problem:
    loc = tuple(p for p in loc if not str(p).startswith("function-") and p != "[key]")
    field_path = ".".join(str(p) for p in loc)
    line = line_of(root, loc)
    where = f"{path}:{line}" if line else str(path)
    return Problem(line or 0, f"{where}: {field_path or 'spec'}: {message}")


def _valid_keys(loc: tuple[Any, ...]) -> str:
    """The keys a mapping at ``loc`` takes, for an unknown key's message."""
    if len(loc) == 2 and loc[0] == "parameters":
        return ", ".join(PARAMETER_KEYS)
    model: type[BaseModel] = SweepSpec
    for part in loc:
        if part == "parameters":
            return ""
        annotation = getattr(model.model_fields.get(str(part)), "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return ""
        model = nested[0]
    return ", ".join(model.model_fields)


def _validation_problems(
    error: ValidationError, path: Path, root: yaml.Node | None
) -> list[Problem]:
    problems = []
    for item in error.errors():
        cause = (item.get("ctx") or {}).get("error")
        loc = tuple(item["loc"])
        if isinstance(cause, SpecProblems):
            problems += [_problem(path, root, loc + inner, msg) for inner, msg in cause.problems]
            continue
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            valid = _valid_keys(loc[:-1])
            message = f"unknown key {loc[-1]!r}" + (f"; valid keys: {valid}" if valid else "")
        elif item["type"] == "missing":
            message = "required key is missing"
        elif "input" in item and item["type"] != "value_error":
            message += f" (got {item['input']!r})"
        problems.append(_problem(path, root, loc, message))
    return problems


# ----------------------------------------------------------------- piecewise
def _piece(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except (ValidationError, ValueError, TypeError):
        return None


def _cross_problems_of(
    data: dict[str, Any], method_given: bool
) -> list[tuple[tuple[Any, ...], str]]:
    """:func:`cross_problems` on a spec that did not validate: each part validated on
    its own, the ones that fail left out (they are reported already)."""
    raw_params = data.get("parameters")
    params = {}
    if isinstance(raw_params, dict):
        for key, value in raw_params.items():
            param = _piece(ParameterSpec, value)
            if param is not None:
                params[key] = param
    method = data.get("method")
    metric = _piece(MetricSpec, data.get("metric", {}))
    train = data.get("train")
    split = train.get("validation_split", False) if isinstance(train, dict) else None

    def typed(key: str, kind: type) -> Any:
        value = data.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    return cross_problems(
        method=method if method in ("grid", "random", "bayes") else None,
        parameters=params,
        given=set(data) if method_given else set(data) - {"method"},
        num_samples=typed("num_samples", int),
        run_cap=typed("run_cap", int),
        seeds=typed("seeds", list),
        has_scheduler=data.get("scheduler") is not None,
        has_early_terminate=data.get("early_terminate") is not None,
        metric=metric.name if metric is not None else None,
        validation_split=split if isinstance(split, bool) else None,
        leftover_mode=data.get("mode"),
        metric_mode=metric.mode if metric is not None else None,
    )


def _value_problems(data: dict[str, Any], path: Path, root: yaml.Node | None) -> list[Problem]:
    """Each parameter's values (all of them, or its range's ends) on the base training
    config, one at a time: a value it refuses is reported at the parameter's line."""
    from bopsweep.config import TrainConfig

    train = _piece(TrainConfig, data.get("train"))
    params = data.get("parameters")
    if train is None or not isinstance(params, dict):
        return []
    known = set(swept_keys())
    problems = []
    for key, value in params.items():
        param = _piece(ParameterSpec, value)
        if param is None or key not in known:
            continue  # reported on its own
        for probe in probe_values(param):
            try:
                configured(train, {key: probe})
            except UserError as error:
                problems.append(
                    _problem(path, root, ("parameters", key), f"value {probe!r}: {error}")
                )
                break
    return problems


# -------------------------------------------------------------------- notes
def _notes(raw: dict[str, Any], spec: SweepSpec) -> tuple[str, ...]:
    """What ``plan`` says about keys read differently from how they were written."""
    notes = []
    ignored = [k for k in WANDB_IGNORED if k in raw]
    if ignored:
        notes.append(
            f"{', '.join(ignored)}: W&B's agent settings, not used: bopsweep trains "
            "`train:` with each trial's values itself"
        )
    metric = raw.get("metric")
    if isinstance(metric, dict):
        unused = [k for k in ("impute", "impute_while_running") if k in metric]
        if unused:
            notes.append(f"metric.{' and metric.'.join(unused)}: W&B's bayes search only, not used")
    elif isinstance(metric, str):
        notes.append(f"metric: {metric} with mode: {spec.metric.mode} (Ray Tune's form)")
    if "name" not in raw:
        notes.append(f"no name: the sweep is named {spec.name!r}, after its file")
    if raw.get("project") is not None and spec.tracking.experiment == raw["project"]:
        notes.append(f"project {raw['project']!r} (W&B's) is the MLflow experiment")
    if "method" not in raw and spec.method == "random":
        notes.append(
            "no method: random, as parameters are drawn (Ray Tune's variant generator: "
            "num_samples draws for each combination of the grid_search values)"
        )
    if spec.run_cap is not None:
        total = full_count(spec)
        if total > spec.run_cap:
            notes.append(f"run_cap {spec.run_cap}: the first {spec.run_cap} of {total} trials")
        elif spec.method != "grid" and "num_samples" not in raw:
            notes.append(
                f"run_cap {spec.run_cap} (W&B's cap on runs): {spec.run_cap} configurations"
            )
    if spec.method == "grid" and spec.num_samples > 1:
        seeds = ", ".join(str(spec.train.seed + r) for r in range(min(spec.num_samples, 4)))
        more = ", ..." if spec.num_samples > 4 else ""
        notes.append(
            f"num_samples {spec.num_samples}: the grid runs {spec.num_samples} times (as Ray "
            f"Tune repeats it), each time with its own seed ({seeds}{more})"
        )
    params = raw.get("parameters")
    if isinstance(params, dict):
        for key, value in _leaves(params):
            try:
                note = read_parameter(value)[1]
            except ValueError:
                continue
            if note:
                notes.append(f"parameters.{key}: {note}")
    return tuple(notes)


def _leaves(params: dict[str, Any], prefix: str = ""):
    for key, value in params.items():
        nested = nested_block(value)
        if nested is not None:
            yield from _leaves(nested, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# ---------------------------------------------------------------- overrides
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


def _parameter_slot(params: dict[str, Any], parts: list[str]) -> tuple[dict, str, int] | None:
    """Where the parameter named by the longest prefix of ``parts`` is written: the
    mapping holding it (a nested block's, if it is nested), its key there, and how
    many of ``parts`` its name took."""
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        if name in params and nested_block(params[name]) is None:
            return params, name, cut
    for cut in range(1, len(parts)):
        inner = nested_block(params.get(".".join(parts[:cut])))
        found = _parameter_slot(inner, parts[cut:]) if inner is not None else None
        if found is not None:
            return found[0], found[1], cut + found[2]
    return None


def _override_parameter(params: dict[str, Any], rest: list[str], value: Any) -> None:
    # Parameter names are dot paths themselves, and may be nested: the longest name
    # the spec has; else a new one (all of rest for a whole parameter, else all but
    # the field set).
    slot = _parameter_slot(params, rest)
    if slot is None:
        whole = isinstance(value, dict) or len(rest) == 1
        name = ".".join(rest if whole else rest[:-1])
        if not whole:
            params.setdefault(name, {})
        slot = (params, name, len(rest) if whole else len(rest) - 1)
    container, key, used = slot
    fields = rest[used:]
    if not fields:
        container[key] = value
        return
    target = container[key]
    if not isinstance(target, dict):  # a bare constant (Ray Tune's form)
        target = container[key] = {"value": target}
    for field_name in fields[:-1]:
        target = target.setdefault(field_name, {})
    target[fields[-1]] = value


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = raw
    i = 0
    while i < len(path) - 1:
        part = path[i]
        if part == "parameters" and isinstance(node.get(part), dict):
            _override_parameter(node[part], path[i + 1 :], value)
            return
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {'.'.join(path)}: {part!r} is not a mapping")
        node = child
        i += 1
    node[path[-1]] = value


# ------------------------------------------------------------------ loading
def _read_yaml(path: Path) -> tuple[str, yaml.Node | None, Any]:
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
            count_nodes(root, [MAX_YAML_NODES])
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
    return text, root, raw


def _raise(path: Path, problems: list[Problem]) -> None:
    unique = sorted(set(problems))
    if len(unique) == 1:
        raise UserError(unique[0].text)
    lines = "\n".join(f"  {p.text}" for p in unique)
    raise UserError(f"{len(unique)} problems in {path}:\n{lines}")


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedSpec:
    """Read, validate and apply ``--set`` overrides, or raise one UserError naming
    every problem of the spec, each at its line."""
    path = Path(path)
    text, root, raw = _read_yaml(path)
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else f"a {type(raw).__name__}"
        raise UserError(f"{path}: a spec must be a mapping of keys (name, train, ...), got {kind}")
    for override in overrides:
        apply_override(raw, *parse_override(override))
    default_name = name_from(path.stem)
    try:
        spec = SweepSpec.model_validate(raw, context={"default_name": default_name})
    except ValidationError as error:
        problems = _validation_problems(error, path, root)
        data = read_spec_forms(raw, default_name)
        if not any(
            isinstance((e.get("ctx") or {}).get("error"), SpecProblems) for e in error.errors()
        ):
            cross = _cross_problems_of(data, "method" in raw)
            problems += [_problem(path, root, loc, msg) for loc, msg in cross]
        problems += _value_problems(data, path, root)
        _raise(path, problems)
    data = read_spec_forms(raw, default_name)
    value_problems = _value_problems(data, path, root)
    if value_problems:
        _raise(path, value_problems)
    loaded = LoadedSpec(spec, path, text, raw, _notes(raw, spec))
    _check_trials(loaded, root)  # every trial must validate before anything starts
    return loaded


def _check_trials(loaded: LoadedSpec, root: yaml.Node | None) -> None:
    """Every trial on the training config; a combination of values it refuses is
    reported with the trial (the first few of them)."""
    spec = loaded.spec
    if count_trials(spec) > MAX_TRIALS:
        expand(loaded)  # raises the limit's error
    problems = []
    for index, swept in enumerate(planned(spec)):
        try:
            make_trial(spec, index, swept, loaded.path)
        except UserError as error:
            message = str(error).removeprefix(f"{loaded.path}: ")
            problems.append(_problem(loaded.path, root, ("parameters",), message))
            if len(problems) == MAX_TRIAL_PROBLEMS:
                break
    if problems:
        _raise(loaded.path, problems)
