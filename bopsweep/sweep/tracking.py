"""The writer of a trial's MLflow child run, from wherever the trial runs.

Child runs are created and written from inside the trial, so trials on remote Ray
workers log straight to the tracking server. Every write that matters is keyed so
that it can be repeated safely:

* a child run is found again by its ``bopsweep.trial_key`` tag (parent run id +
  trial index), so a retried or resumed trial keeps logging into the same run;
* epochs are sent in ``log_batch`` requests (never one request per metric) by a
  background thread, so training never waits on the server, and steps the run
  already holds are skipped, so no metric step is logged twice.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from bopsweep.sweep.mlflow_client import (
    PARENT_TAG,
    ROLE_TAG,
    TRIAL_KEY_TAG,
    client,
    is_auth_error,
    log_params,
    trial_key,
    unreachable_errors,
)


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
    results for ``bopsweep sync``.

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
    ) -> None:
        self.uri = uri
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
        self.pending: deque[tuple[int, list]] = deque()
        self.pending_tags: dict[str, str] = {}
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.drain_timeout_s = drain_timeout_s
        self._delay = backoff_s
        self._next_try = 0.0
        self.failures = 0
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
            if is_auth_error(error):
                # Credentials missing or refused where this trial runs: no retry
                # will succeed; the epochs stay in the local results for sync.
                self.refused = f"{type(error).__name__}: {str(error)[:300]}"
            self._next_try = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, self.max_backoff_s)
            return False
        self._delay = self.backoff_s
        self._next_try = 0.0
        return True

    def _connect(self) -> None:
        if self.run_id is not None:
            return
        existing = self.client.search_runs(
            [self.exp_id], f"tags.`{TRIAL_KEY_TAG}` = '{self.trial_key}'", max_results=1
        )
        if existing:
            run = existing[0]
            self.client.update_run(run.info.run_id, status="RUNNING")
            history = self.client.get_metric_history(run.info.run_id, "epoch")
            self.last_step = max((int(m.step) for m in history), default=-1)
            self.resumed = True
        else:
            run = self.client.create_run(
                self.exp_id,
                run_name=self.run_name,
                tags={
                    PARENT_TAG: self.parent_run_id,
                    TRIAL_KEY_TAG: self.trial_key,
                    ROLE_TAG: "trial",
                },
            )
        run_id = run.info.run_id
        if self.params and not run.data.params:
            log_params(self.client, run_id, self.params)
        self.run_id = run_id
        with self._state:
            self.pending_tags = {**self.tags, **self.pending_tags}

    def _has_work(self) -> bool:
        return self.run_id is None or bool(self.pending or self.pending_tags)

    def _send(self) -> None:
        from mlflow.entities import RunTag

        self._connect()
        with self._state:
            tags = dict(self.pending_tags)
        if tags:
            batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
            self.client.log_batch(self.run_id, tags=batch, synchronous=True)
            with self._state:
                for key, value in tags.items():
                    if self.pending_tags.get(key) == value:
                        del self.pending_tags[key]
        while True:
            with self._state:
                queued = list(self.pending)
            if not queued:
                return
            # Every queued epoch in one request, up to log_batch's 1000 metrics (an
            # epoch has a few dozen); steps the run already holds are left out.
            metrics: list = []
            last, taken = self.last_step, 0
            for step, batch in queued:
                if metrics and len(metrics) + len(batch) > 1000:
                    break
                taken += 1
                if step > last:
                    metrics.extend(batch)
                    last = step
            if metrics:
                self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
            self.last_step = last
            with self._state:
                for _ in range(taken):
                    self.pending.popleft()
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

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue an epoch's metrics for the sender; returns at once."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        with self._state:
            self.pending.append((step, batch))
            # Wake the sender only when it sleeps for want of work: waking it at
            # every epoch while it waits out its interval takes the GIL from
            # training for nothing.
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

    def finish(self, status: str = "FINISHED") -> bool:
        """Send what is queued, then mark the run; False if the server never answered."""
        drained = self.flush()
        self.close()
        if not drained or self.refused:
            return False
        deadline = time.monotonic() + self.drain_timeout_s
        while not self._try(lambda: self.client.set_terminated(self.run_id, status)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(max(self._next_try - time.monotonic(), 0.0), 5.0))
        return True
