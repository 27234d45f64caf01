"""The leaderboard, in every form it is read: csv, markdown, MLflow's table and the terminal.

Each rendering takes a :class:`~bopsweep.sweep.outcome.SweepOutcome` and ranks its
trials with :meth:`~bopsweep.sweep.outcome.SweepOutcome.ranked`, so the files of
``bopsweep report`` and the table printed at the end of ``bopsweep run`` show the same
ranks and the same figures. A trial that never reached MLflow (no run id) still gets
its row, with an empty run column.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from bopsweep.sweep.outcome import (
    FLIP_METRIC,
    TERMINAL_STATUSES,
    SweepOutcome,
    TrialOutcome,
    format_value,
)
from bopsweep.sweep.report.grid import swept_key_order

STATUS_STYLES = {"FINISHED": "green", "FAILED": "red", "KILLED": "yellow", "RUNNING": "cyan"}
# Final values shown beside the ranking metric when the trials logged them: top-5
# accuracy (datasets with more than 5 classes, e.g. ImageNet) and the test set's
# scores (runs with a held-out validation split).
EXTRA_METRICS = ("val_top5_accuracy", "test_accuracy", "test_top5_accuracy")


def extra_metrics(outcome: SweepOutcome) -> list[str]:
    """The :data:`EXTRA_METRICS` some trial has a history of, other than the metric."""
    return [
        m
        for m in EXTRA_METRICS
        if m != outcome.metric and any(t.history.get(m) for t in outcome.trials)
    ]


def _keys(outcome: SweepOutcome, keys: Sequence[str] | None) -> list[str]:
    return list(keys) if keys is not None else swept_key_order(outcome.trials)


def _label(key: str) -> str:
    return key.removeprefix("hparams.")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _swept_text(trial: TrialOutcome, key: str) -> str:
    # "-": a value not known yet (a bayes trial its searcher has not proposed).
    return format_value(trial.swept[key]) if key in trial.swept else "-"


def _fmt_metric(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _fmt_ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2e}"


def columns(metric: str, keys: Sequence[str], extras: Sequence[str] = ()) -> list[str]:
    """The machine-readable column names (csv and MLflow's table)."""
    return [
        "rank",
        "trial",
        *keys,
        f"final_{metric}",
        f"best_{metric}",
        *(f"final_{m}" for m in extras),
        "mean_flip_ratio",
        "epochs",
        "status",
        "run",
    ]


def _row_values(outcome: SweepOutcome, rank: int, trial: TrialOutcome, keys: Sequence[str]):
    metric = outcome.metric
    return [
        rank,
        trial.index,
        *(trial.swept.get(k) for k in keys),
        trial.final(metric),
        trial.best(metric, outcome.mode),
        *(trial.final(m) for m in extra_metrics(outcome)),
        trial.mean_flip_ratio,
        trial.epochs(metric),
        trial.status,
        # The run's page in the MLflow UI, or its id for a local store.
        outcome.run_link(trial.run_id),
    ]


def _rows(outcome: SweepOutcome, keys: Sequence[str]) -> list[list[Any]]:
    return [
        _row_values(outcome, rank, trial, keys) for rank, trial in enumerate(outcome.ranked(), 1)
    ]


def leaderboard_csv(outcome: SweepOutcome, keys: Sequence[str] | None = None) -> str:
    keys = _keys(outcome, keys)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns(outcome.metric, keys, extra_metrics(outcome)))
    for values in _rows(outcome, keys):
        writer.writerow(["" if _is_nan(v) else v for v in values])
    return buffer.getvalue()


def leaderboard_table_json(outcome: SweepOutcome, keys: Sequence[str] | None = None) -> dict:
    """The leaderboard in the layout ``MlflowClient.log_table`` writes (pandas' "split"
    orientation), so ``MlflowClient.load_table`` and the UI's table views read it."""
    keys = _keys(outcome, keys)
    # JSON has no NaN; a trial with no run has no link.
    data = [
        [None if _is_nan(v) else v for v in values[:-1]] + [values[-1] or None]
        for values in _rows(outcome, keys)
    ]
    return {"columns": columns(outcome.metric, keys, extra_metrics(outcome)), "data": data}


def leaderboard_records(outcome: SweepOutcome, keys: Sequence[str] | None = None) -> list[dict]:
    """The leaderboard as one JSON object per trial, best first (``--json``)."""
    keys = _keys(outcome, keys)
    names = columns(outcome.metric, keys, extra_metrics(outcome))
    return [
        {
            name: None if _is_nan(value) else value
            for name, value in zip(names, values, strict=True)
            if name not in keys
        }
        | {"swept": {k: trial.swept.get(k) for k in keys}, "run_id": trial.run_id}
        for values, trial in zip(_rows(outcome, keys), outcome.ranked(), strict=True)
    ]


def outcome_json(outcome: SweepOutcome, keys: Sequence[str] | None = None) -> dict:
    """A sweep's result for scripts: how it ended, where it is tracked, the leaderboard."""
    return {
        "sweep": outcome.name,
        "metric": outcome.metric,
        "mode": outcome.mode,
        "tracking_uri": outcome.tracking_uri,
        "experiment_id": outcome.experiment_id,
        "parent_run_id": outcome.parent_run_id,
        "parent_run": outcome.parent_link,
        "counts": outcome.counts(),
        "interrupted": outcome.interrupted,
        "ended_early": outcome.ended_early,
        "tracking_error": outcome.tracking_error,
        "leaderboard": leaderboard_records(outcome, keys),
    }


def _title(outcome: SweepOutcome) -> str:
    return f"{outcome.name}: leaderboard by {outcome.metric} ({outcome.mode})"


def leaderboard_markdown(outcome: SweepOutcome, keys: Sequence[str] | None = None) -> str:
    keys = _keys(outcome, keys)
    metric = outcome.metric
    extras = extra_metrics(outcome)
    header = [
        "rank",
        "trial",
        *(_label(k) for k in keys),
        f"final {metric}",
        f"best {metric}",
        *(f"final {m}" for m in extras),
        "mean flip ratio",
        "epochs",
        "status",
        "run",
    ]
    lines = [
        f"# Sweep {_title(outcome)}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if h not in ("status", "run") else "---" for h in header) + "|",
    ]
    for rank, trial in enumerate(outcome.ranked(), 1):
        link = outcome.run_link(trial.run_id)
        if not trial.run_id:
            run = "-"
        elif link != trial.run_id:
            run = f"[{trial.run_id[:8]}]({link})"
        else:
            run = f"`{trial.run_id}`"
        cells = [
            str(rank),
            f"{trial.index:03d}",
            *(_swept_text(trial, k) for k in keys),
            _fmt_metric(trial.final(metric)),
            _fmt_metric(trial.best(metric, outcome.mode)),
            *(_fmt_metric(trial.final(m)) for m in extras),
            _fmt_ratio(trial.mean_flip_ratio),
            str(trial.epochs(metric)),
            trial.status,
            run,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Parent run: {outcome.parent_link} (tracking URI `{outcome.tracking_uri}`)")
    return "\n".join(lines) + "\n"


def _epochs_text(trial: TrialOutcome, metric: str) -> str:
    done = trial.epochs(metric)
    # Out of how many, when known (a sweep that just ran) and not all were reached.
    if trial.epochs_total is not None and done < trial.epochs_total:
        return f"{done}/{trial.epochs_total}"
    return str(done)


def leaderboard_table(
    outcome: SweepOutcome,
    keys: Sequence[str] | None = None,
    *,
    links: bool = True,
    limit: int | None = None,
    elsewhere: str = "",
):
    """The leaderboard as a rich table for the terminal, for a sweep read back from
    MLflow or one that has just ended. With ``links``, run ids on a tracking server
    are terminal hyperlinks to their page in the MLflow UI. With ``limit``, only the
    best ``limit`` trials get a row and a caption counts the others (``elsewhere``
    says where the whole leaderboard is)."""
    from rich.table import Table

    keys = _keys(outcome, keys)
    metric = outcome.metric
    ranked = outcome.ranked()
    table = Table(title=_title(outcome))
    if limit is not None and len(ranked) > limit:
        rest = len(ranked) - limit
        table.caption = f"... and {rest} more trials{f' ({elsewhere})' if elsewhere else ''}"
        table.caption_justify = "left"
        ranked = ranked[:limit]
    headers = ["rank", "trial", *(_label(k) for k in keys)]
    extras = extra_metrics(outcome)
    headers += [f"final {metric}", f"best {metric}", *(f"final {m}" for m in extras)]
    headers += ["mean flip_ratio", "epochs", "status"]
    for header in headers:
        table.add_column(header, justify="left" if header == "status" else "right")
    # Whole run ids (other columns wrap first): they are what users copy.
    table.add_column("run", no_wrap=True, min_width=32)
    for rank, trial in enumerate(ranked, 1):
        style = STATUS_STYLES.get(trial.status, "")
        link = outcome.run_link(trial.run_id)
        if not trial.run_id:
            run = "-"
        elif links and link != trial.run_id:
            run = f"[link={link}]{trial.run_id}[/link]"
        else:
            run = trial.run_id
        table.add_row(
            str(rank),
            f"{trial.index:03d}",
            *(_swept_text(trial, k) for k in keys),
            _fmt_metric(trial.final(metric)),
            _fmt_metric(trial.best(metric, outcome.mode)),
            *(_fmt_metric(trial.final(m)) for m in extras),
            _fmt_ratio(trial.mean_flip_ratio),
            _epochs_text(trial, metric),
            f"[{style}]{trial.status}[/]" if style else trial.status,
            run,
        )
    return table


# ------------------------------------------------------------------ while it runs
def _epochs_done(trial: TrialOutcome, metric: str) -> int:
    series = trial.history.get(metric) or []
    return series[-1][0] + 1 if series else 0


def live_rows(outcome: SweepOutcome, max_rows: int | None) -> list[TrialOutcome]:
    """The trials the live table shows, in index order: all of them when they fit in
    ``max_rows``; else the running ones first, then the best that have ended, then
    the next to start (a terminal redraws only what fits its height, and a sweep of
    1,000 trials would print 1,000 rows when it ends)."""
    trials = sorted(outcome.trials, key=lambda t: t.index)
    if max_rows is None or len(trials) <= max_rows:
        return trials
    running = [t for t in trials if t.status == "RUNNING"]
    ended = [t for t in outcome.ranked() if t.status in TERMINAL_STATUSES]
    waiting = [t for t in trials if t.status != "RUNNING" and t.status not in TERMINAL_STATUSES]
    shown = (running + ended + waiting)[: max(max_rows, 1)]
    return sorted(shown, key=lambda t: t.index)


def live_table(outcome: SweepOutcome, max_rows: int | None = None):
    """The sweep's progress as a compact table (the CLI refreshes it in place), at
    most ``max_rows`` trials of it (:func:`live_rows`) and a caption that counts the
    others by status."""
    from collections import Counter

    from rich.table import Table

    metric, mode = outcome.metric, outcome.mode
    done = sum(t.status in TERMINAL_STATUSES for t in outcome.trials)
    table = Table(
        title=f"{outcome.name}: {done}/{len(outcome.trials)} trials done", title_justify="left"
    )
    shown = live_rows(outcome, max_rows)
    if len(shown) < len(outcome.trials):
        ids = {id(t) for t in shown}
        statuses = Counter(t.status.lower() for t in outcome.trials if id(t) not in ids)
        counted = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        table.caption = f"... {len(outcome.trials) - len(shown)} more trials: {counted}"
        table.caption_justify = "left"
    keys = outcome.swept_keys()
    headers = ["trial", *(_label(k) for k in keys), "status", "epoch"]
    for header in [*headers, metric, f"best ({mode})", FLIP_METRIC]:
        table.add_column(header, justify="left" if header == "status" else "right")
    for trial in shown:
        style = STATUS_STYLES.get(trial.status, "")
        total = trial.epochs_total if trial.epochs_total is not None else "?"
        table.add_row(
            f"{trial.index:03d}",
            *(_swept_text(trial, k) for k in keys),
            f"[{style}]{trial.status}[/]" if style else trial.status,
            f"{_epochs_done(trial, metric)}/{total}",
            _fmt_metric(trial.final(metric)),
            _fmt_metric(trial.best(metric, mode)),
            _fmt_ratio(trial.final(FLIP_METRIC)),
        )
    return table
