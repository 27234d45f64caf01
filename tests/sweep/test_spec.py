"""Sweep specs: validation messages, expansion, overrides, hostile input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bopsweep.errors import UserError
from bopsweep.sweep.spec import SweepSpec, count_trials, expand, load_spec, parse_override

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))

BASE = """\
name: t
train:
  model: mlp
  dataset: digits
  hparams_set: bop
parameters:
  hparams.threshold:
    values: [0, 1e-6]
  hparams.gamma:
    values: [1e-3, 1e-4, 1e-2]
seeds: [0, 1]
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, overrides=()) -> str:
    with pytest.raises(UserError) as info:
        load_spec(path, overrides)
    return str(info.value)


def test_grid_expands_configurations_times_seeds(tmp_path):
    loaded = load_spec(write(tmp_path, BASE))
    trials = expand(loaded)
    assert count_trials(loaded.spec) == len(trials) == 2 * 3 * 2
    assert [t.index for t in trials] == list(range(12))
    first = trials[0]
    assert first.swept == {"hparams.threshold": 0, "hparams.gamma": 1e-3, "seed": 0}
    assert first.train.hparams == {"threshold": 0, "gamma": 1e-3}
    # 1e-6 is a float (YAML 1.2), not the string YAML 1.1 would make of it.
    assert trials[6].train.hparams["threshold"] == 1e-6
    assert trials[6].train.resolved_hparams().threshold == 1e-6
    assert {t.train.seed for t in trials} == {0, 1}


def test_random_search_is_seeded_and_within_bounds(tmp_path):
    text = BASE.replace(
        "parameters:\n  hparams.threshold:\n    values: [0, 1e-6]\n  hparams.gamma:\n"
        "    values: [1e-3, 1e-4, 1e-2]\n",
        "method: random\nnum_samples: 5\nparameters:\n"
        "  hparams.gamma: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-2}\n"
        "  hparams.batch_size: {distribution: int_uniform, min: 16, max: 64, q: 16}\n",
    )
    path = write(tmp_path, text)
    first = [t.swept for t in expand(load_spec(path))]
    again = [t.swept for t in expand(load_spec(path))]
    assert first == again and len(first) == 10
    for swept in first:
        assert 1e-5 <= swept["hparams.gamma"] <= 1e-2
        assert swept["hparams.batch_size"] in (16, 32, 48, 64)


def test_overrides_are_typed_and_reach_parameters(tmp_path):
    path = write(tmp_path, BASE)
    loaded = load_spec(
        path,
        ["train.epochs=2", "parameters.hparams.gamma.values=[1e-3]", "resources.gpu=0.25"],
    )
    assert loaded.spec.train.epochs == 2
    assert loaded.spec.resources.gpu == 0.25
    assert len(expand(loaded)) == 2 * 1 * 2
    assert parse_override("train.dataset=synthetic") == (["train", "dataset"], "synthetic")
    # A new parameter: a whole one, or one field of it; a bare constant gets a field.
    loaded = load_spec(path, ["parameters.hparams.lr.values=[0.1]", "parameters.seed=3"])
    assert loaded.spec.parameters["hparams.lr"].values == [0.1]
    assert loaded.spec.parameters["seed"].value == 3
    loaded = load_spec(path, ["parameters.hparams.sigma={values: [0.1, 0.2]}"])
    assert loaded.spec.parameters["hparams.sigma"].values == [0.1, 0.2]
    assert parse_override("a.b=1e-6") == (["a", "b"], 1e-6)


def test_hash_changes_with_the_spec(tmp_path):
    path = write(tmp_path, BASE)
    assert load_spec(path).sha256 == load_spec(path).sha256
    assert load_spec(path).sha256 != load_spec(path, ["train.epochs=3"]).sha256


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: t\ntrain: [unclosed\n", "sequence started at line 2"),
        ("- a\n- b\n", "a spec must be a mapping"),
        ("", "got empty"),
        (BASE + "colour: blue\n", "spec.yaml:12: colour: unknown key 'colour'; valid keys: name"),
        (BASE.replace("dataset: digits", "dataset: imagenet9"), "spec.yaml:4: train.dataset"),
        (BASE.replace("model: mlp", "model: resnet"), "unknown model 'resnet'; choose from:"),
        (BASE.replace("seeds: [0, 1]", "seeds: zero"), "spec.yaml:11: seeds"),
        (BASE.replace("[1e-3, 1e-4, 1e-2]", "[]"), "'values' is empty"),
        (BASE.replace("hparams.gamma:", "hparams.gama:"), "unknown parameter 'hparams.gama'"),
        (BASE + "resources: {gpu: -1}\n", "resources.gpu"),
        (BASE + "metric: {name: val_accuracy, mode: best}\n", "metric.mode"),
        (BASE.replace("name: t", "name: 'a b/c'"), "spec.yaml:1: name"),
        ("name: t\n", "spec.yaml: train: required key is missing"),
        (BASE.replace("[0, 1e-6]", "[0, lots]"), "hparam threshold"),
    ],
)
def test_bad_specs_name_file_line_and_field(tmp_path, text, expected):
    assert expected in error_of(write(tmp_path, text))


def test_unknown_key_inside_train_lists_the_train_keys(tmp_path):
    message = error_of(
        write(tmp_path, BASE.replace("hparams_set: bop", "hparams_set: bop\n  lr: 1"))
    )
    assert "train.lr: unknown key 'lr'" in message
    assert "preprocess_fn" in message


def test_object_constructing_tags_are_refused(tmp_path, capfd):
    hostile = "name: !!python/object/apply:os.system ['echo PWNED']\ntrain: {model: mlp}\n"
    message = error_of(write(tmp_path, hostile))
    assert "spec.yaml:1" in message and "refused" in message
    assert "PWNED" not in capfd.readouterr().out


def test_alias_bomb_is_refused_before_expansion(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        ref = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([ref] * 10)}]")
    bomb = "\n".join(lines) + "\nname: t\ntrain: {model: mlp}\n"
    assert "alias bomb" in error_of(write(tmp_path, bomb))


def test_absurd_grid_is_refused(tmp_path):
    values = "[" + ", ".join(str(i / 1000) for i in range(1, 1001)) + "]"
    text = BASE.replace("[0, 1e-6]", values).replace("[1e-3, 1e-4, 1e-2]", values)
    assert "2,000,000 trials" in error_of(write(tmp_path, text))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_passes_plan(path):
    result = subprocess.run(
        [str(BIN / "bopsweep"), "plan", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "trials" in result.stdout


def test_bad_spec_exits_2_without_traceback_or_ray(tmp_path):
    path = write(tmp_path, BASE.replace("model: mlp", "model: resnet"))
    for command in ("plan", "run"):
        result = subprocess.run(
            [str(BIN / "bopsweep"), command, str(path)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "unknown model 'resnet'" in result.stderr
        assert str(path) in result.stderr
        assert "Ray" not in result.stderr
    # Nothing was started: no results folder, no tracking store.
    assert not (tmp_path / "bopsweep_results").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_the_original_codes_hparam_names_and_validation_split_in_a_spec(tmp_path):
    text = BASE.replace("hparams_set: bop\n", "hparams_set: bop\n  validation_split: true\n")
    text = text.replace("hparams.gamma:", "hparams.gamma_start:")
    text = text.replace("seeds: [0, 1]", "")
    text = text.replace(
        "  hparams_set: bop\n", "  hparams_set: bop\n  hparams: {lr_start: 0.005}\n"
    )
    trials = expand(load_spec(write(tmp_path, text)))
    assert trials[1].swept == {"hparams.threshold": 0, "hparams.gamma_start": 1e-4}
    resolved = trials[1].train.resolved_hparams()
    assert (resolved.gamma, resolved.lr) == (1e-4, 0.005)
    assert trials[1].train.validation_split is True
    # An architecture hparam the model does not take is refused with the spec's file.
    bad = write(
        tmp_path, BASE.replace("hparams_set: bop", "hparams_set: bop\n  hparams: {filters: 8}")
    )
    assert "filters is not an option of model mlp" in error_of(bad)


# ------------------------------------------------------------- search beyond grid
SEARCH = """\
name: t
train: {model: mlp, dataset: digits, hparams_set: bop}
method: bayes
num_samples: 4
parameters:
  hparams.gamma: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-2}
  hparams.threshold: {values: [0, 1e-6]}
  hparams.lr: {value: 0.01}
"""


def test_bayes_is_not_expanded_up_front(tmp_path):
    loaded = load_spec(write(tmp_path, SEARCH + "seeds: [0, 1]\n"))
    trials = expand(loaded)
    assert count_trials(loaded.spec) == len(trials) == 4 * 2
    # The searcher proposes gamma and threshold as the sweep runs: only the fixed
    # value and the seed are known now.
    assert trials[0].swept == {"hparams.lr": 0.01, "seed": 0}
    assert trials[1].swept == {"hparams.lr": 0.01, "seed": 1}


def test_bayes_ranges_are_validated_before_anything_runs(tmp_path):
    text = SEARCH.replace("max: 1.0e-2", "max: 2.0")
    assert "gamma" in error_of(write(tmp_path, text))
    text = SEARCH.replace("values: [0, 1e-6]", "values: [0, -1]")
    assert "threshold" in error_of(write(tmp_path, text))


def test_metric_goal_is_w_and_b_s_name_for_mode(tmp_path):
    for goal, mode in (("minimize", "min"), ("maximize", "max")):
        loaded = load_spec(write(tmp_path, SEARCH + f"metric: {{name: val_loss, goal: {goal}}}\n"))
        assert loaded.spec.metric.mode == mode
    message = error_of(write(tmp_path, SEARCH + "metric: {goal: minimize, mode: max}\n"))
    assert "spec.yaml:" in message and "metric" in message and "contradicts" in message
    assert "metric.goal" in error_of(write(tmp_path, SEARCH + "metric: {goal: lower}\n"))


def test_metric_target_is_reached_in_the_metric_s_direction(tmp_path):
    spec = load_spec(write(tmp_path, SEARCH + "metric: {target: 0.9}\n")).spec
    assert spec.metric.reached(0.95) and spec.metric.reached(0.9)
    assert not spec.metric.reached(0.5) and not spec.metric.reached(float("nan"))
    spec = load_spec(write(tmp_path, SEARCH + "metric: {goal: minimize, target: 0.1}\n")).spec
    assert spec.metric.reached(0.05) and not spec.metric.reached(0.2)


def test_old_log_uniform_values_are_refused_with_the_migration(tmp_path):
    text = SEARCH.replace("log_uniform_values", "log_uniform")
    message = error_of(write(tmp_path, text))
    assert message.startswith(f"{tmp_path / 'spec.yaml'}:6: parameters.hparams.gamma:")
    assert "log_uniform takes exponents" in message
    assert "log_uniform_values with min: 1e-05, max: 0.01" in message
    assert "min: -11.51, max: -4.605" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("distribution", "low", "high", "step"),
    [
        ("{distribution: log_uniform, min: -11.5, max: -4.6}", 1.0e-5, 1.0e-2, None),
        ("{distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-2}", 1.0e-5, 1.0e-2, None),
        ("{distribution: q_log_uniform_values, min: 16, max: 256, q: 16}", 16, 256, 16),
        ("{distribution: q_uniform, min: 0, max: 1.0e-5, q: 1.0e-6}", 0, 1e-5, 1e-6),
        ("{distribution: int_uniform, min: 1, max: 4}", 1, 4, 1),
    ],
)
def test_w_and_b_distributions_draw_within_their_range(tmp_path, distribution, low, high, step):
    key = "batch_size" if "16" in distribution or "int" in distribution else "threshold"
    text = (
        "name: t\ntrain: {model: mlp, dataset: digits, hparams_set: bop}\nmethod: random\n"
        f"num_samples: 20\nparameters:\n  hparams.{key}: {distribution}\n"
    )
    values = [t.swept[f"hparams.{key}"] for t in expand(load_spec(write(tmp_path, text)))]
    assert len(set(values)) > 1
    for value in values:
        assert low * 0.999 <= value <= high * 1.001
        if step is not None:
            assert abs(value / step - round(value / step)) < 1e-6


def test_grid_refuses_distributions(tmp_path):
    text = SEARCH.replace("method: bayes", "method: grid")
    assert "use method: random or bayes" in error_of(write(tmp_path, text))


def test_early_terminate_is_w_and_b_s_hyperband(tmp_path):
    # W&B's cut points (wandb/sweeps hyperband_stopping.py): min_iter * eta^k, or s of
    # them below max_iter; s does not count brackets.
    text = SEARCH + "early_terminate: {type: hyperband, min_iter: 3, eta: 3, s: 2}\n"
    stopping = load_spec(write(tmp_path, text)).spec.stopping
    assert stopping.type == "wandb_hyperband" and stopping.eta == 3 and stopping.strict
    assert stopping.cut_points[:5] == [3, 9, 27, 81, 243]
    text = SEARCH + "early_terminate: {type: hyperband, max_iter: 27, eta: 3, s: 2}\n"
    assert load_spec(write(tmp_path, text)).spec.stopping.cut_points == [3, 9]
    assert "needs min_iter" in error_of(
        write(tmp_path, SEARCH + "early_terminate: {type: hyperband}\n")
    )
    assert "max_iter needs s" in error_of(
        write(tmp_path, SEARCH + "early_terminate: {type: hyperband, max_iter: 27}\n")
    )
    assert "no cut point" in error_of(
        write(tmp_path, SEARCH + "early_terminate: {type: hyperband, max_iter: 2, s: 1}\n")
    )
    both = SEARCH + "scheduler: {type: median}\nearly_terminate: {type: hyperband, min_iter: 1}\n"
    assert "not both" in error_of(write(tmp_path, both))
    assert "scheduler.type" in error_of(write(tmp_path, SEARCH + "scheduler: {type: pbt}\n"))


# ------------------------------------------------------------------- JSON Schema
def test_checked_in_schema_is_the_model_s():
    from bopsweep.sweep.spec import json_schema_text

    assert (REPO / "sweeps" / "schema.json").read_text() == json_schema_text(), (
        "sweeps/schema.json is stale: bopsweep schema --out sweeps/schema.json"
    )


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_validate_against_the_schema_editors_use(path):
    import json

    import jsonschema
    import yaml

    from bopsweep.sweep.spec import SpecLoader

    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=schema.json\n")
    schema = json.loads((REPO / "sweeps" / "schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.load(text, Loader=SpecLoader))


def test_schema_flags_what_plan_refuses():
    import json

    import jsonschema

    schema = json.loads((REPO / "sweeps" / "schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    good = {"name": "t", "train": {"model": "mlp", "hparams": {"gamma": 1e-3}}}
    assert validator.is_valid(good)
    for bad in (
        {**good, "colour": "blue"},
        {**good, "train": {"model": "resnet"}},
        {**good, "train": {"model": "mlp", "hparams": {"gama": 1}}},
        {**good, "parameters": {"hparams.gama": {"values": [1]}}},
        {**good, "method": "hyperopt"},
        {**good, "parameters": {"hparams.gamma": {"distribution": "loguniform"}}},
    ):
        assert not validator.is_valid(bad), bad


# ------------------------------------------------- W&B's and Ray Tune's spellings
MLP = "train: {model: mlp, dataset: digits, hparams_set: bop, device: cpu}\n"


def plan_of(tmp_path, text, overrides=()):
    loaded = load_spec(write(tmp_path, text), overrides)
    return loaded, expand(loaded)


def test_w_and_b_s_agent_keys_are_accepted_and_noted(tmp_path):
    text = (
        "program: train.py\nentity: me\nproject: bop-study\ncommand: ['${env}', '${program}']\n"
        "controller: {type: local}\ndescription: from W&B\nmethod: grid\n"
        "parameters: {hparams.gamma: {values: [1.0e-3, 1.0e-4]}}\n" + MLP
    )
    loaded, trials = plan_of(tmp_path, text)
    assert len(trials) == 2
    spec = loaded.spec
    # No name (optional in W&B): the file's; W&B's project is the MLflow experiment.
    assert (spec.name, spec.experiment, spec.description) == ("spec", "bop-study", "from W&B")
    notes = " | ".join(loaded.notes)
    assert "program, command, entity, controller: W&B's agent settings, not used" in notes
    assert "no name: the sweep is named 'spec'" in notes
    assert "project 'bop-study' (W&B's) is the MLflow experiment" in notes
    # The experiment given explicitly (--experiment sets it) wins over the project.
    loaded = load_spec(write(tmp_path, text), ["tracking.experiment=other"])
    assert loaded.spec.experiment == "other"
    # W&B's free-text names that cannot name a folder are refused with one that can.
    message = error_of(write(tmp_path, "name: My sweep!\n" + text))
    assert "spec.yaml:1: name:" in message and "e.g. name: My_sweep_" in message


def test_run_cap_is_the_count_of_a_search_and_the_cap_of_a_grid(tmp_path):
    search = "method: random\nparameters:\n  hparams.lr: {min: 0.001, max: 0.1}\n" + MLP
    message = error_of(write(tmp_path, search))
    assert "spec.yaml:1: method: method random draws until it is stopped in W&B" in message
    assert "run_cap: N (W&B) or num_samples: N (Ray Tune), or --set run_cap=N" in message
    loaded, trials = plan_of(tmp_path, search, ["run_cap=7"])
    assert len(trials) == count_trials(loaded.spec) == 7 and loaded.spec.num_samples == 7
    # A bayes search likewise; its placeholders count the trials Ray Tune asks for.
    bayes = search.replace("random", "bayes")
    assert "method bayes draws until" in error_of(write(tmp_path, bayes))
    assert len(plan_of(tmp_path, bayes, ["run_cap=3"])[1]) == 3
    # A Ray Tune spec (no method, drawn parameters) with no num_samples, likewise.
    ray = "parameters:\n  hparams.lr: {loguniform: [0.001, 0.1]}\n" + MLP
    message = error_of(write(tmp_path, ray))
    assert "spec.yaml:2: method: parameters are drawn at random (no method" in message
    assert len(plan_of(tmp_path, ray, ["num_samples=5"])[1]) == 5
    # A grid is capped: its first run_cap trials, as W&B stops after run_cap runs.
    grid = "method: grid\nrun_cap: 4\nparameters:\n  hparams.gamma: {values: [1, 2, 3]}\n"
    grid += "  hparams.threshold: {values: [0, 1.0e-6, 1.0e-5]}\n" + MLP
    loaded, trials = plan_of(tmp_path, grid.replace("[1, 2, 3]", "[0.1, 0.2, 0.3]"))
    assert [t.swept["hparams.threshold"] for t in trials] == [0, 1e-6, 1e-5, 0]
    assert "run_cap 4: the first 4 of 9 trials" in loaded.notes


def test_a_metric_needs_its_direction_and_a_name_trials_report(tmp_path):
    base = "parameters: {hparams.gamma: {values: [1.0e-3]}}\n" + MLP
    message = error_of(write(tmp_path, base + "metric: {name: val_loss}\n"))
    assert "metric: metric 'val_loss' has no goal: W&B minimizes by default" in message
    assert "goal: minimize or goal: maximize" in message
    # Ray Tune's form: the name at the top with mode beside it.
    loaded, _ = plan_of(tmp_path, base + "metric: val_loss\nmode: min\n")
    assert (loaded.spec.metric.name, loaded.spec.metric.mode) == ("val_loss", "min")
    assert "mode min contradicts" in error_of(
        write(tmp_path, base + "metric: {name: val_loss, mode: max}\nmode: min\n")
    )
    message = error_of(write(tmp_path, base + "metric: {name: loss, goal: minimize}\n"))
    assert "trials do not report 'loss'; they report: val_accuracy, val_loss" in message
    assert "flip_ratio/<layer>" in message
    layer = base + "metric: {name: flip_ratio/dense_1, goal: maximize}\n"
    assert plan_of(tmp_path, layer)[0].spec.metric.name == "flip_ratio/dense_1"
    message = error_of(write(tmp_path, base + "metric: {name: test_accuracy, goal: maximize}\n"))
    assert "only with train.validation_split: true" in message and "use val_accuracy" in message


def test_the_metric_names_are_what_a_trial_reports():
    from bopsweep.config import make_train_config
    from bopsweep.sweep.spec import EPOCH_METRICS
    from bopsweep.train import train

    config = make_train_config(
        model="mlp",
        dataset="digits",
        hparams_set="bop",
        epochs=1,
        validation_split=True,
        max_train_samples=64,
        device="cpu",
    )
    (reported,) = train(config).history
    # A per-step series (a list of [step, value]) is logged, not selected on.
    assert isinstance(reported.pop("log_flip_ratio_last"), list)
    layers = {k for k in reported if k.startswith("flip_ratio/")}
    assert layers
    top5 = {k for k in EPOCH_METRICS if "top5" in k}  # digits has ten classes
    assert set(reported) - layers == set(EPOCH_METRICS) - (top5 - set(reported))


def test_min_and_max_without_a_distribution_as_w_and_b_reads_them(tmp_path):
    text = (
        "method: random\nnum_samples: 30\nparameters:\n"
        "  hparams.batch_size: {min: 16, max: 20}\n  hparams.lr: {min: 0.001, max: 0.1}\n"
        "  hparams.gamma: {distribution: uniform, min: 0, max: 1}\n" + MLP
    )
    loaded, trials = plan_of(tmp_path, text)
    batch = [t.swept["hparams.batch_size"] for t in trials]
    assert all(isinstance(b, int) and 16 <= b <= 20 for b in batch) and len(set(batch)) > 2
    assert all(isinstance(t.swept["hparams.lr"], float) for t in trials)
    # gamma must be > 0: a continuous draw never lands on min 0, so it is accepted.
    assert all(0 < t.swept["hparams.gamma"] < 1 for t in trials)
    notes = " | ".join(loaded.notes)
    assert "hparams.batch_size: min and max without a distribution: int_uniform" in notes
    assert "hparams.lr: min and max without a distribution: uniform" in notes


def test_w_and_b_s_constant_categorical_and_probabilities(tmp_path):
    text = (
        "name: t\nmethod: random\nnum_samples: 400\nparameters:\n"
        "  epochs: {distribution: constant, value: 2}\n"
        "  hparams.batch_size: {distribution: categorical, values: [16, 32]}\n"
        "  hparams.fp_optimizer: {values: [adam, sgd], probabilities: [0.9, 0.1]}\n" + MLP
    )
    loaded, trials = plan_of(tmp_path, text)
    assert {t.swept["epochs"] for t in trials} == {2}
    assert {t.swept["hparams.batch_size"] for t in trials} == {16, 32}
    adam = sum(t.swept["hparams.fp_optimizer"] == "adam" for t in trials)
    assert 320 < adam < 400
    # The same spec written the plain way hashes the same.
    plain = text.replace("{distribution: constant, value: 2}", "{value: 2}")
    plain = plain.replace("{distribution: categorical, values: [16, 32]}", "{values: [16, 32]}")
    assert load_spec(write(tmp_path, plain, "plain.yaml")).sha256 == loaded.sha256
    assert "sum to 1.1" in error_of(write(tmp_path, text.replace("0.9, 0.1", "0.9, 0.2")))
    assert "2 probabilities for 3 values" in error_of(
        write(tmp_path, text.replace("[adam, sgd]", "[adam, sgd, adam]"))
    )
    grid = text.replace("method: random\nnum_samples: 400", "method: grid")
    assert "probabilities weigh a random choice" in error_of(write(tmp_path, grid))
    bayes = text.replace("random", "bayes")
    assert "Optuna's TPE has no weighted choice" in error_of(write(tmp_path, bayes))


def test_nested_parameters_are_dotted_names_with_their_lines(tmp_path):
    text = (
        "method: grid\nparameters:\n  seed: {values: [0, 1]}\n  hparams:\n    parameters:\n"
        "      gamma: {values: [1.0e-3, 1.0e-4]}\n      lr: {value: 0.02}\n" + MLP
    )
    _, trials = plan_of(tmp_path, text)
    assert trials[1].swept == {"seed": 0, "hparams.gamma": 1e-4, "hparams.lr": 0.02}
    assert trials[1].train.resolved_hparams().lr == 0.02
    # Ray Tune's nesting: a plain mapping of parameters.
    ray = text.replace("    parameters:\n      gamma", "      gamma").replace(
        "\n      lr", "\n    lr"
    )
    ray = ray.replace("      gamma:", "    gamma:")
    assert [t.swept for t in plan_of(tmp_path, ray)[1]] == [t.swept for t in trials]
    # --set reaches a nested parameter by its dotted name.
    loaded = load_spec(write(tmp_path, text), ["parameters.hparams.gamma.values=[0.01]"])
    assert loaded.spec.parameters["hparams.gamma"].values == [0.01]
    loaded = load_spec(write(tmp_path, ray), ["parameters.hparams.lr=0.03"])
    assert loaded.spec.parameters["hparams.lr"].value == 0.03
    message = error_of(write(tmp_path, text.replace("gamma: {values", "gama: {values")))
    assert "spec.yaml:6: parameters.hparams.gama: unknown parameter 'hparams.gama'" in message
    message = error_of(write(tmp_path, text.replace("[1.0e-3, 1.0e-4]", "[1.0e-3, 2.0]")))
    assert message.startswith(f"{tmp_path / 'spec.yaml'}:6: parameters.hparams.gamma: value 2.0")


def test_q_rounds_as_w_and_b_an_integer_q_to_integers(tmp_path):
    text = (
        "method: random\nnum_samples: 40\nparameters:\n"
        # W&B's colab: integers between 32 and 256 with evenly distributed logarithms
        "  hparams.batch_size: {distribution: q_log_uniform, q: 1, min: 3.4657359027997265,"
        " max: 5.545177444479562}\n"
        "  hparams.dense_units: {distribution: q_log_uniform_values, q: 8, min: 32, max: 256}\n"
        "  hparams.threshold: {distribution: q_uniform, min: 0, max: 1.0e-5, q: 1.0e-6}\n"
        "  hparams.gamma_decay_epochs: {distribution: q_uniform, min: 1, max: 9}\n" + MLP
    )
    _, trials = plan_of(tmp_path, text)
    for trial in trials:
        batch, units = trial.swept["hparams.batch_size"], trial.swept["hparams.dense_units"]
        assert isinstance(batch, int) and 32 <= batch <= 256
        assert isinstance(units, int) and units % 8 == 0 and 32 <= units <= 256
        assert isinstance(trial.swept["hparams.threshold"], float)
        # W&B's default q is 1.0, a float: floats with integral values.
        decay = trial.swept["hparams.gamma_decay_epochs"]
        assert isinstance(decay, float) and decay == int(decay)
    assert len({t.swept["hparams.batch_size"] for t in trials}) > 10


@pytest.mark.parametrize(
    ("distribution", "low", "high"),
    [
        ("{distribution: inv_log_uniform, min: 4.6, max: 11.5}", 1.0e-5, 1.0e-2),
        ("{distribution: inv_log_uniform_values, min: 1.0e-5, max: 1.0e-2}", 1.0e-5, 1.0e-2),
        ("{distribution: log_uniform, min: -11.5, max: -4.6}", 1.0e-5, 1.0e-2),
        ("{distribution: normal, mu: 0.01, sigma: 0.001}", 0.004, 0.016),
        ("{distribution: log_normal, mu: -4.6, sigma: 0.1}", 0.006, 0.015),
        ("{distribution: q_normal, mu: 0.01, sigma: 0.001, q: 0.001}", 0.004, 0.016),
    ],
)
def test_w_and_b_s_other_distributions(tmp_path, distribution, low, high):
    text = f"method: random\nnum_samples: 50\nparameters:\n  hparams.lr: {distribution}\n" + MLP
    values = [t.swept["hparams.lr"] for t in plan_of(tmp_path, text)[1]]
    assert all(low * 0.999 <= v <= high * 1.001 for v in values) and len(set(values)) > 3


def test_grid_expands_int_uniform_and_q_uniform_as_w_and_b(tmp_path):
    import numpy

    text = (
        "method: grid\nparameters:\n  hparams.batch_size: {distribution: int_uniform, min: 30,"
        " max: 33}\n  hparams.sigma: {distribution: q_uniform, min: 0.1, max: 0.5, q: 0.1}\n" + MLP
    )
    _, trials = plan_of(tmp_path, text)
    assert len(trials) == 4 * 4
    assert [t.swept["hparams.batch_size"] for t in trials[::4]] == [30, 31, 32, 33]
    # W&B's grid: numpy.arange(min, max, q), max left out.
    assert [t.swept["hparams.sigma"] for t in trials[:4]] == numpy.arange(0.1, 0.5, 0.1).tolist()
    drawn = text.replace("q_uniform", "uniform").replace(", q: 0.1", "")
    message = error_of(write(tmp_path, drawn))
    assert "spec.yaml:4: parameters.hparams.sigma: method 'grid' takes values" in message
    assert "use method: random or bayes" in message


def test_grid_num_samples_repeats_it_as_ray_tune_each_with_a_seed(tmp_path):
    text = "parameters:\n  hparams.gamma: {grid_search: [1.0e-3, 1.0e-4]}\nnum_samples: 3\n"
    loaded, trials = plan_of(tmp_path, text + MLP)
    assert loaded.spec.method == "grid"
    assert [(t.swept["hparams.gamma"], t.train.seed) for t in trials] == [
        (1e-3, 0),
        (1e-4, 0),
        (1e-3, 1),
        (1e-4, 1),
        (1e-3, 2),
        (1e-4, 2),
    ]
    assert "the grid runs 3 times (as Ray Tune repeats it)" in " ".join(loaded.notes)
    assert "give one of the two" in error_of(write(tmp_path, text + MLP + "seeds: [5, 6]\n"))


@pytest.mark.parametrize(
    ("ray", "fields"),
    [
        ("{choice: [16, 32]}", {"values": [16, 32]}),
        ("{grid_search: [16, 32]}", {"grid_search": [16, 32]}),
        ("{uniform: [1, 5]}", {"distribution": "uniform", "min": 1, "max": 5}),
        ("{uniform: {lower: 1, upper: 5}}", {"distribution": "uniform", "min": 1, "max": 5}),
        ("{loguniform: [1, 100]}", {"distribution": "log_uniform_values", "min": 1, "max": 100}),
        # Ray snaps quantized bounds inwards to multiples of q, then draws and rounds
        (
            "{quniform: [3.1, 5.4, 0.5]}",
            {"distribution": "q_uniform", "min": 3.5, "max": 5.0, "q": 0.5},
        ),
        (
            "{qloguniform: [10, 100, 4]}",
            {"distribution": "q_log_uniform_values", "min": 12, "max": 100, "q": 4.0},
        ),
        # randint's upper bound is exclusive, as numpy's; qrandint's inclusive (q > 1)
        ("{randint: [16, 65]}", {"distribution": "int_uniform", "min": 16, "max": 64}),
        (
            "{qrandint: [16, 64, 16]}",
            {"distribution": "int_uniform", "min": 16, "max": 64, "q": 16},
        ),
        ("{qrandint: [16, 65]}", {"distribution": "int_uniform", "min": 16, "max": 64}),
        ("{randn: [10, 2]}", {"distribution": "normal", "mu": 10.0, "sigma": 2.0}),
        ("{qrandn: [10, 2, 1]}", {"distribution": "q_normal", "mu": 10, "sigma": 2, "q": 1.0}),
        ("64", {"value": 64}),
    ],
)
def test_ray_tune_forms_are_read_as_w_and_b_s(ray, fields):
    import yaml as pyyaml

    from bopsweep.sweep.spec import ParameterSpec

    read = ParameterSpec.model_validate(pyyaml.safe_load(ray))
    assert read == ParameterSpec.model_validate(fields)


def test_ray_tune_randint_draws_below_its_upper_bound(tmp_path):
    text = "parameters:\n  hparams.batch_size: {randint: [16, 19]}\nnum_samples: 60\n" + MLP
    loaded, trials = plan_of(tmp_path, text)
    assert loaded.spec.method == "random"  # no method: drawn parameters, as Ray Tune
    assert {t.swept["hparams.batch_size"] for t in trials} == {16, 17, 18}


@pytest.mark.parametrize(
    ("ray", "expected"),
    [
        (
            "{lograndint: [1, 10]}",
            "nearest is {distribution: q_log_uniform_values, min: 1, max: 9, q: 1}",
        ),
        (
            "{qlograndint: [2, 10, 2]}",
            "nearest is {distribution: q_log_uniform_values, min: 2, max: 10, q: 2}",
        ),
        ("{sample_from: 'lambda spec: 1'}", "tune.sample_from runs Python"),
        ("'tune.uniform(0, 1)'", "a YAML spec writes Ray Tune's uniform as {uniform: [0, 1]}"),
        ("{uniform: [1, 5], max: 3}", "uniform (Ray Tune's form) stands alone: 'max' given"),
        ("{randint: [1.5, 5]}", "randint takes integers"),
    ],
)
def test_ray_tune_forms_w_and_b_cannot_draw_are_refused_with_a_rewrite(tmp_path, ray, expected):
    text = f"parameters:\n  hparams.batch_size: {ray}\nnum_samples: 2\n" + MLP
    message = error_of(write(tmp_path, text))
    assert "spec.yaml:2: parameters.hparams.batch_size:" in message and expected in message


def test_ray_tune_grid_search_in_a_random_search_is_a_grid_per_sample(tmp_path):
    text = (
        "method: random\nnum_samples: 3\nparameters:\n"
        "  hparams.fp_optimizer: {grid_search: [adam, sgd]}\n"
        "  hparams.lr: {loguniform: [1.0e-3, 1.0e-1]}\n" + MLP
    )
    _, trials = plan_of(tmp_path, text)
    assert [t.swept["hparams.fp_optimizer"] for t in trials] == ["adam", "sgd"] * 3
    assert len({t.swept["hparams.lr"] for t in trials}) == 6
    message = error_of(write(tmp_path, text.replace("random", "bayes")))
    assert "grid_search runs every value, and Optuna proposes values: write values:" in message


def test_every_problem_of_a_spec_in_one_run(tmp_path):
    text = (
        "program: train.py\n"  # accepted
        "method: random\n"  # 2: no count
        "metric: {name: val_loss}\n"  # 3: no goal
        "parameters:\n"
        "  hparams.gama: {values: [1]}\n"  # 5: unknown parameter
        "  hparams.lr: {lograndint: [1, 10]}\n"  # 6: no W&B form
        "  hparams.threshold: {values: [-1, 0]}\n"  # 7: a value train refuses
        "resources: {gpu: -1}\n"  # 8: out of range
        "colour: blue\n" + MLP  # 9: unknown key
    )
    message = error_of(write(tmp_path, text))
    path = tmp_path / "spec.yaml"
    lines = message.splitlines()
    assert lines[0] == f"7 problems in {path}:"
    assert [line.split(":")[1] for line in lines[1:]] == ["2", "3", "5", "6", "7", "8", "9"]
    assert all(line.startswith(f"  {path}:") for line in lines[1:])
    assert "value -1" in lines[5] and "resources.gpu" in lines[6] and "colour" in lines[7]


def test_every_problem_at_once_from_the_command_exit_2(tmp_path):
    path = write(tmp_path, "method: random\nmetric: {name: val_loss}\n" + MLP)
    result = subprocess.run(
        [str(BIN / "bopsweep"), "plan", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:1: method:" in result.stderr and f"{path}:2: metric:" in result.stderr


def test_plan_shows_when_trials_may_be_stopped(tmp_path):
    from bopsweep.sweep.spec import max_epochs, stopping_summary

    text = "early_terminate: {type: hyperband, min_iter: 3}\n" + MLP.replace(
        "bop,", "bop, epochs: 30,"
    )
    loaded, trials = plan_of(tmp_path, text)
    summary = stopping_summary(loaded.spec.stopping, max_epochs(loaded.spec, trials))
    assert "W&B's hyperband (eta 3, strict): trials compared at epochs 3, 9, 27 (of 30)" in summary
    text = "scheduler: {type: asha, grace_period: 1, reduction_factor: 2, max_t: 10}\n" + MLP
    loaded, trials = plan_of(tmp_path, text)
    summary = stopping_summary(loaded.spec.stopping, max_epochs(loaded.spec, trials))
    assert "may be stopped at epochs 1, 2, 4, 8; trials end at max_t 10" in summary


@pytest.mark.parametrize(
    ("early_terminate", "cut_points"),
    [
        # wandb/sweeps tests/test_hyperband_stopping.py and W&B's docs
        ({"min_iter": 3, "eta": 3}, [3, 9, 27]),
        ({"max_iter": 81, "eta": 3, "s": 3}, [3, 9, 27]),
        ({"max_iter": 18, "eta": 3, "s": 2}, [2, 6]),
        ({"max_iter": 27, "s": 2}, [3, 9]),
        ({"max_iter": 10, "eta": 3, "s": 2}, [1, 3]),  # 3.33 and 1.11, rounded down
        ({"max_iter": 5, "eta": 2, "s": 5}, [1, 2]),  # 0.625 and below: no band
        ({"min_iter": 2, "eta": 1.5}, [2, 3, 4, 6, 10]),  # 4.5 -> 4, 6.75 -> 6, 10.125 -> 10
    ],
)
def test_cut_points_are_w_and_b_s(early_terminate, cut_points):
    from bopsweep.sweep.spec import EarlyTerminateSpec

    spec = EarlyTerminateSpec(type="hyperband", **early_terminate)
    assert spec.cut_points[: len(cut_points)] == cut_points


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_a_spec_reads_back_from_its_saved_state(path):
    """A sweep's state (resume, `bopsweep sync`) keeps the spec as its JSON dump, every
    field written, unset ones as null: it must read back as the same spec."""
    spec = load_spec(path).spec
    saved = spec.model_dump(mode="json")
    assert SweepSpec.model_validate(saved).model_dump(mode="json") == saved
