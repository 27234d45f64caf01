"""Real W&B and Ray Tune sweep configurations (tests/sweep/specs_corpus/, each citing
its source) plan as their authors meant: the trials, ranges and stop points W&B's
sweep engine or Ray Tune would give them, or a refusal naming the rewrite where
bopsweep cannot run them that way.

W&B's random and bayes sweeps run until stopped (its agents take ``--count``):
those are refused without a count and planned here with ``--set run_cap=N``, the
count their source gives ``wandb.agent``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import yaml

from bopsweep.errors import UserError
from bopsweep.sweep.spec import SpecLoader, expand, load_spec, max_epochs, stopping_summary
from bopsweep.sweep.spec.stopping import asha_rungs

CORPUS = Path(__file__).parent / "specs_corpus"
REPO = Path(__file__).resolve().parents[2]
COUNT_REFUSED = "draws until it is stopped in W&B"


def plan(name: str, *overrides: str):
    loaded = load_spec(CORPUS / name, list(overrides))
    return loaded, expand(loaded)


def refusal(name: str) -> str:
    with pytest.raises(UserError) as info:
        load_spec(CORPUS / name)
    return str(info.value)


def values(trials, key):
    return [t.swept[key] for t in trials]


def test_the_corpus_is_all_here_and_cited():
    files = sorted(CORPUS.glob("*.yaml"))
    assert len(files) >= 16
    for path in files:
        head = path.read_text().split("\n", 3)
        assert head[0].startswith("# ") and "http" in "".join(head[:3]), path.name


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.name)
def test_editors_accept_every_corpus_spec(path):
    import jsonschema

    schema = json.loads((REPO / "sweeps" / "schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.load(path.read_text(), Loader=SpecLoader))


# ------------------------------------------------------------------------- W&B
def test_wandb_docs_define_sweep():
    assert COUNT_REFUSED in refusal("wandb_docs_define_sweep.yaml")
    loaded, trials = plan("wandb_docs_define_sweep.yaml", "run_cap=20")
    spec = loaded.spec
    assert (spec.name, spec.method, len(trials)) == ("sweepdemo", "bayes", 20)
    assert (spec.metric.name, spec.metric.mode) == ("val_loss", "min")
    # min/max floats, no distribution: W&B's uniform
    assert spec.parameters["hparams.lr"].describe() == "uniform [0.0001, 0.1]"
    assert spec.parameters["epochs"].describe() == "one of [5, 10, 15]"


def test_wandb_docs_random_example():
    assert COUNT_REFUSED in refusal("wandb_docs_random_example.yaml")
    _, trials = plan("wandb_docs_random_example.yaml", "run_cap=40")
    assert len(trials) == 40
    for batch in values(trials, "hparams.batch_size"):  # q 8, an integer: integers
        assert isinstance(batch, int) and batch % 8 == 0 and 32 <= batch <= 256
    assert all(0 < lr < 0.1 for lr in values(trials, "hparams.lr"))
    assert set(values(trials, "epochs")) == {1}
    assert set(values(trials, "hparams.sigma")) <= {0.3, 0.4, 0.5}


def test_wandb_docs_command_macros_has_two_problems_reported_together():
    message = refusal("wandb_docs_command_macros.yaml")
    assert message.startswith("2 problems in")
    assert "wandb_docs_command_macros.yaml:7: method:" in message and COUNT_REFUSED in message
    assert "wandb_docs_command_macros.yaml:9: metric: metric 'val_loss' has no goal" in message
    loaded, trials = plan("wandb_docs_command_macros.yaml", "run_cap=3", "metric.goal=minimize")
    assert len(trials) == 3 and "command" in loaded.notes[0]


@pytest.mark.parametrize(
    ("name", "cut_points"),
    [
        ("wandb_docs_bayes_hyperband.yaml", [3, 9]),  # max_iter 27, s 2: 27/3, 27/9
        ("wandb_docs_hyperband_min_iter.yaml", [3, 9, 27, 81]),  # min_iter 3: 3 * 3^k
    ],
)
def test_wandb_docs_hyperband_cut_points(name, cut_points):
    assert COUNT_REFUSED in refusal(name)
    loaded, trials = plan(name, "run_cap=30", "parameters.epochs.value=100")
    stopping = loaded.spec.stopping
    assert len(trials) == 30 and loaded.spec.method == "bayes"
    assert stopping.cut_points[: len(cut_points)] == cut_points
    assert stopping.strict and stopping.eta == 3
    summary = stopping_summary(stopping, max_epochs(loaded.spec, trials))
    assert f"trials compared at epochs {', '.join(map(str, cut_points))} (of 100)" in summary


def test_wandb_examples_keras_random_hyperband():
    assert COUNT_REFUSED in refusal("wandb_examples_keras_random_hyperband.yaml")
    loaded, trials = plan("wandb_examples_keras_random_hyperband.yaml", "run_cap=20")
    assert len(trials) == 20 and loaded.spec.stopping.cut_points == [3, 9]
    assert set(values(trials, "hparams.filters")) <= {10, 12, 14, 16, 18, 20}
    assert {t.train.resolved_hparams().epochs for t in trials} == {27}


def test_wandb_examples_pytorch_grid_hyperband():
    loaded, trials = plan("wandb_examples_pytorch_grid_hyperband.yaml")
    assert len(trials) == 5 * 6 * 6 * 3
    assert loaded.spec.stopping.cut_points == [3, 9]
    summary = stopping_summary(loaded.spec.stopping, max_epochs(loaded.spec, trials))
    assert "trials compared at epochs 3, 9 (of 27)" in summary


def test_wandb_sweeps_local_hyperband_rounds_cut_points_down():
    loaded, trials = plan("wandb_sweeps_local_hyperband.yaml")
    assert len(trials) == 27
    # max_iter 10, eta 3, s 2: 10/3 = 3.33 and 10/9 = 1.11, rounded down by W&B
    assert loaded.spec.stopping.cut_points == [1, 3]
    assert loaded.spec.experiment == "sweeps-examples"  # W&B's project
    assert "program, controller: W&B's agent settings, not used" in loaded.notes[0]


def test_wandb_sweeps_nested_params():
    _, trials = plan("wandb_sweeps_nested_params.yaml")
    assert len(trials) == 8
    assert set(trials[0].swept) == {"hparams.batch_size", "hparams.lr", "hparams.sigma"}
    assert {(t.train.hparams["batch_size"], t.train.hparams["sigma"]) for t in trials} == {
        (32, 0.9),
        (32, 0.95),
        (64, 0.9),
        (64, 0.95),
    }


def test_wandb_examples_sweep_bool():
    loaded, trials = plan("wandb_examples_sweep_bool.yaml")
    assert len(trials) == 8
    assert (loaded.spec.metric.name, loaded.spec.metric.mode) == ("val_accuracy", "max")
    assert Counter(t.train.compile for t in trials) == {False: 4, True: 4}


def test_wandb_examples_fastai_simpsons():
    assert COUNT_REFUSED in refusal("wandb_examples_fastai_simpsons.yaml")
    loaded, trials = plan("wandb_examples_fastai_simpsons.yaml", "run_cap=20")
    params = loaded.spec.parameters
    assert len(trials) == 20 and trials[0].swept == {"epochs": 20}
    # log_uniform: min/max are natural-log exponents, values e^-11 .. e^-2
    assert params["hparams.lr"].bounds == (math.exp(-11), math.exp(-2))
    assert params["hparams.threshold"].describe() == "uniform [0, 1]"


def test_wandb_colab_2022_q_log_uniform_takes_exponents():
    assert COUNT_REFUSED in refusal("wandb_colab_pytorch_sweeps_2022.yaml")
    _, trials = plan("wandb_colab_pytorch_sweeps_2022.yaml", "run_cap=50")
    batch = values(trials, "hparams.batch_size")
    # "integers between 32 and 256 with evenly-distributed logarithms"
    assert all(isinstance(b, int) and 32 <= b <= 256 for b in batch)
    assert sum(b < 91 for b in batch) > 10  # below the log midpoint ~90.5: about half


def test_wandb_docs_walkthrough():
    assert COUNT_REFUSED in refusal("wandb_docs_walkthrough.yaml")
    loaded, trials = plan("wandb_docs_walkthrough.yaml", "run_cap=10")
    assert len(trials) == 10 and loaded.spec.experiment == "my-first-sweep"
    assert all(0.01 <= lr <= 0.1 for lr in values(trials, "hparams.lr"))
    assert set(values(trials, "hparams.dense_units")) <= {1, 3, 7}


def test_wandb_examples_minimal_hydra():
    assert COUNT_REFUSED in refusal("wandb_examples_minimal_hydra.yaml")
    loaded, trials = plan("wandb_examples_minimal_hydra.yaml", "run_cap=10")
    assert len(trials) == 10
    assert loaded.spec.parameters["hparams.lr"].bounds == (1e-5, 0.1)  # `!!float 1e-5`
    assert "program, command: W&B's agent settings" in loaded.notes[0]


# -------------------------------------------------------------------- Ray Tune
def test_ray_tune_basic_example_grid_times_num_samples():
    loaded, trials = plan("ray_tune_basic_example.yaml")
    assert loaded.spec.method == "random" and len(trials) == 2 * 50
    assert Counter(values(trials, "hparams.fp_optimizer")) == {"adam": 50, "sgd": 50}
    assert all(0 <= v <= 20 for v in values(trials, "hparams.threshold"))
    assert {t.train.epochs for t in trials} == {100}  # a bare constant
    assert (loaded.spec.metric.name, loaded.spec.metric.mode) == ("val_loss", "min")


def test_ray_tune_search_space_api():
    message = refusal("ray_tune_search_space_api.yaml")
    assert message.startswith("3 problems in")
    assert "parameters.max_val_samples: tune.lograndint(1, 10) has no W&B form" in message
    assert "{distribution: q_log_uniform_values, min: 1, max: 9, q: 1}" in message
    assert "parameters.max_train_samples: tune.qlograndint(2, 10, 2) has no W&B form" in message
    assert "parameters.seed: tune.sample_from runs Python" in message


def test_ray_tune_search_space_api_without_what_w_and_b_cannot_draw(tmp_path):
    raw = yaml.load((CORPUS / "ray_tune_search_space_api.yaml").read_text(), Loader=SpecLoader)
    for key in ("max_val_samples", "max_train_samples", "seed"):
        del raw["parameters"][key]
    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(raw))
    trials = expand(load_spec(path, ["num_samples=200"]))
    assert len(trials) == 200
    for trial in trials:
        swept = trial.swept
        assert 1 <= swept["hparams.gamma_decay_epochs"] <= 5
        decay = swept["hparams.lr_decay_epochs"]  # quniform(3.2, 5.4, 0.2)
        assert 3.2 - 1e-9 <= decay <= 5.4 + 1e-9 and abs(decay / 0.2 - round(decay / 0.2)) < 1e-9
        assert 1e-4 <= swept["hparams.lr"] <= 1e-2
        gamma = swept["hparams.gamma"]  # qloguniform(1e-4, 1e-1, 5e-5)
        assert 1e-4 - 1e-12 <= gamma <= 0.1 and abs(gamma / 5e-5 - round(gamma / 5e-5)) < 1e-6
        assert 1 <= swept["hparams.dense_units"] <= 14  # randint(1, 15): 15 left out
        assert swept["hparams.batch_size"] in (3, 6, 9, 12)  # qrandint(3, 12, 3)
        assert swept["hparams.fp_optimizer"] in ("adam", "sgd")
    normal = values(trials, "hparams.threshold_decay_epochs")  # randn(10, 2)
    assert abs(sum(normal) / len(normal) - 10) < 0.6
    assert set(values(trials, "hparams.dense_units")) == set(range(1, 15))


def test_ray_tune_pytorch_tutorial():
    loaded, trials = plan("ray_tune_pytorch_tutorial.yaml")
    assert loaded.spec.method == "random" and len(trials) == 10
    assert set(values(trials, "hparams.dense_units")) <= {2**i for i in range(9)}
    assert asha_rungs(loaded.spec.stopping, 10) == [1, 2, 4, 8]
    assert all(1e-4 <= lr <= 1e-1 for lr in values(trials, "hparams.lr"))


def test_ray_tune_optuna_example():
    loaded, trials = plan("ray_tune_optuna_example.yaml")
    assert loaded.spec.method == "bayes" and len(trials) == 100
    assert asha_rungs(loaded.spec.stopping, 100) == [1, 4, 16, 64]
    assert loaded.spec.parameters["hparams.fp_optimizer"].values == ["adam", "sgd"]


def test_ray_tune_search_spaces_grid_repeated():
    loaded, trials = plan("ray_tune_search_spaces_grid.yaml")
    assert loaded.spec.method == "grid" and len(trials) == 3 * 3 * 5
    pairs = Counter((t.swept["hparams.dense_units"], t.swept["hparams_set"]) for t in trials)
    assert len(pairs) == 9 and set(pairs.values()) == {5}
    assert sorted({t.train.seed for t in trials}) == [0, 1, 2, 3, 4]


def test_ray_tune_hyperband_example_randint_upper_bound_exclusive():
    loaded, trials = plan("ray_tune_hyperband_example.yaml")
    assert len(trials) == 200 and loaded.spec.stopping.type == "hyperband"
    units = values(trials, "hparams.dense_units")
    assert min(units) >= 10 and max(units) <= 89
    assert all(0 <= t.train.seed <= 99 for t in trials)
