"""What a trial's MLflow run holds besides its metrics: its training data as an MLflow
dataset input, MLflow's system metrics (one sampler a process), and its models as
MLflow models.

The trial tracker (:mod:`bopsweep.sweep.tracking`) sends both from its sender thread;
here is what they are: the dataset entity of the data a trial trained on, and the
``final`` / ``best`` models (:class:`ModelKeeper`), logged to take the inputs a user
has (raw pixel values) with a signature that says so.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bopsweep.sweep.mlflow_client import fluent_target

if TYPE_CHECKING:
    from bopsweep.sweep.tracking import TrialTracker

# Which of a trial's models are logged as MLflow models, by the names users type.
MODEL_CHOICES = ("final", "best")
# What an MLflow model of a trial needs to be loaded elsewhere: torch only (the
# model's classes are plain torch modules once pickled); given, so that MLflow does
# not infer them by importing the model in a subprocess (seconds per model).
MODEL_REQUIREMENTS_PACKAGES = ("torch", "bopsweep")


def log_pytorch_model(
    uri: str,
    run_id: str,
    model,
    name: str,
    example,
    registered_name: str | None = None,
    experiment_id: str | None = None,
):
    """``model`` as an MLflow model of the run: signature and input example from a
    few rows of ``example``, what its input is in the model's metadata, requirements
    given (not inferred)."""
    import copy

    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from bopsweep.data.batches import RawPixels

    rows = example[:2].detach().cpu()
    # A module pickled on a GPU loads only where CUDA is: the logged copy is on the
    # CPU and loads anywhere; the trial's own model stays on its device.
    model = copy.deepcopy(model).to("cpu").eval()
    with torch.no_grad():
        output = model(rows).float()
    signature = infer_signature(rows.numpy(), output.numpy())
    shape = "(N, " + ", ".join(map(str, rows.shape[1:])) + ")"
    if isinstance(model, RawPixels):
        what = (
            f"raw pixel values in [0, {model.pixel_max:g}] ({rows.dtype} as the dataset "
            f"stores them), shape {shape}; the model normalises them itself"
        )
    else:
        what = f"preprocessed images (normalised to [-1, 1]), shape {shape}"
    metadata = {"input": what, "output": "logits, one per class"}
    with fluent_target(uri, experiment_id):
        return mlflow.pytorch.log_model(
            model,
            name=name,
            run_id=run_id,  # no active run: the run's status stays the tracker's
            signature=signature,
            input_example=rows.numpy(),
            metadata=metadata,
            pip_requirements=model_requirements(),
            registered_model_name=registered_name,
            # torch.export (MLflow's default) cannot trace binarized layers' custom
            # autograd functions; a pickled module loads wherever bopsweep is installed.
            serialization_format="pickle",
        )


def model_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in MODEL_REQUIREMENTS_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            pins.append(f"{package}=={version(package)}")
    return pins


def dataset_source(name: str, data_dir: str) -> str:
    """Where the dataset's files are read from (digits: scikit-learn's own file)."""
    if name == "digits":
        import importlib.util

        spec = importlib.util.find_spec("sklearn")
        if spec is not None and spec.submodule_search_locations:
            folder = Path(spec.submodule_search_locations[0])
            return str(folder / "datasets" / "data" / "digits.csv.gz")
    if name == "synthetic":
        return "bopsweep.data.in_memory:make_synthetic"
    return str(Path(data_dir).expanduser().resolve())


def mlflow_dataset(name: str, data_dir: str, data) -> Any:
    """The training data as an ``mlflow.data`` dataset: for data held in memory its
    training split as numpy (MLflow's digest of its contents, its schema and size);
    for image folders, their name and location."""
    import mlflow.data
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    source = dataset_source(name, data_dir)
    source_obj = CodeDatasetSource(tags={"source": source})
    train_x = getattr(data, "train_x", None)
    if train_x is not None:
        return mlflow.data.from_numpy(
            train_x.cpu().numpy(), targets=data.train_y.cpu().numpy(), source=source_obj, name=name
        )
    return MetaDataset(source=source_obj, name=name)


class SystemSampler:
    """MLflow's system metrics (CPU, memory, disk, network; GPUs through
    nvidia-ml-py when installed) sampled once per interval for every run this process
    logs: the members of a fused group share the machine, so one sample serves them
    all, and each member's tracker sends it with its epochs, in the same request.

    MLflow's own ``SystemMetricsMonitor`` is one thread per run polling its run every
    interval: for a group of 16 members, 16 threads and 32 requests an interval (and
    on a local store they exhausted its connection pool). Its monitors do the
    sampling here; its logging is not used.
    """

    _shared: ClassVar[dict[float, SystemSampler]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, interval_s: float, uri: str) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # A sampler only: its run id is never used (nothing is started or logged).
        # The runs' own store, for the client it builds: MLflow's default would
        # create a new store in the working directory.
        self._monitor = SystemMetricsMonitor("", sampling_interval=interval_s, tracking_uri=uri)
        node = self._monitor.node_id
        self.prefix = "system/" + (f"{node}/" if node else "")
        self.interval_s = self._monitor.sampling_interval
        self._subscribers: list[Callable[[dict[str, float]], None]] = []
        self._latest: dict[str, float] | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def shared(cls, interval_s: float, uri: str) -> SystemSampler:
        """This process's sampler at ``interval_s`` (built once; raises what MLflow
        raises, e.g. psutil missing)."""
        with cls._lock:
            sampler = cls._shared.get(interval_s)
            if sampler is None:
                sampler = cls._shared[interval_s] = cls(interval_s, uri)
            return sampler

    def sample(self) -> dict[str, float]:
        """One sample now (averaged over the time since the last, for rates)."""
        self._monitor.collect_metrics()
        values = {self.prefix + k: float(v) for k, v in self._monitor.aggregate_metrics().items()}
        for monitor in self._monitor.monitors:
            monitor.clear_metrics()
        return values

    def subscribe(self, receive: Callable[[dict[str, float]], None]) -> None:
        """``receive`` gets a sample now (a run a scheduler stops early still has
        one) and one every interval until :meth:`unsubscribe`."""
        with self._lock:
            if self._latest is None:
                self._latest = self.sample()
            receive(self._latest)
            self._subscribers.append(receive)
            if self._thread is None:
                self._wake.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="bopsweep-system-metrics", daemon=True
                )
                self._thread.start()

    def unsubscribe(self, receive: Callable[[dict[str, float]], None]) -> None:
        with self._lock:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(receive)
            if not self._subscribers and self._thread is not None:
                self._thread, self._latest = None, None
                self._wake.set()

    def _loop(self) -> None:
        while not self._wake.wait(self.interval_s):
            values = self.sample()
            with self._lock:
                if self._wake.is_set():
                    return
                self._latest = values
                receivers = list(self._subscribers)
            for receive in receivers:
                receive(values)


class ModelKeeper:
    """Logs the trial's models as MLflow models: ``final`` (the model after the last
    epoch) and ``best`` (a copy of the weights of the epoch with the best value of the
    sweep's metric, kept in memory; a trial resumed after a crash keeps the best of
    the epochs since it resumed). Called after each epoch is queued, so the models
    are queued after the last epoch and sent before the trial's last report."""

    def __init__(self, tracker: TrialTracker, kinds, member: int = 0) -> None:
        self.tracker = tracker
        self.kinds = set(kinds)
        self.member = member
        self.best_state: dict | None = None

    def after_epoch(self, trainer, last: bool) -> None:
        if "best" in self.kinds and self.tracker.improved:
            state = trainer.member_state(self.member)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        if last:
            self.log(trainer)

    def log(self, trainer) -> None:
        """Queue the models for the tracker's sender."""
        if not self.kinds:
            return
        import copy

        from bopsweep.data.batches import RawPixels

        # The member as a plain model (a copy of its slice of a fused group's).
        model = trainer.member_model(self.member)
        raw = getattr(trainer.data, "val_x", None)
        if raw is not None:
            # In-memory datasets: the model takes raw pixels and normalises them.
            example, pixel_max = raw[:2], trainer.data.pixel_max
        else:
            # Images from files: decoding, crop and resize stay the user's; the model
            # takes the batches the trial evaluated on.
            first = next(iter(trainer.batches.val()), None)
            if first is None:
                return
            example, pixel_max = first[0], None

        def for_users(net):
            return net if pixel_max is None else RawPixels(net, pixel_max)

        if "final" in self.kinds:
            self.tracker.log_model(for_users(model), "final_model", example)
        if "best" in self.kinds and self.best_state is not None:
            best = copy.deepcopy(model)
            best.load_state_dict(self.best_state)
            self.tracker.log_model(for_users(best), "best_model", example)
