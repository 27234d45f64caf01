"""``bopsweep run`` refuses what it can know is wrong before Ray starts: missing
dataset files, GPUs the machine does not have, storage it cannot write, a tracking
store it cannot reach. Each is exit code 2 and one message, and neither Ray nor
torch is imported (so nothing was started): the refusal costs no start-up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port
from tests.test_cli_startup import _assert_one_line_error, _bopsweep

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "sweeps" / "quickstart.yaml")
SEC51 = str(REPO / "sweeps" / "sec51_grid.yaml")


def _refused(tmp_path: Path, *args: str, allowed: tuple[str, ...] = ()) -> str:
    result, imported = _bopsweep(tmp_path, "run", *args)
    _assert_one_line_error(result)
    started = set(imported) & {"ray", "torch"}
    assert not started - set(allowed), (imported, result.stderr)
    assert not (tmp_path / "bopsweep_results" / "quickstart" / "logs").exists()
    return result.stderr


def test_missing_cifar10_is_refused_before_ray_starts(tmp_path):
    message = _refused(tmp_path, SEC51, "--set", "resources.gpu=0", "--set", "train.device=cpu")
    assert "cifar-10-batches-py" in message and "--download" in message


def test_more_cpus_than_the_machine_has_are_refused(tmp_path):
    message = _refused(tmp_path, QUICKSTART, "--set", "resources.cpu=512")
    assert "asks for 512 CPUs" in message and "--set resources.cpu=1" in message


@pytest.fixture
def no_gpu_here(monkeypatch):
    """The command sees no GPU, on any machine: CUDA_VISIBLE_DEVICES hides them all."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_gpus_the_machine_lacks_are_refused(tmp_path, no_gpu_here):
    message = _refused(tmp_path, QUICKSTART, "--set", "resources.gpu=1")
    assert "asks for 1 GPU but this machine has 0" in message
    assert "--set resources.gpu=0" in message


def test_cuda_device_without_a_gpu_is_refused(tmp_path, no_gpu_here):
    message = _refused(tmp_path, QUICKSTART, "--set", "train.device=cuda")
    assert "no GPU" in message and "train.device=cpu" in message


def _spec_trials(*overrides: str):
    from bopsweep.sweep.spec import expand, load_spec

    loaded = load_spec(QUICKSTART, list(overrides))
    return loaded.spec, expand(loaded)


@pytest.mark.parametrize(
    ("overrides", "refusal"),
    [
        (["train.device=cuda"], "resources.gpu is 0: Ray gives a trial only the GPUs"),
        (["train.device=cuda:0"], "resources.gpu is 0"),
        (["train.device=cuda:1", "resources.gpu=1"], "sees 1 GPU, numbered from 0"),
        (["train.device=cuda:1", "resources.gpu=0.25"], "sees 1 GPU, numbered from 0"),
        (["train.device=cuda:x", "resources.gpu=1"], "valid devices: auto, cpu, cuda"),
        (["train.device=cuda"], "--set train.device=auto"),
    ],
)
def test_a_device_the_trials_will_not_be_given_is_refused(overrides, refusal):
    """On any machine and on a cluster: it is the spec against what Ray gives a trial."""
    from bopsweep.errors import UserError
    from bopsweep.sweep.preflight import check_devices

    spec, trials = _spec_trials(*overrides)
    with pytest.raises(UserError, match=re.escape(refusal)):
        check_devices(spec, trials)


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # device: cpu
        ["train.device=auto"],  # CPU where no GPU is given: Ray hides the node's GPUs
        ["train.device=auto", "resources.gpu=0.25"],
        ["train.device=cuda", "resources.gpu=0.25"],
        ["train.device=cuda:1", "resources.gpu=2"],
    ],
)
def test_devices_the_trials_are_given_pass(overrides):
    from bopsweep.sweep.preflight import check_devices

    check_devices(*_spec_trials(*overrides))


def test_the_machines_gpus_and_cpus_are_counted_not_assumed():
    from bopsweep.errors import UserError
    from bopsweep.sweep.preflight import check_local_resources

    spec, trials = _spec_trials("resources.gpu=0.5", "train.device=cuda")
    check_local_resources(spec, trials, gpus=1, cpus=2)
    with pytest.raises(UserError, match=r"asks for 0\.5 GPU but this machine has 0"):
        check_local_resources(spec, trials, gpus=0, cpus=2)
    spec, trials = _spec_trials("resources.cpu=4")
    with pytest.raises(UserError, match="asks for 4 CPUs but this machine has 2"):
        check_local_resources(spec, trials, gpus=8, cpus=2)


def test_storage_that_cannot_be_written_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    message = _refused(tmp_path, QUICKSTART, "--storage", str(blocker / "results"))
    assert "cannot write the sweep's results" in message and "--storage" in message


def test_local_store_in_a_missing_folder_is_refused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}"
    message = _refused(tmp_path, QUICKSTART, "--tracking-uri", uri)
    assert "cannot write the MLflow store" in message


def test_unreachable_tracking_server_is_refused(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result, imported = _bopsweep(tmp_path, "run", QUICKSTART, "--tracking-uri", uri)
    _assert_one_line_error(result, "cannot reach the MLflow tracking server")
    assert "ray" not in imported and "torch" not in imported


@pytest.mark.parametrize("flag", ["--download"])
def test_download_lets_missing_data_through_preflight(tmp_path, flag):
    """With --download the dataset check passes (the loader downloads); the sweep
    then fails later for want of a network here, which is not what is tested."""
    from bopsweep.sweep.runner import RunOptions, preflight
    from bopsweep.sweep.spec import load_spec

    overrides = [
        "resources.gpu=0",
        "resources.cpu=1",
        "train.device=cpu",
        f"train.data_dir={tmp_path}",
    ]
    with pytest.raises(Exception, match="cifar-10-batches-py"):
        preflight(load_spec(SEC51, overrides), RunOptions(storage=str(tmp_path / "r")))
    plan = preflight(
        load_spec(SEC51, [*overrides, "train.download=true"]),
        RunOptions(storage=str(tmp_path / "r"), tracking_uri=f"sqlite:///{tmp_path}/m.db"),
    )
    assert len(plan.trials) == 9 and not plan.resume.resuming


def test_a_local_store_that_is_not_a_database_is_one_message(tmp_path):
    """The store is opened while Ray starts; what it refuses is still bad input."""
    (tmp_path / "mlflow.db").write_text("not a database")
    result, _ = _bopsweep(tmp_path, "run", QUICKSTART, "--set", "train.epochs=1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot use the MLflow store" in errors[0]
    assert "file is not a database" in errors[0]
