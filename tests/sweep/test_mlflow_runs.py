"""Reading a sweep's trials back from its MLflow runs."""

from __future__ import annotations

from mlflow.entities import Metric

from bopsweep.sweep import mlflow_client, mlflow_runs
from bopsweep.sweep.mlflow_client import PARENT_TAG, TRIAL_KEY_TAG, trial_key


class CountingClient:
    """The store's own client, counting the history requests it is asked for."""

    def __init__(self, client) -> None:
        self._client = client
        self.history_requests: list[tuple[str, str]] = []

    def get_metric_history(self, run_id: str, key: str):
        self.history_requests.append((run_id, key))
        return self._client.get_metric_history(run_id, key)

    def __getattr__(self, name: str):
        return getattr(self._client, name)


def test_histories_of_one_step_are_read_from_the_run_and_longer_ones_asked_for(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id, parent = mlflow_runs.start_parent_run(
        uri, "readback", "sweep", tags={}, params={}, artifacts={}
    )
    client = mlflow_client.client(uri)
    runs = {}
    for index, steps in ((0, [0]), (1, [0, 1, 2])):
        run = client.create_run(
            exp_id, tags={PARENT_TAG: parent, TRIAL_KEY_TAG: trial_key(parent, index)}
        )
        runs[index] = run.info.run_id
        metrics = [Metric("val_accuracy", 0.5 + s / 10, 1000 + s, s) for s in steps]
        # A retried request: step 0 again, later, with the value that counts.
        metrics.append(Metric("val_accuracy", 0.25, 2000, 0))
        client.log_batch(run.info.run_id, metrics=metrics)
    counting = CountingClient(client)
    trials = mlflow_runs.load_trials(counting, exp_id, parent, ["val_accuracy", "absent"])
    one, three = trials
    assert one.history == {"val_accuracy": [(0, 0.25)]}
    assert three.history == {"val_accuracy": [(0, 0.25), (1, 0.6), (2, 0.7)]}
    # As the full history says, and asked for only where the run has more than step 0.
    for trial in trials:
        assert trial.history["val_accuracy"] == mlflow_runs.metric_history(
            client, trial.run_id, "val_accuracy"
        )
    assert counting.history_requests == [(runs[1], "val_accuracy")]
