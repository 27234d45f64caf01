"""The report, logged to the sweep's parent run, where the MLflow UI shows it next to
the runs.

Reporting is repeatable (a sweep still running can be reported again and again), so
what goes to the parent run must not pile up: the files replace the previous ones
under ``report/``, the table is registered once in ``mlflow.loggedArtifacts``, and
the best trial's figures (and the section 5.1 findings' figures and verdicts) are
logged only when they changed. Those figures are
:meth:`SweepOutcome.summary_metrics`, the same names and values that
:func:`~bopsweep.sweep.mlflow_runs.finish_parent` logs at the end of a sweep.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bopsweep.sweep import mlflow_client
from bopsweep.sweep.outcome import SweepOutcome
from bopsweep.sweep.report.claims import Claim, claims_metrics, claims_tags

REPORT_ARTIFACT_DIR = "report"
TABLE_FILE = "leaderboard.json"
# Shown in the MLflow UI's table views (the tag ``MlflowClient.log_table`` maintains).
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"


def log_report(outcome: SweepOutcome, files: Sequence[Path], claims: Sequence[Claim] = ()) -> None:
    """Log ``files`` to the parent run under ``report/`` and bring the parent's
    summary (best trial and its figures, the section 5.1 verdicts) up to date."""
    from mlflow.entities import Metric, RunTag

    client = mlflow_client.client(outcome.tracking_uri)
    run_id = outcome.parent_run_id
    # Only the report's own files, even when --out is a folder that holds others.
    with tempfile.TemporaryDirectory() as staging:
        for path in files:
            shutil.copy2(path, Path(staging) / path.name)
        client.log_artifacts(run_id, staging, REPORT_ARTIFACT_DIR)
    parent = client.get_run(run_id)
    table_path = f"{REPORT_ARTIFACT_DIR}/{TABLE_FILE}"
    logged = json.loads(parent.data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    tags = []
    if {"path": table_path, "type": "table"} not in logged:
        logged.append({"path": table_path, "type": "table"})
        tags.append(RunTag(LOGGED_ARTIFACTS_TAG, json.dumps(logged)))
    metrics = []
    best = outcome.best
    if best is not None:
        now = int(time.time() * 1000)
        # A sweep still running gets these here first; a finished one already has them.
        for name, value in outcome.summary_metrics().items():
            current = parent.data.metrics.get(name)
            if not math.isnan(value) and (
                current is None or not math.isclose(current, value, rel_tol=1e-12)
            ):
                metrics.append(Metric(name, value, now, 0))
        for key, value in (
            ("bopsweep.best_trial", best.name),
            ("bopsweep.best_run_id", str(best.run_id)),
        ):
            if parent.data.tags.get(key) != value:
                tags.append(RunTag(key, value))
    now = int(time.time() * 1000)
    for name, value in claims_metrics(list(claims)).items():
        current = parent.data.metrics.get(name)
        if current is None or not math.isclose(current, value, rel_tol=1e-12, abs_tol=1e-15):
            metrics.append(Metric(name, value, now, 0))
    for key, value in claims_tags(list(claims)).items():
        if parent.data.tags.get(key) != value:
            tags.append(RunTag(key, value))
    if metrics or tags:
        client.log_batch(run_id, metrics=metrics, tags=tags, synchronous=True)
