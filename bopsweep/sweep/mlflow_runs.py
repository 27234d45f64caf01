"""A sweep's MLflow runs: the parent run's start and end, every child run's final
status, registering the best trial's model, and finding and reading a sweep back as a
:class:`~bopsweep.sweep.outcome.SweepOutcome` (the runner, ``report`` and ``sync``
all read it this way, so they agree on what a sweep holds).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from bopsweep.errors import UserError
from bopsweep.sweep.mlflow_client import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MODEL_TAG_PREFIX,
    PARENT_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    SWEPT_PREFIX,
    TRIAL_KEY_TAG,
    all_pages,
    client,
    fluent_target,
    log_params,
    parse_tag_value,
)
from bopsweep.sweep.outcome import TERMINAL_STATUSES, SweepOutcome, TrialOutcome


# ------------------------------------------------------------------ parent run
def experiment_id(mlflow_client, name: str) -> str:
    """The experiment's id, created if new; it gets the training-runs kind unless it
    already has a kind (one a user chose stays)."""
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        return mlflow_client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if experiment.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment {name!r} is deleted: restore it or pick another name")
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow_client.set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )
    return experiment.experiment_id


def start_parent_run(
    uri: str,
    experiment: str,
    name: str,
    *,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    artifacts: Mapping[str, str],
) -> tuple[str, str]:
    """Create the sweep's parent run; returns ``(experiment_id, run_id)``."""
    mlflow_client = client(uri)
    exp_id = experiment_id(mlflow_client, experiment)
    run = mlflow_client.create_run(
        exp_id, run_name=name, tags={**tags, SWEEP_TAG: name, ROLE_TAG: "sweep"}
    )
    run_id = run.info.run_id
    log_params(mlflow_client, run_id, params)
    for artifact_file, text in artifacts.items():
        mlflow_client.log_text(run_id, text, artifact_file)
    return exp_id, run_id


STOPPED_EARLY_TAG = "bopsweep.stopped_early"


def settle_runs(
    outcome: SweepOutcome,
    wanted: Mapping[int, str],
    errors: Mapping[int, str],
    metrics: Iterable[str],
    stopped_early: Iterable[int] = (),
) -> None:
    """Give every trial's child run its final status and read the trials back.

    ``wanted`` is each trial's status as the driver saw it end; a run still RUNNING
    gets it (it was stopped by a scheduler, killed or interrupted: never left
    RUNNING), a run the trial already ended keeps its own verdict unless the driver
    saw it fail. ``outcome.trials`` becomes the trials with the histories of
    ``metrics``. Runs of ``stopped_early`` trials (ended by the scheduler before
    their last epoch) are tagged ``bopsweep.stopped_early=true``.
    """
    mlflow_client = client(outcome.tracking_uri)
    stopped_early = set(stopped_early)
    runs = {
        t.index: t
        for t in load_trials(mlflow_client, outcome.experiment_id, outcome.parent_run_id, metrics)
    }
    settled = []
    for planned in outcome.trials:
        status = wanted.get(planned.index, "KILLED")
        trial = runs.get(planned.index) or TrialOutcome(planned.index, planned.swept)
        if trial.run_id is not None and trial.status == "RUNNING":
            mlflow_client.set_terminated(trial.run_id, status)
        elif trial.run_id is not None and trial.status in TERMINAL_STATUSES:
            status = trial.status if status == "FINISHED" else status
        if trial.run_id is not None and planned.index in stopped_early:
            mlflow_client.set_tag(trial.run_id, STOPPED_EARLY_TAG, "true")
        trial.status = status
        trial.epochs_total = planned.epochs_total
        trial.error = errors.get(planned.index) or trial.error
        settled.append(trial)
    outcome.trials = settled


def register_best_model(outcome: SweepOutcome, name: str) -> str | None:
    """Register the best trial's logged model (its best, else its final) as a new
    version of the registered model ``name``; returns the version, or None when the
    best trial logged no model."""
    import mlflow

    best = outcome.best
    if best is None or best.run_id is None:
        return None
    tags = client(outcome.tracking_uri).get_run(best.run_id).data.tags
    uri = tags.get(f"{MODEL_TAG_PREFIX}best_model") or tags.get(f"{MODEL_TAG_PREFIX}final_model")
    if uri is None:
        return None
    with fluent_target(outcome.tracking_uri):
        version = mlflow.register_model(uri, name, tags={"bopsweep.sweep": outcome.name})
    return str(version.version)


def finish_parent(outcome: SweepOutcome) -> None:
    """Trial counts, the best trial's figures and the final status on the parent run."""
    from mlflow.entities import Metric, RunTag

    mlflow_client = client(outcome.tracking_uri)
    counts = outcome.counts()
    tags = [RunTag(f"bopsweep.trials_{s.lower()}", str(n)) for s, n in counts.items()]
    metrics = [Metric(f"trials_{s.lower()}", n, 0, 0) for s, n in counts.items()]
    best = outcome.best
    if best is not None:
        tags += [
            RunTag("bopsweep.best_trial", best.name),
            RunTag("bopsweep.best_run_id", str(best.run_id)),
        ]
        metrics += [Metric(k, v, 0, 0) for k, v in outcome.summary_metrics().items()]
    mlflow_client.log_batch(outcome.parent_run_id, metrics=metrics, tags=tags, synchronous=True)
    if outcome.interrupted:
        status = "KILLED"
    elif outcome.failed:
        status = "FAILED"
    else:
        status = "FINISHED"
    mlflow_client.set_terminated(outcome.parent_run_id, status)


# ----------------------------------------------------------- finding a sweep
def child_runs(mlflow_client, exp_id: str, parent_run_id: str) -> list:
    """Every child run of a parent (all pages)."""
    return all_pages(
        lambda token: mlflow_client.search_runs(
            [exp_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=1000, page_token=token
        )
    )


def _sweep_parents(mlflow_client, experiment_ids: list[str], name: str | None) -> list:
    condition = f"tags.`{ROLE_TAG}` = 'sweep'"
    if name is not None:
        condition += f" AND tags.`{SWEEP_TAG}` = '{name}'"
    runs = []
    # search_runs takes a bounded number of experiments per request.
    for start in range(0, len(experiment_ids), 100):
        chunk = experiment_ids[start : start + 100]
        runs += all_pages(
            lambda token, chunk=chunk: mlflow_client.search_runs(
                chunk, condition, max_results=1000, page_token=token
            )
        )
    return runs


def find_parent_run(mlflow_client, name: str, experiment: str | None = None, uri: str = ""):
    """The sweep's parent run: the latest run tagged ``bopsweep.sweep=<name>``, looked
    for in ``experiment`` (default: the experiment named like the sweep), then in every
    experiment; an unknown name is a UserError listing the sweeps that exist."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"{name!r} is neither a sweep name nor a spec file (.yaml)")
    preferred = mlflow_client.get_experiment_by_name(experiment or name)
    candidates = []
    if preferred is not None and preferred.lifecycle_stage == "active":
        candidates = _sweep_parents(mlflow_client, [preferred.experiment_id], name)
    experiment_ids: list[str] = []
    if not candidates:
        experiments = all_pages(
            lambda token: mlflow_client.search_experiments(max_results=1000, page_token=token)
        )
        experiment_ids = [e.experiment_id for e in experiments]
        candidates = _sweep_parents(mlflow_client, experiment_ids, name)
    if candidates:
        return max(candidates, key=lambda run: (run.info.start_time or 0, run.info.run_id))
    others = _sweep_parents(mlflow_client, experiment_ids, None)
    known = sorted({r.data.tags.get(SWEEP_TAG, "?") for r in others})
    where = f" in the MLflow store at {uri}" if uri else ""
    if known:
        raise UserError(f"no sweep named {name!r}{where}; sweeps there: {', '.join(known)}")
    raise UserError(f"no sweep named {name!r}{where}: it holds no sweeps yet (run one first)")


# ------------------------------------------------------- reading a sweep back
def trial_index(run, fallback: int) -> int:
    tail = run.data.tags.get(TRIAL_KEY_TAG, "").rpartition(":")[2]
    if tail.isdigit():
        return int(tail)
    match = re.match(r"trial_(\d+)", run.info.run_name or "")
    return int(match.group(1)) if match else fallback


def metric_history(mlflow_client, run_id: str, metric: str) -> list[tuple[int, float]]:
    """``(step, value)`` in step order; a step logged twice (a retried request)
    counts once: the latest."""
    latest: dict[int, tuple[int, float]] = {}
    for m in mlflow_client.get_metric_history(run_id, metric):
        if m.step not in latest or m.timestamp >= latest[m.step][0]:
            latest[m.step] = (m.timestamp, m.value)
    return [(step, latest[step][1]) for step in sorted(latest)]


def trial_from_run(mlflow_client, run, position: int, metrics: Iterable[str]) -> TrialOutcome:
    """A child run as a :class:`TrialOutcome` with the histories of ``metrics``."""
    swept = {
        key.removeprefix(SWEPT_PREFIX): parse_tag_value(value)
        for key, value in run.data.tags.items()
        if key.startswith(SWEPT_PREFIX)
    }
    trial = TrialOutcome(
        index=trial_index(run, position),
        swept=swept,
        status=run.info.status,
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id,
        error=run.data.tags.get("bopsweep.failure"),
    )
    # A metric whose latest value is at step 0 has no other step: its history is that
    # value, no request needed (a 1,000-trial grid of one epoch each reads 5,000
    # histories otherwise). Run.data keeps the latest value's step on its metric
    # objects only.
    latest = {m.key: m for m in getattr(run.data, "_metric_objs", ())}
    for name in dict.fromkeys(metrics):
        if name not in run.data.metrics:
            continue
        if name in latest and latest[name].step == 0:
            trial.history[name] = [(0, run.data.metrics[name])]
        else:
            trial.history[name] = metric_history(mlflow_client, run.info.run_id, name)
    return trial


def load_trials(mlflow_client, exp_id: str, parent_run_id: str, metrics: Iterable[str]):
    """Every child run of the parent as a :class:`TrialOutcome`, by trial index."""
    metrics = list(metrics)
    runs = child_runs(mlflow_client, exp_id, parent_run_id)
    trials = [trial_from_run(mlflow_client, run, i, metrics) for i, run in enumerate(runs)]
    return sorted(trials, key=lambda t: t.index)
