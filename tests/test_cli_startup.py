"""Commands that need no training answer at once: ``--help``, ``plan`` and every
refused spec run without importing torch, Ray, MLflow or the plotting stack.

Each check runs in a fresh interpreter and reports which heavy packages it
imported: that is the cause of a slow start, and unlike a wall-clock time it is
the same on every machine. (Timings are measured by ``bopsweep bench``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.main import get_command

from bopsweep.cli import app

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "sweeps" / "quickstart.yaml"

# Packages that take from a tenth of a second to seconds to import.
HEAVY = ("torch", "torchvision", "ray", "mlflow", "matplotlib", "sklearn", "pandas", "numpy")

# Runs a snippet, then writes the heavy packages it imported to the file named by
# argv[1]; exits with the snippet's exit code.
_REPORT = """\
import json, sys
_report, sys.argv = sys.argv[1], ["bopsweep", *sys.argv[2:]]
_code = 0
try:
{snippet}
except SystemExit as _exit:
    _code = _exit.code if isinstance(_exit.code, int) else (_exit.code is not None)
with open(_report, "w") as _f:
    json.dump(sorted({{m.partition(".")[0] for m in sys.modules}} & set({heavy!r})), _f)
sys.exit(_code)
"""

_CLI = "from bopsweep.cli import main\nmain()"


def _python(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter in ``tmp_path``, with ``args`` as its argv."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
    )


def _run(tmp_path: Path, snippet: str, *args: str) -> tuple[subprocess.CompletedProcess, list]:
    report = tmp_path / "imported.json"
    code = _REPORT.format(snippet=textwrap.indent(snippet, "    "), heavy=HEAVY)
    result = _python(tmp_path, code, str(report), *args)
    assert report.exists(), result.stderr
    return result, json.loads(report.read_text())


def _bopsweep(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list]:
    return _run(tmp_path, _CLI, *args)


def _assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_help_imports_nothing_heavy(tmp_path):
    result, heavy = _bopsweep(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert "plan" in result.stdout and "run" in result.stdout
    assert heavy == []


@pytest.mark.parametrize("command", sorted(get_command(app).commands))
def test_command_help_imports_nothing_heavy(tmp_path, command):
    result, heavy = _bopsweep(tmp_path, command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert heavy == []


def test_plan_of_quickstart_imports_nothing_heavy(tmp_path):
    result, heavy = _bopsweep(tmp_path, "plan", str(QUICKSTART))
    assert result.returncode == 0, result.stderr
    assert "9 trials" in result.stdout
    assert heavy == []


QUICKSTART_TEXT = QUICKSTART.read_text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            QUICKSTART_TEXT.replace("model: mlp", "model: resnet9000"),
            ["spec.yaml:", "unknown model 'resnet9000'", "binarynet"],
        ),
        (
            QUICKSTART_TEXT.replace("dataset: digits", "dataset: svhn"),
            ["unknown dataset 'svhn'", "cifar10"],
        ),
        (
            QUICKSTART_TEXT.replace(
                "hparams_set: bop", "hparams_set: bop\n  preprocess_fn: jitter"
            ),
            ["unknown preprocess fn 'jitter'", "resize_and_flip"],
        ),
        (
            QUICKSTART_TEXT.replace("[1.0e-2, 1.0e-3, 1.0e-4]", "[1.0e-2, 2.0]"),
            ["gamma", "less than or equal to 1"],
        ),
        ("name: t\ntrain: [mlp, digits\n", ["spec.yaml:", "invalid YAML"]),
    ],
    ids=["unknown model", "unknown dataset", "unknown preprocess fn", "bad value", "bad YAML"],
)
def test_refused_spec_is_one_line_and_imports_nothing_heavy(tmp_path, text, expected):
    result, heavy = _bopsweep(tmp_path, "plan", str(_spec(tmp_path, text)))
    _assert_one_line_error(result, *expected)
    assert heavy == []


def test_spec_that_is_not_utf8_text_is_refused_in_one_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xff\xfe\x00name: x")
    result, heavy = _bopsweep(tmp_path, "plan", str(path))
    _assert_one_line_error(result, f"{path}: not a text file (UTF-8)")
    assert heavy == []


def test_library_validation_imports_nothing_heavy(tmp_path):
    """What the sweep driver checks before Ray starts, as a library: names, values
    and whether the data is on disk."""
    snippet = f"""\
from bopsweep.config import make_train_config
from bopsweep.data import check_available
from bopsweep.errors import UserError
from bopsweep.sweep.spec import expand, load_spec

expand(load_spec({str(QUICKSTART)!r}))
make_train_config(model="alexnet", dataset="imagenet2012", hparams_set="bop")
for values in ({{"model": "resnet"}}, {{"model": "mlp", "hparams": {{"gamma": 2}}}}):
    try:
        make_train_config(**values)
        raise AssertionError(values)
    except UserError:
        pass
try:
    check_available("cifar10", "no-such-folder", download=False)
    raise AssertionError("cifar10 found")
except UserError:
    pass
check_available("cifar10", "no-such-folder", download=True)
check_available("digits", "no-such-folder", download=False)
import bopsweep
assert bopsweep.__version__
"""
    result, heavy = _run(tmp_path, snippet)
    assert result.returncode == 0, result.stderr
    assert heavy == []


def test_train_refuses_missing_data_before_importing_torch(tmp_path):
    result, imported = _bopsweep(
        tmp_path, "train", "binarynet", "--dataset", "cifar10", "--data-dir", str(tmp_path)
    )
    _assert_one_line_error(result, "CIFAR-10 not found")
    assert "torch" not in imported, imported


# ------------------------------------------------------------------ CLI habits
def test_version_imports_nothing_heavy(tmp_path):
    import bopsweep

    result, heavy = _bopsweep(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"bopsweep {bopsweep.__version__}\n"
    assert heavy == []


def test_plan_json_is_json_on_stdout_and_imports_nothing_heavy(tmp_path):
    result, heavy = _bopsweep(tmp_path, "plan", str(QUICKSTART), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["name"] == "quickstart" and plan["method"] == "grid" and plan["trials"] == 9
    assert plan["planned"][4]["swept"] == {"hparams.threshold": 1e-6, "hparams.gamma": 1e-3}
    assert plan["planned"][4]["train"]["model"] == "mlp"
    assert plan["metric"]["mode"] == "max" and len(plan["spec_sha256"]) == 64
    assert plan["schema"] == "sweeps/schema.json"
    assert heavy == []


def test_plan_of_a_bayes_search_shows_its_space(tmp_path):
    text = QUICKSTART_TEXT.replace("method: grid", "") + (
        "method: bayes\nnum_samples: 5\nearly_terminate: {type: hyperband, min_iter: 2}\n"
    )
    text = text.replace(
        "values: [1.0e-2, 1.0e-3, 1.0e-4]",
        "{distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}",
    )
    result, heavy = _bopsweep(tmp_path, "plan", str(_spec(tmp_path, text)))
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stdout.split())  # the title wraps
    assert "5 trials (5 configurations) proposed by Optuna" in shown
    assert "log_uniform_values [0.0001, 0.01]" in shown
    assert (
        "early stopping: W&B's hyperband (eta 3, strict): trials compared at epochs 2, 6, 18"
        in shown
    )
    assert "sweeps/schema.json" in shown
    assert heavy == []


def test_schema_command_prints_the_checked_in_schema(tmp_path):
    result, heavy = _bopsweep(tmp_path, "schema")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "sweeps" / "schema.json").read_text()
    assert json.loads(result.stdout)["title"] == "bopsweep sweep spec"
    assert heavy == []


def test_help_declares_the_environment_variables_options_read(tmp_path):
    expected = {
        "run": ["MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "RAY_ADDRESS"],
        "submit": ["MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "RAY_API_SERVER_ADDRESS"],
        "report": ["MLFLOW_TRACKING_URI"],
        "ui": ["MLFLOW_TRACKING_URI"],
    }
    for command, names in expected.items():
        result, _ = _bopsweep(tmp_path, command, "--help")
        text = " ".join(result.stdout.replace("│", " ").split())
        for name in names:
            assert f"[env var: {name}" in text, (command, name)


def test_experiment_name_from_the_environment_overrides_the_spec(tmp_path, monkeypatch):
    """`run` takes MLFLOW_EXPERIMENT_NAME as --experiment: seen in the spec it
    validates (a bad spec is still refused in one line, before Ray)."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "2024")
    bad = _spec(tmp_path, QUICKSTART_TEXT.replace("model: mlp", "model: resnet"))
    result, heavy = _bopsweep(tmp_path, "run", str(bad))
    _assert_one_line_error(result, "unknown model 'resnet'")
    assert heavy == []
    from bopsweep.cli.sweeps import _experiment_override
    from bopsweep.sweep.spec import load_spec

    spec = load_spec(QUICKSTART, _experiment_override("2024")).spec
    assert spec.experiment == "2024"
    spec = load_spec(QUICKSTART, [*_experiment_override("a"), "tracking.experiment=b"]).spec
    assert spec.experiment == "b"


def test_shell_completion_completes_commands_and_options(tmp_path):
    script = Path(sys.executable).parent / "bopsweep"
    env = {**os.environ, "_BOPSWEEP_COMPLETE": "complete_bash", "COMP_CWORD": "1"}
    result = subprocess.run(
        [str(script)],
        env={**env, "COMP_WORDS": "bopsweep pl"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split() == ["plan"], result.stderr
    result = subprocess.run(
        [str(script)],
        env={**env, "COMP_WORDS": "bopsweep run --tracking-u", "COMP_CWORD": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split() == ["--tracking-uri"], result.stderr
    # The shell is detected from the parent process (shellingham): run from bash, as a
    # user would (`; true` keeps bash from exec-ing the command in its place).
    result = subprocess.run(
        ["bash", "-c", f"'{script}' --show-completion; true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "_BOPSWEEP_COMPLETE=complete_bash" in result.stdout


_COMMAND = """\
import atexit, sys
marker = sys.argv.pop(1)
atexit.register(lambda: open(marker, "w").write("atexit ran"))
from bopsweep.cli import command
command()
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [(("plan", str(QUICKSTART), "--json"), 0), (("plan", "missing.yaml"), 2), (("nope",), 2)],
)
def test_the_command_exits_quickly_with_its_code_and_everything_flushed(tmp_path, args, code):
    """The console command skips Python's module teardown, not its exit work:
    exit codes, stdout through a pipe, atexit handlers."""
    marker = tmp_path / "atexit.txt"
    result = _python(tmp_path, _COMMAND, str(marker), *args)
    assert result.returncode == code, result.stderr
    assert marker.read_text() == "atexit ran"
    if code == 0:
        assert json.loads(result.stdout)["trials"] == 9  # all of it, through the pipe
    else:
        assert result.stderr.strip()
