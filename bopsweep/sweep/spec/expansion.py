"""A spec's trials, in a fixed order, so ``bopsweep plan`` shows what ``run`` runs.

Grid: every combination of the grid values (``values``, ``grid_search``, and the
``int_uniform``/``q_uniform`` ranges W&B expands), the whole grid ``num_samples``
times as Ray Tune repeats it, each repeat with its own seed. Random: ``num_samples``
draws (W&B's distributions, seeded by ``search_seed``), for each combination of the
``grid_search`` axes, as Ray Tune's variant generator does. Bayes: placeholders for
the configurations Optuna proposes as the sweep runs (:mod:`bopsweep.sweep.search`).
Then each configuration once per seed of ``seeds``, and ``run_cap`` (W&B) keeps the
first trials.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from bopsweep.config import TrainConfig, make_train_config
from bopsweep.errors import UserError
from bopsweep.sweep.spec.parameters import ParameterSpec
from bopsweep.sweep.spec.schema import SweepSpec, Trial

# Grids nobody means to run are refused before anything is built.
MAX_TRIALS = 100_000


class _Loaded(Protocol):
    spec: SweepSpec
    path: Path


def _set_path(values: dict[str, Any], key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if head == "hparams":
        values["hparams"] = {**values.get("hparams", {}), rest: value}
    else:
        values[key] = value


def _grid_repeats(spec: SweepSpec) -> int:
    return spec.num_samples if spec.method == "grid" else 1


def full_count(spec: SweepSpec) -> int:
    """The trials before ``run_cap``."""
    seeds = len(spec.seeds) if spec.seeds else 1
    if spec.method == "bayes":
        return spec.num_samples * seeds
    if spec.method == "random":
        axes = [p.grid_search for p in spec.parameters.values() if p.grid_search is not None]
        return spec.num_samples * math.prod(len(a) for a in axes) * seeds
    grids = [p.grid_values() or [None] for p in spec.parameters.values()]
    return math.prod(len(g) for g in grids) * _grid_repeats(spec) * seeds


def count_trials(spec: SweepSpec) -> int:
    """The trials of the sweep (``run_cap`` included)."""
    total = full_count(spec)
    return min(total, spec.run_cap) if spec.run_cap is not None else total


def searched(spec: SweepSpec) -> dict[str, ParameterSpec]:
    """The parameters a bayes searcher proposes values for (all but fixed ones)."""
    return {k: p for k, p in spec.parameters.items() if p.value is None}


def fixed(spec: SweepSpec) -> dict[str, Any]:
    return {k: p.value for k, p in spec.parameters.items() if p.value is not None}


def configured(train: TrainConfig, swept: dict[str, Any]) -> TrainConfig:
    """``train`` with the ``swept`` values set, validated (UserError if refused)."""
    base = train.model_dump()
    values = {**base, "hparams": dict(base["hparams"])}
    for key, value in swept.items():
        _set_path(values, key, value)
    return make_train_config(**values)


def make_trial(spec: SweepSpec, index: int, swept: dict[str, Any], where: Path | str) -> Trial:
    """Trial ``index`` with the ``swept`` values (a ``seed`` among them) set on the base
    config; a value the training config refuses is a UserError naming ``where``."""
    try:
        config = configured(spec.train, swept)
    except UserError as error:
        raise UserError(f"{where}: trial with {swept}: {error}") from None
    return Trial(index, dict(swept), config)


def probe_values(param: ParameterSpec) -> list[Any]:
    """The values of a parameter worth checking against the training config before
    anything runs: every value it can take, or the ends of its range. A continuous
    draw never lands on an end (W&B's uniform(0, 0.1) for a rate that must be > 0
    is fine): its ends are taken just inside; a rounded or integer one reaches them."""
    grid = param.grid_values()
    if grid is not None and len(grid) <= 1000:
        return grid
    if param.distribution is None or param.bounds[0] == -math.inf:
        return []
    low, high = param.bounds
    if param.step is None and param.distribution != "int_uniform":
        return [math.nextafter(low, high), math.nextafter(high, low)]
    return [param.quantize(low), param.quantize(high)]


def _configurations(spec: SweepSpec) -> Iterator[dict[str, Any]]:
    params = spec.parameters
    if spec.method == "bayes":
        for _ in range(spec.num_samples):
            yield fixed(spec)
        return
    if spec.method == "random":
        rng = random.Random(spec.search_seed)
        axes = {k: p.grid_search for k, p in params.items() if p.grid_search is not None}
        for _ in range(spec.num_samples):
            for combo in itertools.product(*axes.values()):
                point = dict(zip(axes, combo, strict=True))
                yield {
                    k: point[k] if k in point else p.value if p.value is not None else p.sample(rng)
                    for k, p in params.items()
                }
        return
    keys = list(params)
    grids = [p.grid_values() for p in params.values()]
    repeats = _grid_repeats(spec)
    for repeat in range(repeats):
        for combo in itertools.product(*grids):
            swept = dict(zip(keys, combo, strict=True))
            if repeats > 1:
                # Ray Tune's repeats of a grid differ by their randomness: here, a seed.
                swept["seed"] = spec.train.seed + repeat
            yield swept


def planned(spec: SweepSpec) -> Iterator[dict[str, Any]]:
    """The swept values of each trial, in order: configurations, then seeds; at most
    ``run_cap`` of them."""
    trials = (
        swept if seed is None else {**swept, "seed": seed}
        for swept in _configurations(spec)
        for seed in (spec.seeds or [None])
    )
    return itertools.islice(trials, count_trials(spec))


def expand(loaded: _Loaded) -> list[Trial]:
    """The trials of the sweep, in a fixed order (see the module's docstring).

    With ``method: bayes`` the searcher proposes each configuration while the sweep
    runs: the trials here are placeholders holding only the fixed values and the
    seed."""
    spec = loaded.spec
    total = count_trials(spec)
    if total > MAX_TRIALS:
        raise UserError(
            f"{loaded.path}: the sweep expands to {total:,} trials (limit {MAX_TRIALS:,}): "
            "narrow the grid, set run_cap, or use method: random with num_samples"
        )
    return [
        make_trial(spec, index, swept, loaded.path) for index, swept in enumerate(planned(spec))
    ]


def max_epochs(spec: SweepSpec, trials: list[Trial]) -> int:
    """The most epochs a trial trains (a bayes search may propose ``epochs``)."""
    most = max((t.train.resolved_hparams().epochs for t in trials), default=0)
    for key in ("epochs", "hparams.epochs"):
        param = spec.parameters.get(key)
        if param is not None and param.value is None:
            high = param.bounds[1]
            if math.isfinite(high):
                most = max(most, int(high))
    return most
