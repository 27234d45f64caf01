"""Sweep specs: validation messages, expansion, overrides, hostile input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bopsweep.errors import UserError
from bopsweep.sweep.spec import count_trials, expand, load_spec, parse_override

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
        ("train:\n  model: mlp\n", "name: required key is missing"),
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


def test_early_terminate_is_w_and_b_s_hyperband_run_by_asha(tmp_path):
    text = SEARCH + "early_terminate: {type: hyperband, min_iter: 3, eta: 3, s: 2}\n"
    stopping = load_spec(write(tmp_path, text)).spec.stopping
    assert (stopping.type, stopping.grace_period, stopping.reduction_factor) == ("asha", 3, 3)
    assert stopping.brackets == 2
    text = SEARCH + "early_terminate: {type: hyperband, max_iter: 27, eta: 3, s: 2}\n"
    assert load_spec(write(tmp_path, text)).spec.stopping.grace_period == 3
    assert "needs min_iter" in error_of(
        write(tmp_path, SEARCH + "early_terminate: {type: hyperband}\n")
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
