"""One swept parameter, however its author wrote it: W&B's forms and Ray Tune's.

W&B users write ``values``, ``value`` or a ``distribution`` with ``min`` and ``max``
(or no distribution: W&B infers it from their types); Ray Tune users write the
name of the ``tune`` function with its arguments (``{loguniform: [1e-4, 1e-1]}``,
``{grid_search: [...]}``) or a bare constant. Every form is read into W&B's fields
of :class:`ParameterSpec`, so a spec means the same whichever way it is written
and its hash does not depend on the spelling.

The draws follow W&B's sweep engine (wandb/sweeps ``params.py``, ``grid_search.py``):
``log_uniform`` takes natural-log exponents, an integer ``q`` gives integers, a
grid expands ``int_uniform`` and ``q_uniform`` into their values. A Ray Tune form is
read as the W&B form that draws the same values (Ray's quantized bounds snapped
inwards as Ray does); the two Ray forms no W&B form reproduces are refused with the
nearest rewrite.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class ParameterSpec(_Strict):
    """One swept key, in W&B's fields: ``values`` (grid values; a choice in a
    search), ``value`` (fixed), a ``distribution`` (W&B's names and arguments), or
    ``grid_search`` (Ray Tune's grid axis, kept a grid in a random search too).
    Ray Tune's forms are read into these (see :func:`read_ray_form`)."""

    values: list[Any] | None = Field(None, description="grid values, or the choices of a search")
    probabilities: list[float] | None = Field(
        None, description="W&B: the chance of each of values in a random search (sum 1)"
    )
    value: Any = Field(None, description="a fixed value")
    distribution: Distribution | Literal["categorical_w_probabilities"] | None = Field(
        None,
        description="W&B's distributions. log_uniform, q_log_uniform, inv_log_uniform: "
        "min/max are natural-log exponents (values e^min..e^max); *_values: min/max are "
        "the values. Without one, min/max give int_uniform (integers) or uniform.",
    )
    min: int | float | None = None
    max: int | float | None = None
    q: int | float | None = Field(
        None, gt=0, description="q_* and int_uniform: multiples of q (W&B's default 1.0)"
    )
    mu: float | None = Field(None, description="normal, log_normal: mean (default 0)")
    sigma: float | None = Field(None, ge=0, description="normal, log_normal: sd (default 1)")
    grid_search: list[Any] | None = Field(
        None, description="Ray Tune: grid values, a grid axis in every method"
    )
    # Ray Tune's forms, read into the fields above: never kept.
    choice: Any = Field(None, exclude=True, description="Ray Tune: [values] drawn at random")
    uniform: Any = Field(None, exclude=True, description="Ray Tune: [lower, upper]")
    quniform: Any = Field(None, exclude=True, description="Ray Tune: [lower, upper, q]")
    loguniform: Any = Field(None, exclude=True, description="Ray Tune: [lower, upper]")
    qloguniform: Any = Field(None, exclude=True, description="Ray Tune: [lower, upper, q]")
    randint: Any = Field(None, exclude=True, description="Ray Tune: [lower, upper) integers")
    qrandint: Any = Field(None, exclude=True, description="Ray Tune: [lower, upper, q]")
    lograndint: Any = Field(None, exclude=True, description="Ray Tune (refused: no W&B form)")
    qlograndint: Any = Field(None, exclude=True, description="Ray Tune (refused: no W&B form)")
    randn: Any = Field(None, exclude=True, description="Ray Tune: [mean, sd]")
    qrandn: Any = Field(None, exclude=True, description="Ray Tune: [mean, sd, q]")
    sample_from: Any = Field(None, exclude=True, description="Ray Tune (refused: Python)")

    @model_validator(mode="before")
    @classmethod
    def _read_forms(cls, data: Any) -> Any:
        return read_parameter(data)[0]

    @model_validator(mode="after")
    def _one_kind(self) -> ParameterSpec:
        kinds = [
            name
            for name, given in (
                ("values", self.values is not None),
                ("value", self.value is not None),
                ("grid_search", self.grid_search is not None),
                ("distribution", self.distribution is not None),
            )
            if given
        ]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of 'values', 'value', 'distribution' (or min and max), "
                f"or a Ray Tune form ({', '.join(RAY_FORMS)})"
                + (f"; got {' and '.join(kinds)}" if kinds else "")
            )
        if self.values is not None and not self.values:
            raise ValueError("'values' is empty: a grid needs at least one value")
        if self.grid_search is not None and not self.grid_search:
            raise ValueError("'grid_search' is empty: a grid needs at least one value")
        if self.probabilities is not None:
            self._check_probabilities()
        if self.distribution is None:
            extra = [k for k in ("min", "max", "q", "mu", "sigma") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{extra[0]!r} takes a distribution; {kinds[0]!r} has none")
            return self
        self._check_arguments()
        return self

    def _check_probabilities(self) -> None:
        if self.values is None:
            raise ValueError("probabilities weigh 'values': give values beside them")
        if len(self.probabilities) != len(self.values):
            raise ValueError(
                f"{len(self.probabilities)} probabilities for {len(self.values)} values"
            )
        if any(p < 0 for p in self.probabilities):
            raise ValueError("probabilities must be >= 0")
        total = sum(self.probabilities)
        if abs(total - 1.0) > 1e-8 + 1e-5:  # numpy.isclose, as W&B checks them
            raise ValueError(f"probabilities sum to {total:g}, not 1")

    def _check_arguments(self) -> None:
        distribution = self.distribution
        allowed = DISTRIBUTION_ARGS[distribution]
        for key in ("min", "max", "q", "mu", "sigma"):
            if getattr(self, key) is not None and key not in allowed:
                hint = (
                    f" (write q_{distribution})"
                    if key == "q" and f"q_{distribution}" in DISTRIBUTION_ARGS
                    else ""
                )
                raise ValueError(f"{distribution} takes {', '.join(allowed)}, not {key!r}{hint}")
        if distribution in UNBOUNDED:
            return
        if self.min is None or self.max is None:
            raise ValueError(f"distribution {distribution!r} needs 'min' and 'max'")
        if self.min >= self.max:
            raise ValueError(f"'min' ({self.min}) must be below 'max' ({self.max})")
        if distribution == "int_uniform":
            if not (_integer(self.min) and _integer(self.max)):
                raise ValueError(
                    f"int_uniform takes integers min and max, got {self.min!r}, {self.max!r} "
                    "(write uniform for a range of floats)"
                )
            if self.q is not None and not _integer(self.q):
                raise ValueError(f"int_uniform takes an integer q, got {self.q!r}")
            if self.q is not None and not self._multiples():
                raise ValueError(f"no multiple of q {self.q} lies in [{self.min}, {self.max}]")
        if distribution.endswith("_values") and self.min <= 0:
            raise ValueError(f"{distribution} needs min > 0 (they are the values)")
        if distribution in EXPONENTS and self.min > 0 and _reads_as_values(self.min, self.max):
            # bopsweep's log_uniform took the values until W&B's meaning was adopted:
            # such a spec read as exponents would silently search another range.
            values = f"{distribution.replace('log_uniform', 'log_uniform_values')}"
            raise ValueError(
                f"{distribution} takes exponents as in W&B (values e^min..e^max), and "
                f"min {self.min:g}, max {self.max:g} read as values: write distribution: "
                f"{values} with min: {self.min:g}, max: {self.max:g}, or min/max as "
                f"exponents (min: {math.log(self.min):.4g}, max: {math.log(self.max):.4g})"
            )

    def _multiples(self) -> list[int]:
        q = self.q
        return list(range(-(-self.min // q) * q, self.max + 1, q))

    # ------------------------------------------------------------------ reading
    @property
    def step(self) -> int | float | None:
        """The rounding step: ``q``; W&B's default 1.0 for the ``q_*`` distributions."""
        if self.q is None and (self.distribution or "").startswith("q_"):
            return 1.0
        return self.q

    @property
    def bounds(self) -> tuple[Any, Any]:
        """The least and greatest value drawn (exponents turned into values)."""
        if self.distribution in ("log_uniform", "q_log_uniform"):
            return math.exp(self.min), math.exp(self.max)
        if self.distribution == "inv_log_uniform":
            return math.exp(-self.max), math.exp(-self.min)
        if self.distribution in UNBOUNDED:
            return -math.inf, math.inf
        if self.distribution == "int_uniform" and self.q is not None:
            multiples = self._multiples()
            return multiples[0], multiples[-1]
        if self.distribution is not None:
            return self.min, self.max
        choices = self.choices
        try:
            return min(choices), max(choices)
        except TypeError:
            raise ValueError(f"the values {choices} have no order") from None

    @property
    def choices(self) -> list[Any]:
        """The values of a ``values``, ``grid_search`` or ``value`` parameter."""
        if self.values is not None:
            return list(self.values)
        if self.grid_search is not None:
            return list(self.grid_search)
        return [self.value]

    @property
    def log_scale(self) -> bool:
        return "log_uniform" in (self.distribution or "")

    def quantize(self, value: Any) -> Any:
        """Rounded to ``q`` as W&B rounds: an integer ``q`` gives an integer."""
        step = self.step
        if step is None:
            return int(value) if self.distribution == "int_uniform" else value
        rounded = round(value / step) * step
        return int(rounded) if _integer(step) else rounded

    def grid_values(self) -> list[Any] | None:
        """The values a grid enumerates, as W&B's grid search does (int_uniform:
        min..max; q_uniform: ``numpy.arange(min, max, q)``, max left out); None for
        a distribution a grid cannot enumerate."""
        if self.distribution is None:
            return self.choices
        if self.distribution == "int_uniform":
            return self._multiples() if self.q is not None else list(range(self.min, self.max + 1))
        if self.distribution == "q_uniform":
            return _arange(self.min, self.max, self.step)
        return None

    def sample(self, rng: random.Random) -> Any:
        """One draw (W&B's random search); the same ``rng`` calls for the same spec."""
        distribution = self.distribution
        if distribution is None:
            if self.values is None:
                raise ValueError("a fixed value or grid axis is not drawn")
            if self.probabilities is not None:
                return rng.choices(self.values, weights=self.probabilities)[0]
            return rng.choice(self.values)
        if distribution in UNBOUNDED:
            mu = 0.0 if self.mu is None else self.mu
            sigma = 1.0 if self.sigma is None else self.sigma
            value = rng.gauss(mu, sigma)
            if "log" in distribution:
                value = math.exp(value)
            return self.quantize(value)
        low, high = self.bounds
        if distribution == "int_uniform":
            if self.q is not None:
                return rng.randint(low // self.q, high // self.q) * self.q
            return rng.randint(int(low), int(high))
        if "log_uniform" in distribution:
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        return self.quantize(value)

    def describe(self) -> str:
        """How ``plan`` shows a parameter's search space."""
        if self.grid_search is not None:
            return f"grid {self.grid_search}"
        if self.values is not None:
            weights = f", probabilities {self.probabilities}" if self.probabilities else ""
            return f"one of {self.values}{weights}"
        if self.distribution is None:
            return f"fixed {self.value!r}"
        step = f", step {self.step:g}" if self.step is not None else ""
        if self.distribution in UNBOUNDED:
            mu = 0.0 if self.mu is None else self.mu
            sigma = 1.0 if self.sigma is None else self.sigma
            return f"{self.distribution} mu {mu:g}, sigma {sigma:g}{step}"
        low, high = self.bounds
        return f"{self.distribution} [{low:g}, {high:g}]{step}"


def _reads_as_values(low: float, high: float) -> bool:
    # As exponents, 0 < min < max <= 1 means values between 1 and e, and max > 23
    # values above 1e10: neither is a range anyone searches, both are how a range of
    # values (a rate, a batch size) was written for bopsweep's old log_uniform.
    return high <= 1 or high > 23


def _arange(start: Any, stop: Any, step: Any) -> list[Any]:
    # numpy.arange(start, stop, step).tolist() without numpy: its length, and its
    # values start, start + step, then start + i * ((start + step) - start).
    count = max(0, math.ceil((stop - start) / step))
    if count == 0:
        return []
    values = [start, start + step][:count]
    delta = (start + step) - start
    values += [start + i * delta for i in range(2, count)]
    if all(_integer(v) for v in (start, stop, step)):
        return [int(v) for v in values]
    return [float(v) for v in values]


def flatten_parameters(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """W&B's nested ``parameters:`` blocks and Ray Tune's nested dicts -> dotted names
    (``hparams: {parameters: {gamma: ...}}`` -> ``hparams.gamma``). The first of two
    spellings of one name is kept."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        nested = nested_block(value)
        if nested is not None:
            for inner, spec in flatten_parameters(nested, f"{name}.").items():
                flat.setdefault(inner, spec)
        else:
            flat.setdefault(name, value)
    return flat


def nested_block(value: Any) -> dict[str, Any] | None:
    """The parameters a parameter nests, or None for a parameter itself: W&B's
    ``{parameters: {...}}``, or (Ray Tune) a mapping that has none of a parameter's
    keys."""
    if not isinstance(value, dict) or not value:
        return None
    if set(value) == {"parameters"} and isinstance(value["parameters"], dict):
        return value["parameters"]
    if not set(value) & set(PARAMETER_KEYS) and all(isinstance(k, str) for k in value):
        return value
    return None
