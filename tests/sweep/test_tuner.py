"""The driver's bookkeeping around Ray Tune: credentials for remote trials, and
trials whose epochs did not all reach MLflow."""

from __future__ import annotations

import math

from bopsweep.config import TrainConfig
from bopsweep.sweep.spec import Trial
from bopsweep.sweep.tracking import credential_env
from bopsweep.sweep.tuner import TrialOutcome, short_trials


def _outcome(index: int, epochs: int) -> TrialOutcome:
    trial = Trial(index, {"hparams.gamma": 1e-3}, TrainConfig(model="mlp"))
    return TrialOutcome(trial, "FINISHED", epochs, math.nan, math.nan, math.nan)


def test_trials_that_logged_fewer_epochs_than_they_ran_are_short():
    outcomes = [_outcome(0, 3), _outcome(1, 0), _outcome(2, 2), _outcome(3, 0)]
    # Trial 3 never reported to Ray (it never started): nothing is missing.
    short = short_trials(outcomes, {0: 3, 1: 3, 2: 3})
    assert [o.trial.index for o in short] == [1, 2]


def test_credentials_come_from_the_environment_or_mlflows_file(tmp_path, monkeypatch):
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
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
