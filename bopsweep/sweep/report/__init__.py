"""What a sweep found, in a form people can read: a leaderboard, curves and heatmaps.

A report is drawn from a :class:`~bopsweep.sweep.outcome.SweepOutcome`. ``bopsweep
report`` reads that back from MLflow through ``MlflowClient`` (never from local result
folders), so a report can be made from any machine that reaches the tracking server,
for a sweep that is still running or one that ended long ago (:func:`write_report`);
``bopsweep run`` hands over the outcome it has just settled (:func:`render`). The
report is written to a folder and, by default, logged to the sweep's parent run under
``report/``, where the MLflow UI shows it next to the runs.

The curves follow Figure 1 of Helwegen et al. (2019): per setting, training accuracy
(solid) and validation accuracy (dashed) over the epochs, above the log flip ratio
``pi = log(flip ratio + e^-9)``; one group of panels per swept parameter, the other
parameters held at one value (the paper's threshold 1e-6 / gamma 1e-3 when swept,
otherwise the middle value). With seeds, curves and heatmap cells are means over seeds.

For a threshold x gamma sweep the report also states whether the paper's section
5.1 findings are reproduced, with the statistic behind each (:mod:`.claims`): in
``leaderboard.md``, ``claims.json``, the terminal and the parent run's metrics and tags.

The parts: :mod:`.grid` (key order, settings over seeds), :mod:`.tables` (the
leaderboard as csv, markdown, MLflow table and terminal table), :mod:`.figures`
(curves and heatmaps), :mod:`.claims` (section 5.1's findings) and :mod:`.parent`
(logging to the parent run).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bopsweep.errors import UserError
from bopsweep.sweep import mlflow_client, mlflow_runs
from bopsweep.sweep.outcome import FLIP_METRIC, SweepOutcome
from bopsweep.sweep.report.claims import (
    CLAIMS_FILE,
    Claim,
    claims_markdown,
    claims_table,
    section51_claims,
)
from bopsweep.sweep.report.figures import (
    CURVE_METRICS,
    STEP_FLIP_METRIC,
    Heatmap,
    curve_panels,
    write_figures,
)
from bopsweep.sweep.report.grid import swept_key_order
from bopsweep.sweep.report.parent import TABLE_FILE, log_report
from bopsweep.sweep.report.tables import (
    EXTRA_METRICS,
    leaderboard_csv,
    leaderboard_markdown,
    leaderboard_table,
    leaderboard_table_json,
)

__all__ = [
    "DEFAULT_REPORT_ROOT",
    "HISTORY_METRICS",
    "Claim",
    "ReportResult",
    "claims_table",
    "is_spec_path",
    "leaderboard_table",
    "load_outcome",
    "render",
    "section51_claims",
    "tracking_uri_for",
    "write_report",
]

DEFAULT_REPORT_ROOT = "bopsweep_reports"
# The metric histories a report draws on, besides the sweep's own metric: a trial's
# outcome needs these (and the metric) for every table and figure to be complete.
# The extra metrics are read where the trials logged them (top-5, test set).
HISTORY_METRICS = (*CURVE_METRICS, FLIP_METRIC, *EXTRA_METRICS)


@dataclass
class ReportResult:
    """What a report was made of and what it wrote."""

    outcome: SweepOutcome
    swept_keys: list[str]  # the spec's order, as the tables show them
    heatmaps: dict[str, Heatmap]
    out_dir: Path
    files: list[Path]
    logged_to_parent: bool = False
    # The paper's section 5.1 findings, for a threshold x gamma sweep (else empty).
    claims: list[Claim] = field(default_factory=list)


# --------------------------------------------------------------- finding the sweep
def is_spec_path(name_or_spec: str | Path) -> bool:
    """A spec file, not a sweep name: a Path, a ``.yaml``/``.yml`` file or a path with a
    folder in it. Sweep names have neither (spec.py's pattern)."""
    if isinstance(name_or_spec, Path):
        return True
    text = str(name_or_spec)
    return text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text


@dataclass(frozen=True)
class _Target:
    """What a sweep name or a spec file says about where the sweep is tracked."""

    name: str
    experiment: str | None = None
    tracking_uri: str | None = None
    metric: tuple[str, str] | None = None


def _target(name_or_spec: str | Path) -> _Target:
    if not is_spec_path(name_or_spec):
        return _Target(str(name_or_spec))
    from bopsweep.sweep.spec import load_spec

    spec = load_spec(name_or_spec).spec
    return _Target(
        spec.name, spec.experiment, spec.tracking.uri, (spec.metric.name, spec.metric.mode)
    )


def tracking_uri_for(name_or_spec: str | Path, cli_uri: str | None) -> str:
    """The tracking URI, with ``bopsweep run``'s precedence: ``--tracking-uri`` >
    ``MLFLOW_TRACKING_URI`` > the spec's ``tracking.uri`` > ``./mlflow.db``."""
    return mlflow_client.resolve_tracking_uri(cli_uri, _target(name_or_spec).tracking_uri)


def _parent_metric(parent, spec_metric: tuple[str, str] | None) -> tuple[str, str]:
    params = parent.data.params
    name = params.get("metric.name") or (spec_metric[0] if spec_metric else "val_accuracy")
    mode = params.get("metric.mode") or (spec_metric[1] if spec_metric else "max")
    return name, mode if mode in ("max", "min") else "max"


def load_outcome(
    tracking_uri: str, name_or_spec: str | Path, *, parent_run_id: str | None = None
) -> SweepOutcome:
    """A sweep read back from MLflow, with the histories the report needs.

    ``name_or_spec`` is a sweep name (the parent run's ``bopsweep.sweep`` tag; the
    latest parent run when there are several) or a spec file; ``parent_run_id`` names
    the parent run outright instead.
    """
    target = _target(name_or_spec)
    mlflow_client.check_local_store(tracking_uri, must_exist=True)
    mlflow_client.check_connection(tracking_uri)
    client = mlflow_client.client(tracking_uri)
    if parent_run_id is not None:
        parent = client.get_run(parent_run_id)
    else:
        parent = mlflow_runs.find_parent_run(client, target.name, target.experiment, tracking_uri)
    metric, mode = _parent_metric(parent, target.metric)
    experiment_id, parent_run_id = parent.info.experiment_id, parent.info.run_id
    trials = mlflow_runs.load_trials(
        client, experiment_id, parent_run_id, (metric, *HISTORY_METRICS)
    )
    return SweepOutcome(
        name=parent.data.tags.get(mlflow_client.SWEEP_TAG, target.name),
        metric=metric,
        mode=mode,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        trials=trials,
    )


# -------------------------------------------------------------------- the report
def _read_step_series(outcome: SweepOutcome, keys: Sequence[str]) -> None:
    """The per-step flip series of the trials the curves draw, from their runs (not
    read with the other histories: hundreds of points per epoch, for a few runs)."""
    if not any(t.history for t in outcome.trials):
        return
    drawn = {
        id(run): run
        for panel in curve_panels(outcome, keys)
        for _, runs in panel.settings
        for run in runs
        if run.run_id and STEP_FLIP_METRIC not in run.history
    }
    if not drawn:
        return
    client = mlflow_client.client(outcome.tracking_uri)
    try:
        for run in drawn.values():
            history = mlflow_runs.metric_history(client, run.run_id, STEP_FLIP_METRIC)
            if history:
                run.history[STEP_FLIP_METRIC] = history
    except mlflow_client.unreachable_errors():
        # The figure then shows the epoch means, as for runs that have no series.
        for run in drawn.values():
            run.history.pop(STEP_FLIP_METRIC, None)


def render(outcome: SweepOutcome, out_dir: Path, *, log_to_parent: bool) -> ReportResult:
    """Write the report of ``outcome`` to ``out_dir``: ``leaderboard.{csv,md,json}``,
    ``curves.{png,svg}`` and, for a 2-D grid, ``heatmaps.{png,svg}``; with
    ``log_to_parent`` also to the parent run under ``report/``.

    The trials' histories should hold the sweep's metric and :data:`HISTORY_METRICS`.
    """
    if not outcome.trials:
        raise UserError(
            f"sweep {outcome.name!r} (parent run {outcome.parent_run_id}) has no trial runs "
            "yet: nothing to report"
        )
    keys = swept_key_order(outcome.trials)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    claims = section51_claims(outcome)
    markdown = leaderboard_markdown(outcome, keys)
    texts = {
        "leaderboard.csv": leaderboard_csv(outcome, keys),
        "leaderboard.md": markdown + ("\n" + claims_markdown(claims) if claims else ""),
        TABLE_FILE: json.dumps(leaderboard_table_json(outcome, keys), indent=1),
    }
    if claims:
        texts[CLAIMS_FILE] = json.dumps([c.to_dict() for c in claims], indent=1)
    files = []
    for file_name, text in texts.items():
        (out / file_name).write_text(text, encoding="utf-8")
        files.append(out / file_name)
    _read_step_series(outcome, keys)
    maps, figures = write_figures(outcome, keys, out)
    result = ReportResult(outcome, keys, maps, out, files + figures, claims=claims)
    if log_to_parent:
        log_report(outcome, result.files, claims)
        result.logged_to_parent = True
    return result


def write_report(
    tracking_uri: str,
    name_or_spec: str | Path,
    out_dir: Path | None = None,
    *,
    log_to_parent: bool = True,
    parent_run_id: str | None = None,
) -> ReportResult:
    """Read a sweep back from MLflow (:func:`load_outcome`) and write its report
    (:func:`render`) to ``out_dir``, by default ``./bopsweep_reports/<name>``."""
    outcome = load_outcome(tracking_uri, name_or_spec, parent_run_id=parent_run_id)
    out = Path(out_dir) if out_dir is not None else Path(DEFAULT_REPORT_ROOT) / outcome.name
    return render(outcome, out, log_to_parent=log_to_parent)
