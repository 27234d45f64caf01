"""What ``bopsweep run`` prints after a sweep: where its results and logs are."""

from __future__ import annotations

import io

from rich.console import Console

from bopsweep.cli.sweeps import _print_outcome
from bopsweep.sweep.outcome import SweepOutcome, TrialOutcome


def _printed(storage: str) -> str:
    outcome = SweepOutcome(
        "grid", "val_accuracy", "max", "sqlite:////x/mlflow.db", "1", "p", storage
    )
    outcome.trials = [TrialOutcome(0, {"hparams.gamma": 0.01}, status="FINISHED")]
    buffer = io.StringIO()
    _print_outcome(outcome, None, [], out=Console(file=buffer, width=200))
    return buffer.getvalue()


def test_a_local_sweep_names_its_results_and_log_folders(tmp_path):
    printed = _printed(str(tmp_path))
    assert f"results and checkpoints: {tmp_path}/grid (logs: {tmp_path}/grid/logs)" in printed


def test_a_sweep_stored_at_a_uri_names_its_folder_there_and_no_log_folder():
    printed = _printed("s3://bucket/sweeps?endpoint_override=localhost:9000")
    assert (
        "results and checkpoints: s3://bucket/sweeps/grid?endpoint_override=localhost:9000\n"
        in (printed)
    )
    assert "logs:" not in printed
