"""The words of a swept parameter in W&B's and Ray Tune's specs, and reading a
parameter as written into W&B's fields.

W&B's distributions and the arguments each takes, Ray Tune's search space functions
with theirs (as YAML mappings or as ``tune.fn(...)`` text), and :func:`read_parameter`,
which turns any of these forms into the fields of
:class:`~bopsweep.sweep.spec.parameters.ParameterSpec` (Ray's quantized bounds snapped
inwards as Ray does; the two Ray forms no W&B form reproduces are refused with the
nearest rewrite).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

# W&B's distributions (its docs' "Distribution options"), with the arguments each takes.
DISTRIBUTION_ARGS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "categorical": ("values", "probabilities"),
    "int_uniform": ("min", "max", "q"),
    "uniform": ("min", "max"),
    "q_uniform": ("min", "max", "q"),
    "log_uniform": ("min", "max"),
    "q_log_uniform": ("min", "max", "q"),
    "log_uniform_values": ("min", "max"),
    "q_log_uniform_values": ("min", "max", "q"),
    "inv_log_uniform": ("min", "max"),
    "inv_log_uniform_values": ("min", "max"),
    "normal": ("mu", "sigma"),
    "q_normal": ("mu", "sigma", "q"),
    "log_normal": ("mu", "sigma"),
    "q_log_normal": ("mu", "sigma", "q"),
}
DISTRIBUTIONS = tuple(DISTRIBUTION_ARGS)
Distribution = Literal[
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "q_log_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
    "inv_log_uniform",
    "inv_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
]
# Drawn around mu, without bounds (the others between min and max).
UNBOUNDED = ("normal", "q_normal", "log_normal", "q_log_normal")
# min and max are natural-log exponents of the values (W&B's "v1" distributions).
EXPONENTS = ("log_uniform", "q_log_uniform", "inv_log_uniform")

# Ray Tune's search space functions, with their arguments in Ray's order.
RAY_ARGS: dict[str, tuple[str, ...]] = {
    "grid_search": ("values",),
    "choice": ("categories",),
    "uniform": ("lower", "upper"),
    "quniform": ("lower", "upper", "q"),
    "loguniform": ("lower", "upper", "base"),
    "qloguniform": ("lower", "upper", "q", "base"),
    "randint": ("lower", "upper"),
    "qrandint": ("lower", "upper", "q"),
    "lograndint": ("lower", "upper", "base"),
    "qlograndint": ("lower", "upper", "q", "base"),
    "randn": ("mean", "sd"),
    "qrandn": ("mean", "sd", "q"),
    "sample_from": ("func",),
}
RAY_FORMS = tuple(RAY_ARGS)
# Sampled by Ray Tune's variant generator (a spec without `method` that uses one of
# these is a random search, as in Ray Tune).
RAY_SAMPLED = tuple(f for f in RAY_FORMS if f != "grid_search")
W_AND_B_KEYS = (
    "values",
    "value",
    "distribution",
    "min",
    "max",
    "q",
    "probabilities",
    "mu",
    "sigma",
)
PARAMETER_KEYS = (*W_AND_B_KEYS, *RAY_FORMS, "parameters")
_RAY_CALL = re.compile(r"^\s*(?:ray\.)?tune\.(\w+)\((.*)\)\s*$", re.DOTALL)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _yaml(value: Any) -> str:
    # As it would be written in a spec (flow style, strings bare where YAML allows).
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z_][\w.-]*", value) else repr(value)
    return str(value)


def _form(fields: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in fields.items()) + "}"


def _ray_arguments(form: str, given: Any) -> dict[str, Any]:
    names = RAY_ARGS[form]
    if form in ("grid_search", "choice"):
        if isinstance(given, dict) and set(given) == {names[0]}:
            given = given[names[0]]
        if not isinstance(given, list) or not given:
            raise ValueError(f"{form} takes a non-empty list of values, got {given!r}")
        return {names[0]: given}
    if given is None:
        given = []
    if isinstance(given, dict):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(
                f"{form} takes {', '.join(names)} (Ray Tune's arguments), not {unknown[0]!r}"
            )
        return dict(given)
    if not isinstance(given, list):
        given = [given]
    if len(given) > len(names):
        raise ValueError(f"{form} takes at most {len(names)} arguments ({', '.join(names)})")
    return dict(zip(names, given, strict=False))


def _snap(bound: float, q: float, inwards: Any) -> float:
    # Ray Tune's Quantized._grid_index: a bound between two multiples of q moves inwards.
    scaled = bound / q
    nearest = round(scaled)
    return nearest * q if math.isclose(scaled, nearest) else inwards(scaled) * q


def read_ray_form(form: str, given: Any) -> tuple[dict[str, Any], str]:
    """Ray Tune's ``{form: arguments}`` as W&B's fields, and the note saying so.

    Raises ValueError, with the nearest W&B form, for what W&B cannot draw."""
    args = _ray_arguments(form, given)
    call = f"tune.{form}({', '.join(_text(v) for v in args.values())})"
    if form == "grid_search":
        return {"grid_search": args["values"]}, ""
    if form == "choice":
        fields: dict[str, Any] = {"values": args["categories"]}
        return fields, f"Ray Tune's {call} is W&B's {_form(fields)}"
    if form == "sample_from":
        raise ValueError(
            "tune.sample_from runs Python, which a YAML spec cannot hold: write a "
            "distribution (e.g. {distribution: log_uniform_values, min: ..., max: ...})"
        )
    if form in ("randn", "qrandn"):
        fields = {"distribution": "normal" if form == "randn" else "q_normal"}
        fields["mu"] = args.get("mean", 0.0)
        fields["sigma"] = args.get("sd", 1.0)
        if form == "qrandn":
            if "q" not in args:
                raise ValueError("qrandn takes mean, sd and q")
            fields["q"] = float(args["q"])
        return fields, f"Ray Tune's {call} is W&B's {_form(fields)}"
    if "lower" not in args or "upper" not in args:
        raise ValueError(f"{form} takes {', '.join(RAY_ARGS[form])}: lower and upper are needed")
    lower, upper = args["lower"], args["upper"]
    if not (_number(lower) and _number(upper)) or lower >= upper:
        raise ValueError(f"{form} needs numbers lower < upper, got {lower!r}, {upper!r}")
    q = args.get("q")
    if form in ("quniform", "qloguniform", "qlograndint") and q is None:
        raise ValueError(f"{form} takes lower, upper and q")
    if q is not None and (not _number(q) or q <= 0):
        raise ValueError(f"{form}: q must be a number > 0, got {q!r}")
    if form in ("randint", "qrandint", "lograndint", "qlograndint") and not (
        _integer(lower) and _integer(upper) and (q is None or _integer(q))
    ):
        raise ValueError(f"{form} takes integers, got {call}")
    if form == "uniform":
        fields = {"distribution": "uniform", "min": lower, "max": upper}
    elif form == "loguniform":
        fields = {"distribution": "log_uniform_values", "min": lower, "max": upper}
    elif form in ("quniform", "qloguniform"):
        # Ray draws between the multiples of q inside [lower, upper] and rounds: W&B's
        # q_ distribution between those multiples draws the same values.
        low, high = _snap(lower, q, math.ceil), _snap(upper, q, math.floor)
        kind = "q_uniform" if form == "quniform" else "q_log_uniform_values"
        fields = {"distribution": kind, "min": low, "max": high, "q": float(q)}
    elif form == "randint" or (form == "qrandint" and q in (None, 1)):
        # upper is exclusive (as numpy's randint), also for qrandint with q = 1
        fields = {"distribution": "int_uniform", "min": lower, "max": upper - 1}
    elif form == "qrandint":
        # the multiples of q in [lower, upper], each as likely: int_uniform with q
        fields = {"distribution": "int_uniform", "min": lower, "max": upper, "q": q}
    else:  # lograndint, qlograndint: Ray floors a log-uniform draw; W&B rounds one
        high = upper - 1 if form == "lograndint" else upper
        nearest = {"distribution": "q_log_uniform_values", "min": lower, "max": high, "q": q or 1}
        raise ValueError(
            f"{call} has no W&B form: Ray Tune rounds a log-uniform draw down, W&B's "
            f"q_log_uniform_values to the nearest multiple; the nearest is {_form(nearest)}"
        )
    return fields, f"Ray Tune's {call} is W&B's {_form(fields)}"


def read_parameter(raw: Any) -> tuple[Any, str]:
    """A parameter as written -> W&B's fields (a dict), and a note when it was
    written another way (a Ray Tune form, or a distribution W&B infers)."""
    if isinstance(raw, str) and _RAY_CALL.match(raw):
        name, args = _RAY_CALL.match(raw).groups()
        raise ValueError(
            f"{raw.strip()!r} is Python: a YAML spec writes Ray Tune's {name} as "
            f"{{{name}: [{args.strip()}]}}"
        )
    if not isinstance(raw, dict):
        return {"value": raw}, ""  # a bare constant, as Ray Tune's param_space takes
    # A spec read back from its dump (the sweep's saved state) writes every field,
    # the unset ones as null: those were not given. `value: null` alone fixes None.
    raw = {k: v for k, v in raw.items() if v is not None} or (
        {"value": None} if "value" in raw else {}
    )
    if "parameters" in raw:
        raise ValueError("parameters nests other parameters: give nothing beside it (as W&B)")
    ray = [k for k in raw if k in RAY_FORMS]
    if not ray:
        data = dict(raw)
        # W&B's names for a fixed value and for values: the same as writing none.
        if data.get("distribution") == "constant":
            if "value" not in data:
                raise ValueError("distribution constant needs value")
            del data["distribution"]
        elif data.get("distribution") in ("categorical", "categorical_w_probabilities"):
            if "values" not in data:
                raise ValueError(f"distribution {data['distribution']} needs values")
            del data["distribution"]
        if data.get("distribution") is None and "min" in data and "max" in data:
            # W&B: integers give int_uniform, anything else uniform.
            inferred = (
                "int_uniform" if _integer(data["min"]) and _integer(data["max"]) else "uniform"
            )
            data["distribution"] = inferred
            why = "integers" if inferred == "int_uniform" else "not both integers"
            return (
                data,
                f"min and max without a distribution: {inferred} (they are {why}, as W&B infers)",
            )
        return data, ""
    if len(raw) > 1:
        others = sorted(set(raw) - {ray[0]})
        raise ValueError(f"{ray[0]} (Ray Tune's form) stands alone: {others[0]!r} given beside it")
    return read_ray_form(ray[0], raw[ray[0]])


def is_sampled(raw: Any) -> bool:
    """Whether a parameter as written is drawn at random (not a grid's values, not
    fixed): what makes a spec without ``method`` a random search."""
    if not isinstance(raw, dict):
        return False
    if any(k in RAY_SAMPLED for k in raw):
        return True
    distribution = raw.get("distribution")
    return ("min" in raw and "max" in raw) or distribution not in (
        None,
        "constant",
        "categorical",
        "categorical_w_probabilities",
    )
