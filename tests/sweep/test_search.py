"""method: bayes: Optuna's proposals become trials shaped like a grid's."""

from __future__ import annotations

import math
from pathlib import Path

from bopsweep.sweep.ray_backend import trial_config
from bopsweep.sweep.search import build_searcher
from bopsweep.sweep.spec import expand, load_spec

SPEC = """\
name: t
train: {model: mlp, dataset: digits, hparams_set: bop, epochs: 2}
method: bayes
num_samples: 3
seeds: [7, 8]
parameters:
  hparams.gamma: {distribution: log_uniform, min: -9.2, max: -4.6}
  hparams.batch_size: {distribution: q_log_uniform_values, min: 16, max: 256, q: 16}
  hparams.threshold: {values: [0, 1e-6]}
  hparams.lr: {value: 0.02}
"""


def _loaded(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return load_spec(path)


def test_proposals_are_trials_like_a_grid_s(tmp_path):
    loaded = _loaded(tmp_path)
    searcher = build_searcher(loaded.spec, str(loaded.path))
    configs = []
    for n in range(6):
        group = searcher.suggest(f"id{n}")["trial"]
        # A proposal is a Ray trial holding a group of one member, as a grid's.
        assert len(group["members"]) == 1 and group["dir"] == f"trial_{n:03d}"
        configs.append(group["members"][0])
        searcher.on_trial_complete(f"id{n}", {"val_accuracy": 0.5 + n / 100})
    grid_like = trial_config(expand(loaded)[0])["members"][0]
    for index, trial in enumerate(configs):
        assert set(trial) == set(grid_like)
        assert trial["index"] == index
        assert trial["name"].startswith(f"trial_{index:03d} ")
        swept = trial["swept"]
        assert math.exp(-9.2) <= swept["hparams.gamma"] <= math.exp(-4.6)
        assert swept["hparams.batch_size"] % 16 == 0 and 16 <= swept["hparams.batch_size"] <= 256
        assert swept["hparams.threshold"] in (0, 1e-6)
        assert swept["hparams.lr"] == 0.02
        assert trial["train"]["hparams"]["gamma"] == swept["hparams.gamma"]
        assert trial["train"]["hparams"]["lr"] == 0.02
        assert trial["train"]["seed"] == swept["seed"]
    # Each configuration once per seed, in expand()'s order: configurations, then seeds.
    assert [t["swept"]["seed"] for t in configs] == [7, 8, 7, 8, 7, 8]
    without_seed = [{k: v for k, v in t["swept"].items() if k != "seed"} for t in configs]
    assert without_seed[0] == without_seed[1] and without_seed[2] == without_seed[3]
    assert without_seed[0] != without_seed[2]


def test_the_trial_numbering_survives_a_restore(tmp_path):
    loaded = _loaded(tmp_path)
    searcher = build_searcher(loaded.spec, str(loaded.path))
    searcher.suggest("a")
    state = searcher.get_state()
    again = build_searcher(loaded.spec, str(loaded.path))
    again.set_state(state)
    assert again.suggest("b")["trial"]["index"] == 1


def test_same_search_seed_same_proposals(tmp_path):
    loaded = _loaded(tmp_path)
    first = [
        build_searcher(loaded.spec, "x").suggest("a")["trial"]["members"][0]["swept"]
        for _ in range(2)
    ]
    assert first[0] == first[1]
