"""The driver's bookkeeping around Ray Tune: credentials for remote trials, and
trials whose epochs did not all reach MLflow."""

from __future__ import annotations

from bopsweep.sweep.mlflow_client import FORWARDED_VARS, credential_env
from bopsweep.sweep.outcome import SweepOutcome, TrialOutcome
from bopsweep.sweep.runner import short_trials


def _trial(index: int, epochs: int) -> TrialOutcome:
    history = {"val_accuracy": [(step, 0.5) for step in range(epochs)]}
    return TrialOutcome(index, {"hparams.gamma": 1e-3}, "FINISHED", history)


def test_trials_that_logged_fewer_epochs_than_they_ran_are_short():
    outcome = SweepOutcome("s", "val_accuracy", "max", "sqlite:///x.db", "1", "p")
    outcome.trials = [_trial(0, 3), _trial(1, 0), _trial(2, 2), _trial(3, 0)]
    # Trial 3 never reported to Ray (it never started): nothing is missing.
    short = short_trials(outcome, {0: 3, 1: 3, 2: 3})
    assert [t.index for t in short] == [1, 2]


def test_credentials_come_from_the_environment_or_mlflows_file(tmp_path, monkeypatch):
    for key in FORWARDED_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert credential_env() == {}
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = alice\nmlflow_tracking_password = from-file\n"
    )
    assert credential_env() == {
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": "from-file",
    }
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-env")
    assert credential_env()["MLFLOW_TRACKING_PASSWORD"] == "from-env"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    assert credential_env() == {
        "MLFLOW_TRACKING_PASSWORD": "from-env",
        "MLFLOW_TRACKING_TOKEN": "t0ken",
    }


def test_a_sweep_ends_early_at_its_target_or_time_budget(tmp_path):
    from bopsweep.sweep.runner import _ended_early
    from bopsweep.sweep.spec import load_spec

    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: t\ntrain: {model: mlp, dataset: digits}\n"
        "metric: {name: val_loss, goal: minimize, target: 0.2}\ntime_budget_s: 60\n"
    )
    spec = load_spec(path).spec
    results = {0: {"val_loss": 0.5}, 3: {"val_loss": 0.15}}
    assert (
        _ended_early(spec, results, 10.0) == "trial 003 reached the target val_loss <= 0.2 (0.15)"
    )
    assert _ended_early(spec, {0: {"val_loss": 0.5}}, 61.0) == "the time budget of 60 s was spent"
    assert _ended_early(spec, {0: {"val_loss": 0.5}, 1: {}}, 10.0) is None
