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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bopsweep.sweep.spec.vocabulary import (
    DISTRIBUTION_ARGS,
    EXPONENTS,
    PARAMETER_KEYS,
    RAY_FORMS,
    UNBOUNDED,
    Distribution,
    _integer,
    read_parameter,
)


class StrictModel(BaseModel):
    """The base of every spec model: frozen, and no key it does not know."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ParameterSpec(StrictModel):
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
