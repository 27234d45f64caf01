"""Ray's errors as one line: a cluster's refusal keeps Ray's own cause."""

from __future__ import annotations

from bopsweep.sweep.ray_backend import _connect_message, local_gpu_count


def test_a_refused_token_is_named_with_what_to_set(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    inner = RuntimeError(
        "Failed to connect to GCS. Last connection error: Traceback (most recent call "
        'last):\n  File "node.py", line 996\nray.exceptions.AuthenticationError: RPC '
        "error: InvalidAuthToken: Authentication token is missing or incorrect. " + "x" * 400
    )
    try:
        try:
            raise inner
        except RuntimeError as error:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from error
    except ConnectionError as error:
        message = _connect_message("head:6379", error)
    assert "\n" not in message and "Traceback" not in message and "xxxx" not in message
    assert "InvalidAuthToken: Authentication token is missing or incorrect." in message
    assert message.startswith("cannot connect to the Ray cluster at head:6379")
    assert "RAY_AUTH_TOKEN" in message


def test_gpus_hidden_by_cuda_visible_devices_are_not_counted(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpu_count() == 0


def test_the_stopper_ends_the_sweep_at_the_metric_s_target():
    from bopsweep.sweep.ray_backend import _stopper
    from bopsweep.sweep.spec import MetricSpec

    stopper = _stopper(MetricSpec(name="val_loss", goal="minimize", target=0.2))
    assert not stopper("a", {"val_loss": 0.5}) and not stopper.stop_all()
    assert stopper("b", {"val_loss": 0.1}) and stopper.stop_all()
    no_target = _stopper(MetricSpec())
    assert not no_target("a", {"val_accuracy": 1.0}) and not no_target.stop_all()
    assert no_target("a", {"bopsweep_user_error": "bad"}) and no_target.stop_all()


def test_schedulers_by_the_names_users_type(tmp_path):
    from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler, MedianStoppingRule

    from bopsweep.sweep.hyperband import WandbHyperBand
    from bopsweep.sweep.ray_backend import _scheduler
    from bopsweep.sweep.spec import expand, load_spec

    base = "name: t\ntrain: {model: mlp, dataset: digits, hparams_set: bop, epochs: 9}\n"
    expected = {
        "scheduler: {type: asha, grace_period: 2}": ASHAScheduler,
        "scheduler: {type: hyperband}": HyperBandScheduler,
        "scheduler: {type: median, grace_period: 2}": MedianStoppingRule,
        "early_terminate: {type: hyperband, min_iter: 1}": WandbHyperBand,
    }
    for line, kind in expected.items():
        path = tmp_path / "spec.yaml"
        path.write_text(base + line + "\n")
        loaded = load_spec(path)
        assert isinstance(_scheduler(loaded.spec, expand(loaded)), kind), line
    path.write_text(base + "scheduler: {type: fifo}\n")
    assert _scheduler(load_spec(path).spec, []) is None
