"""Ray as a sweep uses it: its errors as one line (a cluster's refusal keeps Ray's own
cause), a local instance's processes, a trial's GPUs, and a shutdown nothing can
interrupt."""

from __future__ import annotations

import os

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


def test_a_trial_given_no_gpu_sees_none():
    from bopsweep.sweep.ray_backend import hide_unassigned_gpus

    environ = {"CUDA_VISIBLE_DEVICES": "0,1"}
    hide_unassigned_gpus([], environ)
    assert environ == {"CUDA_VISIBLE_DEVICES": ""}
    environ = {}
    hide_unassigned_gpus([], environ)
    assert environ == {"CUDA_VISIBLE_DEVICES": ""}
    # GPUs Ray assigned stay as Ray set them.
    environ = {"CUDA_VISIBLE_DEVICES": "1"}
    hide_unassigned_gpus(["1"], environ)
    assert environ == {"CUDA_VISIBLE_DEVICES": "1"}


def test_a_zero_gpu_actor_sees_no_gpu_once_the_trial_starts(local_ray):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES as the worker inherited it for an actor
    with no GPU (here: "0", as a GPU node's variable would read): the trial's entry
    point blanks it before torch can see the GPU."""
    import ray

    @ray.remote(num_gpus=0, num_cpus=0, runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": "0"}})
    class Trial:
        def visible(self) -> str | None:
            return os.environ.get("CUDA_VISIBLE_DEVICES")

        def enter(self) -> str | None:
            from bopsweep.sweep.ray_backend import hide_unassigned_gpus

            hide_unassigned_gpus(ray.get_gpu_ids())
            return os.environ.get("CUDA_VISIBLE_DEVICES")

    trial = Trial.remote()
    inherited = ray.get(trial.visible.remote())
    assert ray.get(trial.enter.remote()) == ""
    assert inherited in ("0", "")  # "" where Ray blanks it itself (older Rays)


def test_a_local_instance_starts_without_ray_s_monitors(local_ray):
    """A local sweep's Ray runs its GCS, raylet and agents, but neither the autoscaler
    monitor nor the log monitor (Python processes a one-node sweep has no use for)."""
    import psutil

    started = []
    for child in psutil.Process().children(recursive=True):
        try:
            started.append(" ".join(child.cmdline()))
        except psutil.Error:
            continue
    assert any("raylet" in command for command in started), started
    assert any("gcs_server" in command for command in started), started
    assert not [c for c in started if "monitor.py" in c], started  # monitor.py, log_monitor.py


SHUTDOWN_PROBE = """
import gc, json, weakref
import ray
from bopsweep.sweep import ray_backend

ray_backend.init_local(num_cpus=1, logging_level="ERROR")

class Cycle:  # garbage only the collector frees, as Ray Tune's controller leaves
    def __init__(self, ref):
        self.ref, self.me = ref, self

gc.disable()
alive = weakref.ref(Cycle(ray.put(1)))
gc.enable()
seen = {}
real_shutdown = ray.shutdown

def shutdown(*args, **kwargs):
    seen.update(garbage_left=alive() is not None, collecting=gc.isenabled())
    real_shutdown(*args, **kwargs)

ray.shutdown = shutdown
ray_backend.shutdown()
seen["collecting_after"] = gc.isenabled()
print(json.dumps(seen))
"""


def test_ray_shuts_down_with_no_garbage_holding_its_handles_and_no_collection():
    """Garbage holding object refs or actor handles, freed by a collection in another
    thread while Ray shuts down (the report is drawn meanwhile), reaches into a core
    worker being taken down, and Ray then quits the process with exit code 1."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_PROBE], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"garbage_left": False, "collecting": False, "collecting_after": True}
