"""``bopsweep train`` as a user runs it: the installed console script, in a subprocess.

Every invocation of the module is started up front, a few at a time, and each test
checks one of them: the cost is mostly Python and torch starting up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch


def _bopsweep() -> str:
    beside = Path(sys.executable).with_name("bopsweep")
    if beside.exists():
        return str(beside)
    found = shutil.which("bopsweep")
    if found is None:
        pytest.fail("the bopsweep console script is not installed")
    return found


PAPER_COMMAND = [
    # The original code's section 5.1 command line, verbatim...
    "train",
    "binarynet",
    "--dataset",
    "cifar10",
    "--preprocess-fn",
    "resize_and_flip",
    "--hparams-set",
    "bop",
    "--hparams",
    "threshold=1e-6,gamma=1e-3",
    # ...made small enough for a test.
    "--epochs",
    "1",
    "--max-train-samples",
    "20",
    "--max-val-samples",
    "10",
]

DIGITS = ["train", "mlp", "--dataset", "digits", "--hparams-set", "bop"]

# name: (arguments, messages that stderr must contain)
BAD_INPUTS = {
    "unknown model": (
        ["train", "resnet", "--dataset", "digits"],
        ["unknown model 'resnet'", "binarynet", "mlp"],
    ),
    "unknown dataset": (
        ["train", "mlp", "--dataset", "svhn"],
        ["unknown dataset 'svhn'", "cifar10", "digits"],
    ),
    "unknown preprocess fn": (
        [*DIGITS, "--preprocess-fn", "random_crop"],
        ["unknown preprocess fn 'random_crop'", "resize_and_flip"],
    ),
    "unknown hparams set": (
        ["train", "mlp", "--dataset", "digits", "--hparams-set", "bop_sec99"],
        ["unknown hparams set 'bop_sec99'", "bop", "default"],
    ),
    "unknown hparam": (
        [*DIGITS, "--hparams", "gama=1e-3"],
        ["unknown hparam 'gama'", "gamma", "threshold"],
    ),
    "gamma not a number": ([*DIGITS, "--hparams", "gamma=abc"], ["gamma", "abc"]),
    "gamma above 1": ([*DIGITS, "--hparams", "gamma=2"], ["gamma", "less than or equal to 1"]),
    "resume without an output dir": (
        [*DIGITS, "--resume"],
        ["--resume continues the run in --output-dir: give --output-dir"],
    ),
    "resume with nothing to resume": (
        [*DIGITS, "--resume", "--output-dir", "{empty}"],
        ["--resume: no checkpoint.pt in {empty}"],
    ),
    "architecture hparam of another model": (
        [*DIGITS, "--hparams", "kernel_size=3"],
        ["hparam kernel_size is not an option of model mlp", "dense_units"],
    ),
    "missing cifar10 files": (
        ["train", "binarynet", "--dataset", "cifar10", "--data-dir", "{empty}"],
        ["CIFAR-10 not found", "{empty}/cifar-10-batches-py", "data_batch_1"],
    ),
}


def _flat(text: str) -> str:
    """Whitespace collapsed, so a message wrapped by the console still matches."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar10_factory) -> dict[str, tuple[subprocess.CompletedProcess, dict]]:
    root = tmp_path_factory.mktemp("cli")
    cifar10 = cifar10_factory(root / "data")
    empty = root / "empty"
    empty.mkdir()
    paths = {
        "empty": str(empty),
        "out": str(root / "out"),
        "held_out": str(root / "held_out"),
        "data": str(cifar10.data_dir),
    }

    commands = {
        "digits": [*DIGITS, "--epochs", "1", "--output-dir", "{out}"],
        # The original code's flag and hparam names.
        "validationset": [
            *DIGITS,
            "--epochs",
            "1",
            "--validationset",
            "--hparams",
            "lr_start=0.005,dense_units=64",
            "--output-dir",
            "{held_out}",
        ],
        "paper": [*PAPER_COMMAND, "--data-dir", "{data}"],
        **{name: args for name, (args, _) in BAD_INPUTS.items()},
    }
    # One thread per process: several run at once on a small machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    bopsweep = _bopsweep()

    def run(args: list[str]) -> subprocess.CompletedProcess:
        argv = [bopsweep, *(arg.format(**paths) for arg in args)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=root)

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, args) for name, args in commands.items()}
        return {name: (future.result(), paths) for name, future in futures.items()}


def _assert_clean(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


def test_train_mlp_on_digits_writes_its_outputs(runs):
    result, paths = runs["digits"]
    assert result.returncode == 0, result.stderr
    _assert_clean(result)
    out = Path(paths["out"])

    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert metrics["epoch"] == 0
    assert 0.5 < metrics["val_accuracy"] <= 1.0
    assert {"train_loss", "flip_ratio", "flip_ratio/dense1", "gamma", "threshold"} <= set(metrics)

    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["dataset"], config["hparams_set"]) == ("mlp", "digits", "bop")
    assert config["hparams"]["epochs"] == 1
    assert config["hparams"]["optimizer"] == "bop"
    assert (config["hparams"]["threshold"], config["hparams"]["gamma"]) == (1e-6, 1e-3)

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert len(checkpoint["histories"][0]) == 1
    weights = checkpoint["model"]["dense2.weight"]
    assert torch.all(weights.abs() == 1.0)


def test_the_papers_command_line_runs(runs):
    result, _ = runs["paper"]
    assert result.returncode == 0, result.stderr
    _assert_clean(result)
    assert "binarynet on cifar10 (20 train images)" in _flat(result.stderr)
    assert "epoch 1/1" in result.stderr


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_message(runs, case):
    result, paths = runs[case]
    _, messages = BAD_INPUTS[case]
    assert result.returncode == 2, (result.stdout, result.stderr)
    _assert_clean(result)
    stderr = _flat(result.stderr)
    for message in messages:
        assert _flat(message.format(**paths)) in stderr


def test_validationset_scores_the_test_set_apart(runs):
    result, paths = runs["validationset"]
    assert result.returncode == 0, result.stderr
    assert "mlp on digits (1294 train images)" in _flat(result.stderr)
    assert "test_acc" in result.stderr
    out = Path(paths["held_out"])
    (metrics,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"val_accuracy", "test_accuracy", "test_loss", "test_top5_accuracy"} <= set(metrics)
    config = json.loads((out / "config.json").read_text())
    assert config["validation_split"] is True
    assert (config["hparams"]["lr"], config["hparams"]["dense_units"]) == (0.005, 64)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["model"]["dense2.weight"].shape == (64, 64)


def test_a_killed_run_resumes_without_repeating_or_losing_an_epoch(tmp_path):
    from bopsweep.testing import KILL_AT_EPOCH_ENV, KILL_CALLBACK, KILL_MARKER_ENV

    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    killing = {
        **env,
        "BOPSWEEP_TRIAL_CALLBACKS": KILL_CALLBACK,
        KILL_AT_EPOCH_ENV: "2",  # SIGKILL in the middle of the third epoch
        KILL_MARKER_ENV: str(tmp_path / "killed"),
    }
    args = [_bopsweep(), *DIGITS, "--epochs", "4", "--output-dir"]

    def run(out: str, run_env: dict, *extra: str) -> subprocess.CompletedProcess:
        argv = [*args, str(tmp_path / out), *extra]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=run_env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        killed_future = pool.submit(run, "run", killing)
        whole = run("whole", env)
    killed = killed_future.result()
    assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "killed").exists()
    # Two epochs were done and checkpointed before the kill.
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 2

    with ThreadPoolExecutor(max_workers=2) as pool:
        # Resuming with other settings is refused.
        other_future = pool.submit(run, "run", env, "--resume", "--seed", "1")
        resumed = run("run", killing, "--resume")  # the marker keeps it from killing again
    other = other_future.result()
    assert other.returncode == 2
    assert "was started with other settings (seed)" in _flat(other.stderr)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after epoch 2" in _flat(resumed.stderr)
    assert "epoch 3/4" in resumed.stderr and "epoch 1/4" not in resumed.stderr

    def history(out: str) -> list[dict]:
        lines = (tmp_path / out / "metrics.jsonl").read_text().splitlines()
        timing = ("epoch_time_s", "samples_per_s")
        return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]

    assert whole.returncode == 0, whole.stderr
    assert [m["epoch"] for m in history("run")] == [0, 1, 2, 3]
    # The same run as one never killed, epoch by epoch.
    assert history("run") == history("whole")
