"""TrialTracker against a real MLflow store: queued epochs arrive in order, once,
and an unreachable server never stops training."""

from __future__ import annotations

import time

import pytest

from bopsweep.sweep import mlflow_client, mlflow_runs, tracking
from bopsweep.sweep.contract import SweepContext
from tests.e2e.conftest import free_port


def _parent(uri: str) -> tuple[str, str]:
    return mlflow_runs.start_parent_run(
        uri, "tracker-test", "sweep", tags={}, params={}, artifacts={}
    )


def _epoch(step: int) -> dict[str, float]:
    return {"epoch": float(step), "val_accuracy": 0.1 * step, "loss": 1.0 / (step + 1)}


@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> str:
    """One store for tests that need no fresh one: creating MLflow's schema takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def test_epochs_arrive_in_order_and_the_run_finishes(store):
    exp_id, parent = _parent(store)
    tracker = tracking.TrialTracker(
        store, exp_id, parent, 0, "t0", tags={"swept.gamma": "0.001"}, params={"lr": 0.1}
    )
    for step in range(5):
        tracker.log_epoch(_epoch(step), step=step)
    tracker.set_tags({"bopsweep.note": "done"})
    assert tracker.finish("FINISHED")
    assert not tracker._sender.is_alive()

    client = mlflow_client.client(store)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[mlflow_client.PARENT_TAG] == parent
    assert run.data.tags["swept.gamma"] == "0.001"
    assert run.data.tags["bopsweep.note"] == "done"
    assert run.data.params == {"lr": "0.1"}
    history = client.get_metric_history(tracker.run_id, "val_accuracy")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert tracker.send_s > 0


def test_a_large_groups_senders_share_a_local_store_without_stalling(store):
    """Twenty members' senders wake at once for their epochs (a fused group of 16 or
    more is what a 1,000-trial grid makes): on a local database store they take
    turns; all at once they used up MLflow's SQLAlchemy pool (15 connections) and
    stalled for its 30 s timeout."""
    exp_id, parent = _parent(store)
    trackers = [
        tracking.TrialTracker(store, exp_id, parent, k, f"t{k}", tags={"swept.k": str(k)})
        for k in range(20)
    ]
    for tracker in trackers:
        tracker.log_epoch(_epoch(0), step=0)
    assert tracking.flush_all(trackers, 20.0), "some members' epochs were not sent"
    assert not tracking.finish_all(trackers, "FINISHED")
    client = mlflow_client.client(store)
    for k, tracker in enumerate(trackers):
        run = client.get_run(tracker.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["swept.k"] == str(k)
        assert [m.step for m in client.get_metric_history(tracker.run_id, "epoch")] == [0]


def test_a_per_step_series_is_logged_at_its_steps_with_its_epoch(store):
    exp_id, parent = _parent(store)
    tracker = tracking.TrialTracker(store, exp_id, parent, 0, "t0")
    for epoch in range(2):
        series = [[epoch * 3 + i, -5.0 - epoch - i / 10] for i in range(3)]
        tracker.log_epoch({**_epoch(epoch), "log_flip_ratio_last": series}, step=epoch)
    assert tracker.finish("FINISHED")
    client = mlflow_client.client(store)
    history = client.get_metric_history(tracker.run_id, "log_flip_ratio_last")
    points = sorted((m.step, m.value) for m in history)
    assert points == [(s, pytest.approx(-5.0 - s // 3 - (s % 3) / 10)) for s in range(6)]
    # The epoch's own metrics stay at the epoch's step.
    assert [m.step for m in client.get_metric_history(tracker.run_id, "epoch")] == [0, 1]


def test_a_resumed_trial_sends_only_the_steps_the_run_lacks(store):
    exp_id, parent = _parent(store)
    first = tracking.TrialTracker(store, exp_id, parent, 3, "t3")
    for step in range(4):
        first.log_epoch(_epoch(step), step=step)
    assert first.flush(timeout_s=30)
    first.close()  # a crash: the run is never marked finished

    again = tracking.TrialTracker(store, exp_id, parent, 3, "t3")
    assert again.resumed and again.run_id == first.run_id and again.last_step == 3
    for step in range(2, 7):  # resumed from an earlier checkpoint: 2 and 3 again
        again.log_epoch(_epoch(step), step=step)
    assert again.finish("FINISHED")
    history = mlflow_client.client(store).get_metric_history(again.run_id, "loss")
    assert [m.step for m in history] == list(range(7))
    runs = mlflow_runs.child_runs(mlflow_client.client(store), exp_id, parent)
    assert len(runs) == 1


def test_a_finished_run_is_left_as_it_is_when_its_trial_runs_again(store):
    """The driver died after the trial ended but before Ray recorded it: Ray runs the
    trial again, which must neither reopen nor re-end its run."""
    exp_id, parent = _parent(store)
    first = tracking.TrialTracker(store, exp_id, parent, 2, "t2")
    for step in range(3):
        first.log_epoch(_epoch(step), step=step)
    assert first.finish("FINISHED")
    client = mlflow_client.client(store)
    ended = client.get_run(first.run_id).info

    again = tracking.TrialTracker(store, exp_id, parent, 2, "t2", tags={"late": "tag"})
    assert again.run_id == first.run_id
    assert again.completed == pytest.approx(_epoch(2) | {"best_val_accuracy": 0.2})
    assert client.get_run(first.run_id).info.status == "FINISHED"
    again.log_epoch(_epoch(1), step=1)  # retrained from an earlier checkpoint
    again.log_epoch(_epoch(5), step=5)
    assert again.finish("FINISHED")
    run = client.get_run(first.run_id)
    assert (run.info.status, run.info.end_time) == ("FINISHED", ended.end_time)
    assert "late" not in run.data.tags
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]


def test_an_unreachable_server_queues_instead_of_failing(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracker = tracking.TrialTracker(
        uri, "0", "parent", 0, "t0", backoff_s=0.05, drain_timeout_s=0.5
    )
    for step in range(3):
        tracker.log_epoch(_epoch(step), step=step)
    assert not tracker.flush(timeout_s=0.5)
    assert tracker.run_id is None and len(tracker.pending) == 3
    assert tracker.failures >= 2  # the sender kept retrying in the background
    assert not tracker.finish("FINISHED")  # gives up after drain_timeout_s
    assert not tracker._sender.is_alive() and len(tracker.pending) == 3


def test_a_groups_trackers_wait_for_a_down_server_once_not_once_per_member(monkeypatch):
    """A fused group's members flush and finish against one deadline: each sender
    retries in its own thread, so the group gives up after one drain timeout."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    timeout, members = 1.5, 4
    trackers = [
        tracking.TrialTracker(
            uri, "0", "parent", k, f"t{k}", backoff_s=0.05, drain_timeout_s=timeout
        )
        for k in range(members)
    ]
    for tracker in trackers:
        tracker.log_epoch(_epoch(0), step=0)
    started = time.monotonic()
    assert not tracking.flush_all(trackers)
    tracking.finish_all(trackers, "FINISHED")
    waited = time.monotonic() - started
    # Member by member it would be 2 x members x timeout (12 s): one flush and one
    # finish of the whole group take about 2 x timeout.
    assert waited < members * timeout, waited
    assert not any(t._sender.is_alive() for t in trackers)
    assert all(len(t.pending) == 1 for t in trackers)  # kept for a later sync


def test_a_run_gets_summary_metrics_its_dataset_and_system_metrics(shared_store):
    store = shared_store
    from bopsweep.data.in_memory import make_synthetic

    exp_id, parent = _parent(store)
    data = make_synthetic((1, 4, 4), n_train=32, n_val=8)
    sweep = SweepContext(store, exp_id, parent, metric="loss", mode="min", system_metrics_s=0.2)
    options = tracking.trial_options(sweep, "synthetic", "data", data)
    tracker = tracking.TrialTracker(store, exp_id, parent, 0, "t0", **options)
    values = [0.3, 0.1, 0.2]
    for step, accuracy in enumerate(values):
        tracker.log_epoch({"val_accuracy": accuracy, "loss": 1.0 / (1 + step)}, step=step)
    time.sleep(0.7)  # a few samples of the system metrics
    assert tracker.finish("FINISHED")
    client = mlflow_client.client(store)
    run = client.get_run(tracker.run_id)
    best = [m.value for m in client.get_metric_history(tracker.run_id, "best_val_accuracy")]
    assert best == pytest.approx([0.3, 0.3, 0.3])
    assert run.data.metrics["best_loss"] == pytest.approx(1 / 3)
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.name == "synthetic" and len(used.dataset.digest) >= 8
    assert {t.key: t.value for t in used.tags} == {"mlflow.data.context": "training"}
    assert '"features_shape": [32, 1, 4, 4]' in used.dataset.profile
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    history = client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")
    steps = sorted(m.step for m in history)
    assert len(steps) >= 2 and steps == list(range(len(steps))), steps


def test_a_groups_members_share_one_system_sampler_and_a_resumed_run_goes_on(store):
    """One sampling thread for the process, whatever the members; each member's run
    gets every sample once, and a run resumed after a crash continues its steps."""
    import threading

    exp_id, parent = _parent(store)
    sweep = SweepContext(store, exp_id, parent, system_metrics_s=0.2)
    options = {"system_metrics_s": sweep.system_metrics_s}
    trackers = [
        tracking.TrialTracker(store, exp_id, parent, k, f"t{k}", **options) for k in range(3)
    ]
    time.sleep(0.5)
    names = [t.name for t in threading.enumerate()]
    assert names.count("bopsweep-system-metrics") == 1 and "SystemMetricsMonitor" not in names
    for tracker in trackers:
        tracker.log_epoch(_epoch(0), step=0)
    assert not tracking.finish_all(trackers, "FINISHED")
    client = mlflow_client.client(store)
    key = "system/system_memory_usage_megabytes"
    counts = []
    for tracker in trackers:
        steps = sorted(m.step for m in client.get_metric_history(tracker.run_id, key))
        assert steps == list(range(len(steps))) and steps, steps
        counts.append(len(steps))
    time.sleep(0.3)
    assert "bopsweep-system-metrics" not in [t.name for t in threading.enumerate()]
    # The first member's trial runs again (its run resumed, not finished: as after
    # a killed worker).
    client.update_run(trackers[0].run_id, status="RUNNING")
    again = tracking.TrialTracker(store, exp_id, parent, 0, "t0", **options)
    assert again.resumed
    again.log_epoch(_epoch(1), step=1)
    assert again.finish("FINISHED")
    steps = sorted(m.step for m in client.get_metric_history(again.run_id, key))
    assert steps == list(range(len(steps))) and len(steps) > counts[0]


def test_a_new_runs_params_tags_and_first_epoch_are_one_request(store):
    """Opening a run is its first round of requests; what follows in the same send
    interval (the params, a tag, a short trial's epoch) goes in one log_batch: against
    a remote server each request is a round trip, and a 16-member group opens 16 runs."""
    exp_id, parent = _parent(store)
    tracker = tracking.TrialTracker(
        store, exp_id, parent, 0, "t0", params={"a": 1, "b": "x"}, send_interval_s=5.0
    )
    sent = []
    log_batch = tracker.client.log_batch
    tracker.client.log_batch = lambda *a, **k: sent.append(k) or log_batch(*a, **k)
    tracker.set_tags({"placed": "node-1"})
    tracker.log_epoch(_epoch(0), step=0)
    assert tracker.finish("FINISHED")
    assert len(sent) == 1, sent
    assert {p.key for p in sent[0]["params"]} == {"a", "b"}
    assert [t.key for t in sent[0]["tags"]] == ["placed"]
    run = mlflow_client.client(store).get_run(tracker.run_id)
    assert run.data.params == {"a": "1", "b": "x"} and run.data.tags["placed"] == "node-1"
    assert run.data.metrics["val_accuracy"] == 0.0


def test_params_past_mlflows_batch_limit_go_in_several_requests(store):
    exp_id, parent = _parent(store)
    params = {f"p{i:03d}": i for i in range(250)}
    tracker = tracking.TrialTracker(store, exp_id, parent, 0, "t0", params=params)
    tracker.log_epoch(_epoch(0), step=0)
    assert tracker.finish("FINISHED")
    run = mlflow_client.client(store).get_run(tracker.run_id)
    assert run.data.params == {k: str(v) for k, v in params.items()}
    assert [
        m.step for m in mlflow_client.client(store).get_metric_history(run.info.run_id, "epoch")
    ] == [0]
