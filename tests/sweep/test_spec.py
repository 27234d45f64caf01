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
        "  hparams.gamma: {distribution: log_uniform, min: 1.0e-5, max: 1.0e-2}\n"
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
