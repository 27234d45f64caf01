"""Where each trial sits among the swept values, for the tables and the figures.

MLflow gives a trial's swept values back as tags, with no order and no notion of
seeds; the leaderboard's columns, the curves' panels and the heatmaps' axes all need
the spec's key order, the settings grouped over their seeds, and values in numeric
order. Those answers live here, computed from a sweep's trials alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

from bopsweep.sweep.outcome import TrialOutcome

SEED_KEY = "seed"
# The values section 5.1 of the paper holds fixed while it varies the other one.
PAPER_REFERENCE = {"hparams.threshold": 1e-6, "hparams.gamma": 1e-3}


def swept_key_order(trials: Sequence[TrialOutcome]) -> list[str]:
    """The swept keys in the spec's order, recovered from the trial order: a grid is
    expanded with the first key varying slowest, and seeds come last."""
    ordered = sorted(trials, key=lambda t: t.index)
    keys = sorted({k for t in ordered for k in t.swept})

    def changes(key: str) -> int:
        values = [repr(t.swept.get(key)) for t in ordered]
        return sum(a != b for a, b in itertools.pairwise(values))

    return sorted(keys, key=lambda k: (k == SEED_KEY, changes(k), k))


def sort_values(values: Iterable[Any]) -> list[Any]:
    """Distinct values, numerically when they are all numbers (0.0001 before 0.001)."""
    unique = list(dict.fromkeys(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in unique):
        return sorted(unique)
    return sorted(unique, key=str)


def configurations(
    trials: Sequence[TrialOutcome], keys: Sequence[str]
) -> dict[tuple, list[TrialOutcome]]:
    """Trials grouped by their values of ``keys`` (the seeds' runs of each setting
    when ``keys`` leaves the seed out)."""
    groups: dict[tuple, list[TrialOutcome]] = {}
    for trial in trials:
        groups.setdefault(tuple(trial.swept.get(k) for k in keys), []).append(trial)
    return groups


def setting_keys(keys: Sequence[str]) -> list[str]:
    """The swept keys that make a setting: all but the seed."""
    return [k for k in keys if k != SEED_KEY]


def seed_count(trials: Sequence[TrialOutcome], keys: Sequence[str]) -> int:
    """The most runs any one setting has (1 without seeds)."""
    groups = configurations(trials, setting_keys(keys))
    return max((len(runs) for runs in groups.values()), default=0)


def varied_keys(trials: Sequence[TrialOutcome], keys: Sequence[str]) -> list[str]:
    """Swept keys (not the seed) that take more than one value."""
    return [k for k in setting_keys(keys) if len({repr(t.swept.get(k)) for t in trials}) > 1]


def reference_value(key: str, values: Sequence[Any]) -> Any:
    """The value held fixed while the other parameters vary: the paper's when it is
    among the values, otherwise the middle one."""
    ordered = sort_values(values)
    paper = PAPER_REFERENCE.get(key)
    if paper is not None:
        for value in ordered:
            if isinstance(value, (int, float)) and math.isclose(value, paper, rel_tol=1e-9):
                return value
    return ordered[(len(ordered) - 1) // 2]
