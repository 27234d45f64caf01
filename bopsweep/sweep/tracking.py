"""The writer of a trial's MLflow child run, from wherever the trial runs.

Child runs are created and written from inside the trial, so trials on remote Ray
workers log straight to the tracking server. Every write that matters is keyed so
that it can be repeated safely:

* a child run is found again by its ``bopsweep.trial_key`` tag (parent run id +
  trial index), so a retried or resumed trial keeps logging into the same run;
* epochs are sent in ``log_batch`` requests (never one request per metric) by a
  background thread, so training never waits on the server, and steps the run
  already holds are skipped, so no metric step is logged twice.

Besides the epochs, the run gets what MLflow's users look for: ``best_<metric>``
summary metrics (the runs table sorts by them), the dataset as an MLflow input,
MLflow's source/user/git tags (from the driver), MLflow's system metrics (CPU,
memory, GPU) and the trial's models as MLflow models, all written by the same
sender thread (what the dataset input, the system metrics and the models are:
:mod:`bopsweep.sweep.run_contents`).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bopsweep.sweep.contract import SweepContext
from bopsweep.sweep.mlflow_client import (
    MAX_BATCH_METRICS,
    MAX_BATCH_PARAMS,
    MAX_BATCH_TAGS,
    MODEL_TAG_PREFIX,
    PARENT_TAG,
    ROLE_TAG,
    TRIAL_KEY_TAG,
    client,
    forwarded_names,
    is_auth_error,
    param_entities,
    trial_key,
    unreachable_errors,
)
from bopsweep.sweep.run_contents import (
    SystemSampler,
    log_pytorch_model,
    mlflow_dataset,
)

# Summary metrics: ``best_<name>`` of each, logged with every epoch, so the runs
# table shows (and sorts by) the best so far; the sweep's own metric is added.
SUMMARY_MODES = {
    "val_accuracy": "max",
    "train_accuracy": "max",
    "val_loss": "min",
    "train_loss": "min",
}
# Tag values are cut to what every MLflow store accepts.
TAG_VALUE_LIMIT = 5000


def summary_modes(metric: str, mode: str) -> dict[str, str]:
    return {**SUMMARY_MODES, metric: mode}


def _better(mode: str, value: float, best: float | None) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


class TrialTracker:
    """The child run of one trial, written from wherever the trial runs.

    Writes are asynchronous: :meth:`log_epoch` appends the epoch's metrics to an
    ordered queue and returns (microseconds), and a sender thread drains the queue,
    so training never waits for the server. The sender sends at most one
    ``log_batch`` per ``send_interval_s``, holding every epoch queued since the last
    one: fast epochs cost the server (often on the same machine) a request a second,
    not one per epoch, and the UI is at most that far behind. When the
    server is unreachable or erroring, training goes on; the sender retries with
    exponential backoff and :meth:`finish` drains what is left (for up to
    ``drain_timeout_s``). Each metric carries the timestamp of when it was produced,
    so a batch sent twice (a reply lost after the server stored it) stores identical
    rows, which MLflow de-duplicates. What a crash leaves unsent is re-logged from
    the checkpoint's history when the trial resumes, and is in the trial's local
    results for ``bopsweep sync``. A run that already ended FINISHED (a trial Ray
    runs again because the driver died before recording its end) is left as it is:
    :attr:`completed` holds its last metrics for the trial to report instead.

    Only the sender thread talks to the server once the run exists, except
    :meth:`finish`, which marks the run after the sender has stopped.
    """

    def __init__(
        self,
        uri: str,
        exp_id: str,
        parent_run_id: str,
        trial_index: int,
        run_name: str,
        *,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        drain_timeout_s: float = 120.0,
        send_interval_s: float = 1.0,
        summary: Mapping[str, str] | None = None,
        dataset: Callable[[], Any] | None = None,
        system_metrics_s: float | None = None,
        fill: bool = False,
    ) -> None:
        self.uri = uri
        # Sync: send the epochs an existing run lacks even when it has ended, leaving
        # its status to the caller.
        self.fill = fill
        self.exp_id = exp_id
        self.parent_run_id = parent_run_id
        self.trial_key = trial_key(parent_run_id, trial_index)
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.params = dict(params or {})
        self.client = client(uri)
        self.run_id: str | None = None
        self.last_step = -1
        self.resumed = False
        # The last metrics of a run that had already ended FINISHED (see _connect):
        # nothing more is sent to it and finish() leaves it as it is.
        self.completed: dict[str, float] | None = None
        self.pending: deque[tuple[int, list]] = deque()
        self.pending_tags: dict[str, str] = {}
        # The run's params not sent yet (MLflow Param entities): a new run's go with
        # its first epoch, in the same request.
        self.pending_params: list = []
        # name -> mode of the summary metrics; the first is the sweep's metric.
        self.summary = dict(summary or SUMMARY_MODES)
        self.best: dict[str, float] = {}
        self.improved = False  # the last epoch improved the sweep's metric
        # Builds the run's dataset input (an mlflow.data Dataset), in the sender.
        self.dataset = dataset
        self.system_metrics_s = system_metrics_s
        self._sampler: SystemSampler | None = None
        # The system metrics' samples not sent yet, and the step of the next one.
        self.pending_system: list = []
        self.system_step = 0
        # Model logging jobs, run by the sender after the epochs queued before them.
        self.pending_jobs: deque[tuple[str, Callable[[], None]]] = deque()
        self.job_errors: list[str] = []
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.drain_timeout_s = drain_timeout_s
        self._delay = backoff_s
        self._next_try = 0.0
        self.failures = 0
        self.reachable = True  # the last request reached the server (or none failed)
        self.refused: str | None = None
        # What the sender spent: wall seconds in requests, and its thread's CPU time
        # (the share of a core that logging takes from the trial).
        self.send_s = 0.0
        self.send_cpu_s = 0.0
        self._state = threading.Condition()
        self._flushing = 0
        self._idle = False
        self.send_interval_s = send_interval_s
        self._not_before = 0.0
        self._closed = False
        # Synchronous once: the run id goes into checkpoints, and a resumed run's
        # last step decides which epochs are sent again.
        self._try(self._connect)
        # Opening the run is this interval's round of requests: the params, the first
        # system sample and (in a short trial) the first epoch then go together.
        self._not_before = time.monotonic() + send_interval_s
        self._sender = threading.Thread(
            target=self._send_loop, name=f"mlflow-sender-{trial_index}", daemon=True
        )
        self._sender.start()

    # ------------------------------------------------------------------ plumbing
    def _try(self, action) -> bool:
        """Run ``action``; on a tracking failure, back off and report False."""
        if time.monotonic() < self._next_try:
            return False
        try:
            action()
        except unreachable_errors() as error:
            self.failures += 1
            self.reachable = False
            if is_auth_error(error):
                # Credentials missing or refused where this trial runs: no retry
                # will succeed; the epochs stay in the local results for sync.
                self.refused = f"{type(error).__name__}: {str(error)[:300]}"
            self._next_try = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, self.max_backoff_s)
            return False
        self._delay = self.backoff_s
        self._next_try = 0.0
        self.reachable = True
        return True

    def _connect(self) -> None:
        if self.run_id is not None:
            return
        existing = self.client.search_runs(
            [self.exp_id], f"tags.`{TRIAL_KEY_TAG}` = '{self.trial_key}'", max_results=1
        )
        if existing and existing[0].info.status == "FINISHED" and not self.fill:
            # The trial ended before the driver died but after Ray Tune's last
            # snapshot of the sweep, so Ray runs it again (from an earlier checkpoint,
            # or none): its run is complete and stays exactly as it is.
            run = existing[0]
            self.completed = {
                k: v for k, v in run.data.metrics.items() if not k.startswith("system/")
            }
            self.run_id = run.info.run_id
            return
        if existing:
            run = existing[0]
            if not self.fill:
                self.client.update_run(run.info.run_id, status="RUNNING")
            history = self.client.get_metric_history(run.info.run_id, "epoch")
            self.last_step = max((int(m.step) for m in history), default=-1)
            self.resumed = True
            # System metrics go on from the run's last sample (as MLflow's monitor
            # resumes: the latest value of each metric carries its step).
            steps = [
                m.step for m in getattr(run.data, "_metric_objs", ()) if m.key.startswith("system/")
            ]
            self.system_step = max(steps, default=-1) + 1
        else:
            # The run's own tags go with its creation: one request fewer a run than
            # sending them after (a 1,000-trial sweep opens 1,000 runs).
            run = self.client.create_run(
                self.exp_id,
                run_name=self.run_name,
                tags={
                    **{k: str(v)[:TAG_VALUE_LIMIT] for k, v in self.tags.items()},
                    PARENT_TAG: self.parent_run_id,
                    TRIAL_KEY_TAG: self.trial_key,
                    ROLE_TAG: "trial",
                },
            )
        run_id = run.info.run_id
        if self.params and not run.data.params:
            self.pending_params = param_entities(self.params)
        if self.dataset is not None and not (run.inputs and run.inputs.dataset_inputs):
            self._log_dataset(run_id)
        self.run_id = run_id
        self._start_system_metrics()
        if self.resumed:
            with self._state:
                self.pending_tags = {**self.tags, **self.pending_tags}

    def _log_dataset(self, run_id: str) -> None:
        from mlflow.entities import DatasetInput, InputTag

        try:
            dataset = self.dataset()._to_mlflow_entity()
        except Exception as error:  # informative only: never stops the trial
            self.pending_tags["bopsweep.dataset_error"] = f"{type(error).__name__}: {error}"
            return
        context = InputTag("mlflow.data.context", "training")
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])

    def _start_system_metrics(self) -> None:
        if self.system_metrics_s is None or self._sampler is not None:
            return
        try:
            self._sampler = SystemSampler.shared(self.system_metrics_s, self.uri)
        except Exception as error:  # psutil missing, an old MLflow: no system metrics
            self.pending_tags["bopsweep.system_metrics_error"] = f"{type(error).__name__}: {error}"
            return
        self._sampler.subscribe(self.log_system)

    def _stop_system_metrics(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.unsubscribe(self.log_system)

    def _has_work(self) -> bool:
        return self.run_id is None or bool(
            self.pending
            or self.pending_tags
            or self.pending_params
            or self.pending_jobs
            or self.pending_system
        )

    def _send(self) -> None:
        from mlflow.entities import RunTag

        self._connect()
        if self.completed is not None:
            with self._state:
                self.pending.clear()
                self.pending_tags.clear()
                self.pending_params.clear()
                self.pending_jobs.clear()
                self._state.notify_all()
            return
        while True:
            # The params and tags queued, and every queued epoch with the system
            # metrics' samples, in one request while MLflow's limits allow (an epoch
            # has a few dozen metrics): a new run's params, tags and first epoch are one
            # request, not three. Steps the run already holds are left out.
            with self._state:
                params = self.pending_params[:MAX_BATCH_PARAMS]
                tags = dict(list(self.pending_tags.items())[:MAX_BATCH_TAGS])
                queued = list(self.pending)
                room = MAX_BATCH_METRICS - len(params) - len(tags)
                system = self.pending_system[:room]
            if not (params or tags or queued or system):
                self._run_jobs()
                return
            metrics: list = list(system)
            last, taken = self.last_step, 0
            for step, batch in queued:
                if (metrics or params or tags) and len(metrics) + len(batch) > room:
                    break
                taken += 1
                if step > last:
                    metrics.extend(batch)
                    last = step
            if metrics or params or tags:
                self.client.log_batch(
                    self.run_id,
                    metrics=metrics,
                    params=params,
                    tags=[RunTag(k, str(v)[:TAG_VALUE_LIMIT]) for k, v in tags.items()],
                    synchronous=True,
                )
            self.last_step = last
            with self._state:
                for _ in range(taken):
                    self.pending.popleft()
                del self.pending_system[: len(system)]
                del self.pending_params[: len(params)]
                for key, value in tags.items():
                    if self.pending_tags.get(key) == value:
                        del self.pending_tags[key]
                self._state.notify_all()

    def _run_jobs(self) -> None:
        """Model logging, one job at a time; a job that fails for a reason other
        than the server is recorded on the run and dropped (the trial goes on)."""
        while True:
            with self._state:
                if not self.pending_jobs:
                    return
                name, job = self.pending_jobs[0]
            try:
                job()
            except unreachable_errors():
                raise  # retried by the sender's backoff
            except Exception as error:
                self.job_errors.append(f"{name}: {type(error).__name__}: {error}")
                with self._state:
                    self.pending_tags[f"bopsweep.{name}_error"] = str(error)[:500]
            with self._state:
                self.pending_jobs.popleft()
                self._state.notify_all()

    def _send_loop(self) -> None:
        with self._state:
            while True:
                while not self._closed and not self._has_work():
                    self._idle = True
                    self._state.wait()
                    self._idle = False
                if self._closed or self.refused:
                    self._state.notify_all()
                    return
                # Between sends, wait out the backoff after a failure, or else the
                # pacing interval (not when someone is waiting for a flush).
                ready = max(self._next_try, 0.0 if self._flushing else self._not_before)
                wait = ready - time.monotonic()
                if wait > 0:
                    # A flush in progress retries at least every 5 s.
                    self._state.wait(min(wait, 5.0) if self._flushing else wait)
                    if self._flushing:
                        self._next_try = min(self._next_try, time.monotonic())
                    continue
                self._state.release()
                started, cpu = time.perf_counter(), time.thread_time()
                try:
                    with _store_turn(self.uri):
                        self._try(self._send)
                    self._not_before = time.monotonic() + self.send_interval_s
                finally:
                    self.send_s += time.perf_counter() - started
                    self.send_cpu_s += time.thread_time() - cpu
                    self._state.acquire()
                self._state.notify_all()

    # ---------------------------------------------------------------------- API
    def set_tags(self, tags: Mapping[str, str]) -> None:
        with self._state:
            self.pending_tags.update({k: str(v) for k, v in tags.items()})
            self._state.notify_all()

    def log_epoch(self, metrics: Mapping[str, Any], step: int) -> None:
        """Queue an epoch's metrics for the sender; returns at once. A metric whose
        value is a list of ``[step, value]`` pairs (the trainer's per-step series) is
        logged at those steps, in the same request as the epoch: an epoch's values
        reach the run together or not at all."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(value), now, int(at))
            for k, v in metrics.items()
            for at, value in (v if isinstance(v, list) else [(step, v)])
        ]
        self.improved = False
        for position, (name, mode) in enumerate(self.summary.items()):
            value = metrics.get(name)
            if value is None or not math.isfinite(value):
                continue
            if _better(mode, float(value), self.best.get(name)):
                self.best[name] = float(value)
                self.improved = self.improved or position == 0
            batch.append(Metric(f"best_{name}", self.best[name], now, step))
        with self._state:
            self.pending.append((step, batch))
            # Wake the sender only when it sleeps for want of work: waking it at
            # every epoch while it waits out its interval takes the GIL from
            # training for nothing.
            if self._idle:
                self._state.notify_all()

    def log_system(self, values: Mapping[str, float]) -> None:
        """Queue a sample of the system metrics (from :class:`SystemSampler`) as the
        run's next system step; sent with the next epoch or flush."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._state:
            step, self.system_step = self.system_step, self.system_step + 1
            self.pending_system.extend(Metric(k, v, now, step) for k, v in values.items())

    def log_model(self, model, name: str, example, registered_name: str | None = None) -> None:
        """Queue ``model`` (a torch module, not trained further) as the MLflow model
        ``name`` of the run, with a signature and input example from ``example`` (a
        batch of inputs); registered as ``registered_name`` when given."""

        def job() -> None:
            info = log_pytorch_model(
                self.uri, self.run_id, model, name, example, registered_name, self.exp_id
            )
            with self._state:  # where the driver finds it to register the best trial's
                self.pending_tags[f"{MODEL_TAG_PREFIX}{name}"] = info.model_uri

        with self._state:
            self.pending_jobs.append((name, job))
            if self._idle:
                self._state.notify_all()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued is sent, or ``timeout_s`` passes; the sender
        retries at least every 5 s meanwhile. False if something is still unsent."""
        deadline = time.monotonic() + (self.drain_timeout_s if timeout_s is None else timeout_s)
        with self._state:
            self._flushing += 1
            self._next_try = min(self._next_try, time.monotonic())
            self._state.notify_all()
            try:
                while self._has_work():
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closed or self.refused:
                        return False
                    self._state.wait(left)
                return True
            finally:
                self._flushing -= 1

    def close(self) -> None:
        """Stop the sender (after its request in flight, if any); unsent data stays
        queued and is not sent any more."""
        with self._state:
            self._closed = True
            self._state.notify_all()
        self._sender.join(timeout=15)
        self._stop_system_metrics()

    def finish(self, status: str = "FINISHED", deadline: float | None = None) -> bool:
        """Send what is queued, then mark the run; False if the server never answered
        (within ``drain_timeout_s`` for each, or by ``deadline``, a ``time.monotonic()``
        time, for both)."""
        drained = self.flush(None if deadline is None else deadline - time.monotonic())
        self.close()
        if self.completed is not None:
            return True
        if not drained or self.refused:
            return False
        if deadline is None:
            deadline = time.monotonic() + self.drain_timeout_s
        while not self._try(lambda: self.client.set_terminated(self.run_id, status)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(max(self._next_try - time.monotonic(), 0.0), 5.0))
        return True


_STORE_TURNS: dict[str, threading.Lock] = {}


def _store_turn(uri: str):
    """For a local database store, one sender of this process at a time: the store
    takes one writer at a time anyway, and MLflow's SQLAlchemy pool (15 connections,
    a request may hold two) stalls for its 30 s timeout when a fused group's 16
    senders each take one at once. A tracking server has its own pool: no turn."""
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        return contextlib.nullcontext()
    return _STORE_TURNS.setdefault(uri, threading.Lock())


def _group_deadline(trackers: list[TrialTracker], timeout_s: float | None) -> float:
    longest = max(t.drain_timeout_s for t in trackers) if timeout_s is None else timeout_s
    return time.monotonic() + longest


def flush_all(trackers: Iterable[TrialTracker], timeout_s: float | None = None) -> bool:
    """Flush several trackers (a fused group's members) against one deadline: each
    one's sender retries in its own thread, so waiting for them in turn costs one
    drain timeout when the server is down, not one per member."""
    trackers = list(trackers)
    if not trackers:
        return True
    deadline = _group_deadline(trackers, timeout_s)
    return all([t.flush(max(0.0, deadline - time.monotonic())) for t in trackers])


def finish_all(trackers: Iterable[TrialTracker], status: str) -> list[TrialTracker]:
    """Finish several trackers' runs against one deadline (see :func:`flush_all`);
    returns those whose runs the server did not get whole."""
    trackers = list(trackers)
    if not trackers:
        return []
    deadline = _group_deadline(trackers, None)
    return [t for t in trackers if not t.finish(status, deadline=deadline)]


# ------------------------------------------------------------- in the trial
def trial_options(sweep: SweepContext, dataset: str, data_dir: str, data) -> dict[str, Any]:
    """The tracker's settings from the sweep's context: summary metrics, the dataset
    input, system metrics."""
    return {
        "summary": summary_modes(sweep.metric, sweep.mode),
        "dataset": lambda: mlflow_dataset(dataset, data_dir, data),
        "system_metrics_s": sweep.system_metrics_s,
    }


def trial_tags(sweep: SweepContext) -> dict[str, str]:
    """MLflow's source/user/git tags (resolved by the driver) and the names of the
    MLflow and artifact-store settings that reached this trial."""
    return {**sweep.run_tags, "bopsweep.forwarded_env": forwarded_names()}
