"""``method: bayes``: Optuna's TPE sampler proposes each trial while the sweep runs.

Grid and random sweeps are expanded into trials before Ray starts (so ``plan``
shows them); a Bayesian search cannot be, since each proposal depends on the
results so far. Ray Tune asks a searcher for every new trial; the one built here
is Ray Tune's :class:`~ray.tune.search.optuna.OptunaSearch` (with its
:class:`~ray.tune.search.Repeater` when the spec has ``seeds``: every proposal
is trained once per seed and Optuna is told their mean), wrapped by
:class:`SpecTrials`, which turns a proposal into the same ``config["trial"]`` a
grid trial has: index, name, swept values and the full training config. The
trainable therefore never knows how its values were chosen.

Ray Tune saves the wrappers' state (here: the next trial index) and the Optuna
study with the sweep, so a resumed sweep goes on numbering and learning where it
stopped. Imported only by the driver of a bayes sweep: it pulls in Ray and Optuna.
"""

from __future__ import annotations

import copy
from typing import Any

from ray.tune.search import Repeater, Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.repeater import TRIAL_INDEX

from bopsweep.sweep.spec import ParameterSpec, SweepSpec, make_trial, searched


def optuna_distribution(param: ParameterSpec):
    """The Optuna distribution of a spec parameter (``values`` are a categorical
    choice). Optuna has no stepped log distribution: ``q_log_*`` values are drawn
    on the log scale and rounded as W&B rounds them by :meth:`SpecTrials.suggest`;
    the inverse log-uniform draws the same values as the log-uniform between its
    bounds. The spec refuses what Optuna cannot search (normal, grid_search,
    probabilities)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if param.values is not None:
        return CategoricalDistribution(param.values)
    low, high = param.bounds
    if param.distribution == "int_uniform":
        return IntDistribution(int(low), int(high), step=int(param.step or 1))
    if param.log_scale:
        return FloatDistribution(low, high, log=True)
    return FloatDistribution(low, high, step=param.step)


class SpecTrials(Searcher):
    """Wraps a searcher: each proposal becomes trial ``index`` of the spec, in the
    shape :func:`bopsweep.sweep.ray_backend.trial_config` gives grid trials."""

    def __init__(self, searcher: Searcher, spec: SweepSpec, where: str) -> None:
        # ``searcher`` is the attribute name Ray Tune follows to save and restore
        # the state of wrapped searchers (see SearchGenerator.save_to_dir).
        self.searcher = searcher
        self.spec = spec
        self.where = where
        self.next_index = 0
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict | None:
        from bopsweep.sweep.ray_backend import trial_config

        proposal = self.searcher.suggest(trial_id)
        if proposal is None or proposal == Searcher.FINISHED:
            return proposal
        proposal = dict(proposal)
        repeat = proposal.pop(TRIAL_INDEX, None)
        swept: dict[str, Any] = {}
        for key, param in self.spec.parameters.items():
            if param.value is not None:
                swept[key] = param.value
                continue
            value = proposal[key]
            # W&B's rounding (an integer q gives integers), which Optuna's steps lack
            # on a log scale and its floats lack for an integer q.
            swept[key] = param.quantize(value) if param.distribution else value
        if self.spec.seeds:
            swept["seed"] = self.spec.seeds[repeat or 0]
        trial = make_trial(self.spec, self.next_index, swept, self.where)
        self.next_index += 1
        return {"trial": trial_config(trial)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict:
        return {"next_index": self.next_index}

    def set_state(self, state: dict) -> None:
        self.next_index = state["next_index"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def build_searcher(spec: SweepSpec, where: str) -> SpecTrials:
    """The searcher of a ``method: bayes`` sweep, seeded by ``search_seed``."""
    import optuna

    # Optuna announces every study on stderr, under the live table.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {key: optuna_distribution(param) for key, param in searched(spec).items()}
    if not space:
        # Nothing to propose: Optuna needs a space, and the trials are all alike.
        from optuna.distributions import CategoricalDistribution

        space = {"_": CategoricalDistribution([0])}
    searcher: Searcher = OptunaSearch(
        space=copy.deepcopy(space),
        metric=spec.metric.name,
        mode=spec.metric.mode,
        seed=spec.search_seed,
    )
    if spec.seeds:
        searcher = Repeater(searcher, repeat=len(spec.seeds), set_index=True)
    return SpecTrials(searcher, spec, where)
