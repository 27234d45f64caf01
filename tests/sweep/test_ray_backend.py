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
