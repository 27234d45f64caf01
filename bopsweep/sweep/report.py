"""What a sweep found, in a form people can read: a leaderboard, curves and heatmaps.

Everything is read back from MLflow through ``MlflowClient`` (never from local result
folders), so a report can be made from any machine that reaches the tracking server,
for a sweep that is still running or one that ended long ago. The report is written to
a folder and, by default, logged to the sweep's parent run under ``report/``, where the
MLflow UI shows it next to the runs.

The curves follow Figure 1 of Helwegen et al. (2019): per setting, training accuracy
(solid) and validation accuracy (dashed) over the epochs, above the log flip ratio
``pi = log(flip ratio + e^-9)``; one group of panels per swept parameter, the other
parameters held at one value (the paper's threshold 1e-6 / gamma 1e-3 when swept,
otherwise the middle value). With seeds, curves and heatmap cells are means over seeds.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bopsweep.errors import UserError
from bopsweep.sweep import tracking

DEFAULT_REPORT_ROOT = "bopsweep_reports"
REPORT_ARTIFACT_DIR = "report"
TABLE_FILE = "leaderboard.json"
# Shown in the MLflow UI's table views (the tag ``MlflowClient.log_table`` maintains).
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
SEED_KEY = "seed"
# The values section 5.1 of the paper holds fixed while it varies the other one.
PAPER_REFERENCE = {"hparams.threshold": 1e-6, "hparams.gamma": 1e-3}
# Okabe & Ito's palette, distinguishable with the common colour-vision deficiencies;
# ordered so that the first few colours also differ in lightness, and without the
# yellow, which is unreadable as a thin line on white.
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
LOG_FLIP_FLOOR = -9.0  # pi when nothing flips: log(e^-9)
HISTORY_METRICS = ("train_accuracy", "val_accuracy", "log_flip_ratio", "flip_ratio")


# ----------------------------------------------------------------------- data model
@dataclass
class TrialRecord:
    """One child run of the sweep, with the metric histories the report uses."""

    index: int
    run_id: str
    run_name: str
    status: str
    swept: dict[str, Any]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def values(self, metric: str) -> list[float]:
        return [value for _, value in self.history.get(metric, [])]

    def final(self, metric: str) -> float:
        values = self.values(metric)
        return values[-1] if values else math.nan

    def best(self, metric: str, mode: str) -> float:
        values = [v for v in self.values(metric) if not math.isnan(v)]
        if not values:
            return math.nan
        return max(values) if mode == "max" else min(values)

    @property
    def mean_flip_ratio(self) -> float:
        values = self.values("flip_ratio")
        return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class LeaderboardRow:
    rank: int
    trial: int
    run_name: str
    swept: dict[str, Any]
    final: float
    best: float
    mean_flip_ratio: float
    epochs: int
    status: str
    run_id: str
    link: str  # the run's page in the MLflow UI, or its id for a local store


@dataclass(frozen=True)
class Heatmap:
    """A value over a 2-D grid of two swept parameters; cells are means over seeds.

    ``mean[i][j]`` is the cell at ``row_values[i]`` and ``col_values[j]``; ``std``
    is the standard deviation over seeds (0 for one seed), ``count`` the number of
    trials with a value (NaN in ``mean`` where there is none).
    """

    name: str
    label: str
    row_key: str
    col_key: str
    row_values: list[Any]
    col_values: list[Any]
    mean: list[list[float]]
    std: list[list[float]]
    count: list[list[int]]
    log_scale: bool = False


@dataclass
class ReportResult:
    """What ``write_report`` found and wrote: ranked rows, heatmap matrices, files."""

    sweep: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metric: str
    mode: str
    swept_keys: list[str]
    rows: list[LeaderboardRow]
    heatmaps: dict[str, Heatmap]
    out_dir: Path
    files: list[Path]
    logged_to_parent: bool = False

    @property
    def best(self) -> LeaderboardRow | None:
        return next((r for r in self.rows if not math.isnan(r.best)), None)

    @property
    def parent_link(self) -> str:
        return run_link(self.tracking_uri, self.experiment_id, self.parent_run_id)


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
    return tracking.resolve_tracking_uri(cli_uri, _target(name_or_spec).tracking_uri)


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return run_id


def _all_pages(search: Callable[[str | None], Any]) -> list:
    items, token = [], None
    while True:
        page = search(token)
        items.extend(page)
        token = page.token
        if not token:
            return items


def _sweep_parents(client, experiment_ids: list[str], name: str | None) -> list:
    condition = f"tags.`{tracking.ROLE_TAG}` = 'sweep'"
    if name is not None:
        condition += f" AND tags.`{tracking.SWEEP_TAG}` = '{name}'"
    runs = []
    # search_runs takes a bounded number of experiments per request.
    for start in range(0, len(experiment_ids), 100):
        chunk = experiment_ids[start : start + 100]
        runs += _all_pages(
            lambda token, chunk=chunk: client.search_runs(
                chunk, condition, max_results=1000, page_token=token
            )
        )
    return runs


def find_parent_run(client, name: str, experiment: str | None = None, uri: str = ""):
    """The sweep's parent run: the latest run tagged ``bopsweep.sweep=<name>``, looked
    for in ``experiment`` (default: the experiment named like the sweep), then in every
    experiment; an unknown name is a UserError listing the sweeps that exist."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"{name!r} is neither a sweep name nor a spec file (.yaml)")
    preferred = client.get_experiment_by_name(experiment or name)
    candidates = []
    if preferred is not None and preferred.lifecycle_stage == "active":
        candidates = _sweep_parents(client, [preferred.experiment_id], name)
    if not candidates:
        experiments = _all_pages(
            lambda token: client.search_experiments(max_results=1000, page_token=token)
        )
        experiment_ids = [e.experiment_id for e in experiments]
        candidates = _sweep_parents(client, experiment_ids, name)
    if candidates:
        return max(candidates, key=lambda run: (run.info.start_time or 0, run.info.run_id))
    known = sorted(
        {
            r.data.tags.get(tracking.SWEEP_TAG, "?")
            for r in _sweep_parents(client, experiment_ids, None)
        }
    )
    where = f" in the MLflow store at {uri}" if uri else ""
    if known:
        raise UserError(f"no sweep named {name!r}{where}; sweeps there: {', '.join(known)}")
    raise UserError(f"no sweep named {name!r}{where}: it holds no sweeps yet (run one first)")


# ------------------------------------------------------------------ reading trials
def parse_tag_value(text: str) -> Any:
    """A swept value as the trial saw it: tags hold ``str(value)``."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def _trial_index(run, fallback: int) -> int:
    key = run.data.tags.get(tracking.TRIAL_KEY_TAG, "")
    tail = key.rpartition(":")[2]
    if tail.isdigit():
        return int(tail)
    match = re.match(r"trial_(\d+)", run.info.run_name or "")
    return int(match.group(1)) if match else fallback


def load_trials(client, experiment_id: str, parent_run_id: str, metric: str) -> list[TrialRecord]:
    """Every child run of the parent, with the histories of the report's metrics."""
    runs = _all_pages(
        lambda token: client.search_runs(
            [experiment_id],
            f"tags.`{tracking.PARENT_TAG}` = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
    )
    trials = []
    for position, run in enumerate(runs):
        swept = {
            key.removeprefix("swept."): parse_tag_value(value)
            for key, value in run.data.tags.items()
            if key.startswith("swept.")
        }
        record = TrialRecord(
            index=_trial_index(run, position),
            run_id=run.info.run_id,
            run_name=run.info.run_name or run.info.run_id,
            status=run.info.status,
            swept=swept,
        )
        for name in dict.fromkeys((metric, *HISTORY_METRICS)):
            if name in run.data.metrics:
                history = client.get_metric_history(run.info.run_id, name)
                latest: dict[int, tuple[int, float]] = {}
                for m in history:
                    # A step logged twice (a retried request) counts once: the latest.
                    if m.step not in latest or m.timestamp >= latest[m.step][0]:
                        latest[m.step] = (m.timestamp, m.value)
                record.history[name] = [(step, latest[step][1]) for step in sorted(latest)]
        trials.append(record)
    return sorted(trials, key=lambda t: t.index)


def swept_key_order(trials: Sequence[TrialRecord]) -> list[str]:
    """The swept keys in the spec's order, recovered from the trial order: a grid is
    expanded with the first key varying slowest, and seeds come last."""
    keys = sorted({k for t in trials for k in t.swept})

    def changes(key: str) -> int:
        values = [repr(t.swept.get(key)) for t in trials]
        return sum(a != b for a, b in itertools.pairwise(values))

    return sorted(keys, key=lambda k: (k == SEED_KEY, changes(k), k))


def _sort_values(values: Iterable[Any]) -> list[Any]:
    unique = list(dict.fromkeys(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in unique):
        return sorted(unique)
    return sorted(unique, key=str)


# -------------------------------------------------------------------- leaderboard
def leaderboard(
    trials: Sequence[TrialRecord], metric: str, mode: str, link: Callable[[str], str]
) -> list[LeaderboardRow]:
    """Trials ranked by their best value of the metric (NaN last), ties by index."""
    sign = -1 if mode == "max" else 1

    def order(trial: TrialRecord) -> tuple:
        best = trial.best(metric, mode)
        return (math.isnan(best), 0 if math.isnan(best) else sign * best, trial.index)

    rows = []
    for rank, trial in enumerate(sorted(trials, key=order), 1):
        rows.append(
            LeaderboardRow(
                rank=rank,
                trial=trial.index,
                run_name=trial.run_name,
                swept=dict(trial.swept),
                final=trial.final(metric),
                best=trial.best(metric, mode),
                mean_flip_ratio=trial.mean_flip_ratio,
                epochs=len(trial.values(metric)),
                status=trial.status,
                run_id=trial.run_id,
                link=link(trial.run_id),
            )
        )
    return rows


def _columns(metric: str, keys: Sequence[str]) -> list[str]:
    return [
        "rank",
        "trial",
        *keys,
        f"final_{metric}",
        f"best_{metric}",
        "mean_flip_ratio",
        "epochs",
        "status",
        "run",
    ]


def _row_values(row: LeaderboardRow, keys: Sequence[str]) -> list[Any]:
    return [
        row.rank,
        row.trial,
        *(row.swept.get(k) for k in keys),
        row.final,
        row.best,
        row.mean_flip_ratio,
        row.epochs,
        row.status,
        row.link,
    ]


def leaderboard_csv(rows: Sequence[LeaderboardRow], metric: str, keys: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_columns(metric, keys))
    for row in rows:
        writer.writerow(["" if _is_nan(v) else v for v in _row_values(row, keys)])
    return buffer.getvalue()


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _fmt_metric(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _fmt_ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2e}"


def format_value(value: Any) -> str:
    """Swept values as the CLI shows them (``1e-06``, ``0.001``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def leaderboard_markdown(result: ReportResult) -> str:
    keys = result.swept_keys
    metric = result.metric
    header = [
        "rank",
        "trial",
        *(k.removeprefix("hparams.") for k in keys),
        f"final {metric}",
        f"best {metric}",
        "mean flip ratio",
        "epochs",
        "status",
        "run",
    ]
    lines = [
        f"# Sweep {result.sweep}: leaderboard by {metric} ({result.mode})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if h not in ("status", "run") else "---" for h in header) + "|",
    ]
    for row in result.rows:
        run = f"[{row.run_id[:8]}]({row.link})" if row.link != row.run_id else f"`{row.run_id}`"
        cells = [
            str(row.rank),
            f"{row.trial:03d}",
            *(format_value(row.swept.get(k)) for k in keys),
            _fmt_metric(row.final),
            _fmt_metric(row.best),
            _fmt_ratio(row.mean_flip_ratio),
            str(row.epochs),
            row.status,
            run,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Parent run: {result.parent_link} (tracking URI `{result.tracking_uri}`)")
    return "\n".join(lines) + "\n"


def leaderboard_table_json(rows: Sequence[LeaderboardRow], metric: str, keys: Sequence[str]):
    """The leaderboard in the layout ``MlflowClient.log_table`` writes (pandas' "split"
    orientation), so ``MlflowClient.load_table`` and the UI's table views read it."""
    columns = _columns(metric, keys)
    data = [[None if _is_nan(v) else v for v in _row_values(row, keys)] for row in rows]
    return {"columns": columns, "data": data}


def leaderboard_table(result: ReportResult):
    """The leaderboard as a rich table for the terminal (run ids link to the UI)."""
    from rich.table import Table

    table = Table(title=f"{result.sweep}: leaderboard by {result.metric} ({result.mode})")
    metric = result.metric
    columns = ["rank", "trial", *(k.removeprefix("hparams.") for k in result.swept_keys)]
    columns += [f"final {metric}", f"best {metric}", "mean flip_ratio", "epochs", "status", "run"]
    for column in columns[:-1]:
        table.add_column(column, justify="left" if column == "status" else "right")
    # Whole run ids (other columns wrap first): they are what users copy.
    table.add_column("run", no_wrap=True, min_width=32)
    for row in result.rows:
        style = {"FINISHED": "green", "FAILED": "red", "RUNNING": "cyan"}.get(row.status, "")
        run = f"[link={row.link}]{row.run_id}[/link]" if row.link != row.run_id else row.run_id
        table.add_row(
            str(row.rank),
            f"{row.trial:03d}",
            *(format_value(row.swept.get(k)) for k in result.swept_keys),
            _fmt_metric(row.final),
            _fmt_metric(row.best),
            _fmt_ratio(row.mean_flip_ratio),
            str(row.epochs),
            f"[{style}]{row.status}[/]" if style else row.status,
            run,
        )
    return table


# ----------------------------------------------------------------------- grouping
def _configurations(
    trials: Sequence[TrialRecord], keys: Sequence[str]
) -> dict[tuple, list[TrialRecord]]:
    """Trials grouped by their swept values other than the seed (the seeds' runs)."""
    groups: dict[tuple, list[TrialRecord]] = {}
    for trial in trials:
        groups.setdefault(tuple(trial.swept.get(k) for k in keys), []).append(trial)
    return groups


def varied_keys(trials: Sequence[TrialRecord], keys: Sequence[str]) -> list[str]:
    """Swept keys (not the seed) that take more than one value."""
    return [k for k in keys if k != SEED_KEY and len({repr(t.swept.get(k)) for t in trials}) > 1]


def reference_value(key: str, values: Sequence[Any]) -> Any:
    """The value held fixed while the other parameters vary: the paper's when it is
    among the values, otherwise the middle one."""
    ordered = _sort_values(values)
    paper = PAPER_REFERENCE.get(key)
    if paper is not None:
        for value in ordered:
            if isinstance(value, (int, float)) and math.isclose(value, paper, rel_tol=1e-9):
                return value
    return ordered[(len(ordered) - 1) // 2]


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    present = [v for v in values if not math.isnan(v)]
    if not present:
        return math.nan, math.nan, 0
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return statistics.fmean(present), std, len(present)


def heatmaps(trials: Sequence[TrialRecord], keys: Sequence[str], metric: str) -> dict[str, Heatmap]:
    """Final metric and mean flip ratio over a 2-D grid of two swept parameters, or
    nothing when the sweep is not such a grid (one parameter, random search...)."""
    varied = varied_keys(trials, keys)
    if len(varied) != 2:
        return {}
    row_key, col_key = varied
    rows = _sort_values(t.swept.get(row_key) for t in trials)
    cols = _sort_values(t.swept.get(col_key) for t in trials)
    cells: dict[tuple, list[TrialRecord]] = {}
    for trial in trials:
        cells.setdefault((trial.swept.get(row_key), trial.swept.get(col_key)), []).append(trial)
    if len(cells) != len(rows) * len(cols):
        return {}  # scattered points (random search), not a grid
    out = {}
    for name, label, value, log_scale in (
        (f"final_{metric}", f"final {metric}", lambda t: t.final(metric), False),
        ("mean_flip_ratio", "mean flip ratio", lambda t: t.mean_flip_ratio, True),
    ):
        mean, std, count = [], [], []
        for r in rows:
            stats = [_mean_std([value(t) for t in cells.get((r, c), [])]) for c in cols]
            mean.append([s[0] for s in stats])
            std.append([s[1] for s in stats])
            count.append([s[2] for s in stats])
        out[name] = Heatmap(name, label, row_key, col_key, rows, cols, mean, std, count, log_scale)
    return out


# ----------------------------------------------------------------------- plotting
def _label(key: str) -> str:
    return key.removeprefix("hparams.")


def plot_value(value: Any) -> str:
    """Compact labels for figures: 1e-3 rather than 0.001."""
    if isinstance(value, float) and value != 0 and abs(value) < 0.1:
        text = f"{value:.0e}"  # one significant digit, when that is exact
        if not math.isclose(float(text), value, rel_tol=1e-9):
            return f"{value:.3g}"
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{int(exponent)}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _colours(n: int) -> list:
    if n <= len(OKABE_ITO):
        return OKABE_ITO[:n]
    from matplotlib import colormaps

    # More settings than the palette has colours: a perceptually ordered colour map.
    return [colormaps["cividis"](i / max(n - 1, 1)) for i in range(n)]


def _series(runs: Sequence[TrialRecord], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Per-epoch mean (and std) over the seeds' runs of one configuration."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in run.history.get(metric, []):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    stats = [_mean_std(by_step[s]) for s in steps]
    return [s + 1 for s in steps], [m for m, _, _ in stats], [sd for _, sd, _ in stats]


@dataclass(frozen=True)
class CurvePanel:
    """One column of the curves figure: ``key`` varied, the others held at ``fixed``."""

    key: str | None
    fixed: dict[str, Any]
    settings: list[tuple[str, list[TrialRecord]]]  # (legend label, the seeds' runs)


def curve_panels(
    trials: Sequence[TrialRecord], keys: Sequence[str], metric: str, mode: str
) -> list[CurvePanel]:
    varied = varied_keys(trials, keys)
    config_keys = [k for k in keys if k != SEED_KEY]
    groups = _configurations(trials, config_keys)
    reference = {k: reference_value(k, [t.swept.get(k) for t in trials]) for k in varied}
    panels = []
    for key in varied:
        fixed = {k: reference[k] for k in varied if k != key}
        chosen = {}
        for config, runs in groups.items():
            values = dict(zip(config_keys, config, strict=True))
            if all(values.get(k) == v for k, v in fixed.items()):
                chosen[values[key]] = runs
        if len(chosen) < 2:
            continue
        settings = [(plot_value(v), chosen[v]) for v in _sort_values(chosen)]
        panels.append(CurvePanel(key, fixed, settings))
    if panels:
        return panels
    # Not a grid (random search, or one setting): the best few settings together.
    sign = -1 if mode == "max" else 1

    def score(runs: list[TrialRecord]) -> float:
        best = statistics.fmean([r.best(metric, mode) for r in runs])
        return math.inf if math.isnan(best) else sign * best

    ranked = sorted(groups.items(), key=lambda item: score(item[1]))[: len(OKABE_ITO)]
    settings = []
    for config, runs in ranked:
        values = dict(zip(config_keys, config, strict=True))
        text = ", ".join(f"{_label(k)}={plot_value(values[k])}" for k in varied)
        settings.append((text or runs[0].run_name, runs))
    return [CurvePanel(None, {}, settings)]


def _save(figure, stem: Path) -> list[Path]:
    from PIL import Image  # matplotlib's own dependency

    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    # A 256-colour palette looks the same for flat plots and is a third of the size,
    # which matters for artifacts fetched by a browser and for images kept in git.
    image = Image.open(buffer).convert("RGB")
    palette = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette.save(paths[0], optimize=True)
    figure.savefig(paths[1], metadata={"Date": None})
    return paths


def plot_curves(panels: Sequence[CurvePanel], stem: Path, title: str, seeds: int) -> list[Path]:
    """Figure 1 of the paper: accuracy (train solid, validation dashed) above the log
    flip ratio, one column per swept parameter."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(5.2 * len(panels) + 0.6, 7.4), layout="constrained")
    axes = figure.subplots(2, len(panels), sharex="col", squeeze=False)
    for column, panel in enumerate(panels):
        accuracy_ax, flip_ax = axes[0][column], axes[1][column]
        colours = _colours(len(panel.settings))
        for colour, (label, runs) in zip(colours, panel.settings, strict=True):
            for metric, style in (("train_accuracy", "-"), ("val_accuracy", "--")):
                x, mean, std = _series(runs, metric)
                accuracy_ax.plot(x, mean, style, color=colour, linewidth=1.6)
                if len(runs) > 1:
                    low = [m - s for m, s in zip(mean, std, strict=True)]
                    high = [m + s for m, s in zip(mean, std, strict=True)]
                    accuracy_ax.fill_between(x, low, high, color=colour, alpha=0.12, lw=0)
            x, mean, std = _series(runs, "log_flip_ratio")
            flip_ax.plot(x, mean, "-", color=colour, linewidth=1.6, label=label)
            if len(runs) > 1:
                low = [m - s for m, s in zip(mean, std, strict=True)]
                high = [m + s for m, s in zip(mean, std, strict=True)]
                flip_ax.fill_between(x, low, high, color=colour, alpha=0.12, lw=0)
        if panel.key is None:
            heading = "best settings"
        else:
            held = ", ".join(f"{_label(k)} = {plot_value(v)}" for k, v in panel.fixed.items())
            heading = f"{_label(panel.key)} varied" + (f" ({held})" if held else "")
        accuracy_ax.set_title(heading, fontsize=11)
        accuracy_ax.set_ylabel("accuracy")
        accuracy_ax.grid(True, alpha=0.3)
        flip_ax.axhline(LOG_FLIP_FLOOR, color="0.55", linestyle=":", linewidth=1)
        flip_ax.set_ylabel("log flip ratio  π = ln(flip ratio + e⁻⁹)")
        flip_ax.set_xlabel("epoch")
        flip_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        flip_ax.grid(True, alpha=0.3)
        flip_ax.set_ylim(bottom=LOG_FLIP_FLOOR - 0.4)
        handles = [
            Line2D([], [], color=c, linewidth=2, label=label)
            for c, (label, _) in zip(colours, panel.settings, strict=True)
        ]
        handles += [
            Line2D([], [], color="0.3", linestyle="-", label="train"),
            Line2D([], [], color="0.3", linestyle="--", label="validation"),
        ]
        accuracy_ax.legend(
            handles=handles,
            title=_label(panel.key) if panel.key else None,
            loc="lower right",
            fontsize=9,
            title_fontsize=9,
            framealpha=0.9,
        )
        flip_ax.text(
            0.99,
            0.02,
            "floor: no flips",
            transform=flip_ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="0.45",
        )
    suffix = f", mean over {seeds} seeds (bands: ±1 std)" if seeds > 1 else ""
    figure.suptitle(title + suffix, fontsize=12)
    return _save(figure, stem)


def plot_heatmaps(maps: Sequence[Heatmap], stem: Path, title: str) -> list[Path]:
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.6 * len(maps), 4.8), layout="constrained")
    axes = figure.subplots(1, len(maps), squeeze=False)[0]
    for ax, heatmap in zip(axes, maps, strict=True):
        values = [v for row in heatmap.mean for v in row if not math.isnan(v)]
        positive = [v for v in values if v > 0]
        if heatmap.log_scale and positive:
            low, high = min(positive), max(positive)
            norm = LogNorm(vmin=low, vmax=high if high > low else low * 10)
            cmap = "cividis"
            # Zero (no flips at all) has no logarithm: shown at the low end.
            shown = [[max(v, low) if not math.isnan(v) else v for v in row] for row in heatmap.mean]
        else:
            low, high = (min(values), max(values)) if values else (0.0, 1.0)
            norm = Normalize(vmin=low, vmax=high if high > low else low + 1e-9)
            cmap = "viridis"
            shown = heatmap.mean
        image = ax.imshow(shown, cmap=cmap, norm=norm, aspect="auto")
        colourbar = figure.colorbar(image, ax=ax, shrink=0.9)
        colourbar.set_label(heatmap.label + (" (log scale)" if heatmap.log_scale else ""))
        ax.set_xticks(range(len(heatmap.col_values)))
        ax.set_xticklabels([plot_value(v) for v in heatmap.col_values])
        ax.set_yticks(range(len(heatmap.row_values)))
        ax.set_yticklabels([plot_value(v) for v in heatmap.row_values])
        ax.set_xlabel(_label(heatmap.col_key))
        ax.set_ylabel(_label(heatmap.row_key))
        ax.set_title(heatmap.label, fontsize=11)
        for i, row in enumerate(heatmap.mean):
            for j, value in enumerate(row):
                if math.isnan(value):
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=9, color="0.3")
                    continue
                text = f"{value:.2e}" if heatmap.log_scale else f"{value:.3f}"
                if heatmap.count[i][j] > 1:
                    spread = heatmap.std[i][j]
                    text += "\n± " + (f"{spread:.1e}" if heatmap.log_scale else f"{spread:.3f}")
                red, green, blue, _ = image.cmap(norm(max(value, norm.vmin)))
                luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="black" if luminance > 0.5 else "white",
                )
    figure.suptitle(title, fontsize=12)
    return _save(figure, stem)


# -------------------------------------------------------------------- the report
def _parent_metric(parent, spec_metric: tuple[str, str] | None) -> tuple[str, str]:
    params = parent.data.params
    name = params.get("metric.name") or (spec_metric[0] if spec_metric else "val_accuracy")
    mode = params.get("metric.mode") or (spec_metric[1] if spec_metric else "max")
    return name, mode if mode in ("max", "min") else "max"


def _log_to_parent(client, result: ReportResult) -> None:
    from mlflow.entities import Metric, RunTag

    run_id = result.parent_run_id
    # Only the report's own files, even when --out is a folder that holds others.
    with tempfile.TemporaryDirectory() as staging:
        for path in result.files:
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
    best = result.best
    if best is not None:
        now = int(time.time() * 1000)
        # The names the sweep runner logs at the end of a sweep: the report agrees with
        # them (a sweep still running gets them here first) and adds none of its own.
        for name, value in (
            (f"best_{result.metric}", best.best),
            (f"best_final_{result.metric}", best.final),
            ("best_mean_flip_ratio", best.mean_flip_ratio),
        ):
            current = parent.data.metrics.get(name)
            if not math.isnan(value) and (
                current is None or not math.isclose(current, value, rel_tol=1e-12)
            ):
                metrics.append(Metric(name, value, now, 0))
        for key, value in (
            ("bopsweep.best_trial", best.run_name),
            ("bopsweep.best_run_id", best.run_id),
        ):
            if parent.data.tags.get(key) != value:
                tags.append(RunTag(key, value))
    if metrics or tags:
        client.log_batch(run_id, metrics=metrics, tags=tags, synchronous=True)


def _check_store(uri: str) -> None:
    """A reachable server, or a local store that exists: opening a missing sqlite
    file would create an empty store where the user expected their sweeps."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").partition("?")[0])
        if not path.is_file():
            raise UserError(
                f"no MLflow store at {path}: run a sweep here first, or pass --tracking-uri "
                "(or set MLFLOW_TRACKING_URI) to where the sweep was tracked"
            )
    tracking.check_connection(uri)


def write_report(
    tracking_uri: str,
    name_or_spec: str | Path,
    out_dir: Path | None = None,
    *,
    log_to_parent: bool = True,
    parent_run_id: str | None = None,
) -> ReportResult:
    """Read a sweep back from MLflow and write its report; see the module docstring.

    ``name_or_spec`` is a sweep name (the parent run's ``bopsweep.sweep`` tag; the
    latest parent run when there are several) or a spec file. Files go to ``out_dir``
    (default ``./bopsweep_reports/<name>``): ``leaderboard.{csv,md,json}``,
    ``curves.{png,svg}`` and, for a 2-D grid, ``heatmaps.{png,svg}``. With
    ``log_to_parent`` they are also logged to the parent run under ``report/``.
    ``parent_run_id`` names the parent run outright (the sweep runner knows it),
    instead of looking the sweep up by name.
    """
    target = _target(name_or_spec)
    name = target.name
    _check_store(tracking_uri)
    client = tracking.client(tracking_uri)
    if parent_run_id is not None:
        parent = client.get_run(parent_run_id)
    else:
        parent = find_parent_run(client, name, target.experiment, tracking_uri)
    metric, mode = _parent_metric(parent, target.metric)
    experiment_id, parent_run_id = parent.info.experiment_id, parent.info.run_id
    trials = load_trials(client, experiment_id, parent_run_id, metric)
    if not trials:
        raise UserError(
            f"sweep {name!r} (parent run {parent_run_id}) has no trial runs yet: nothing to report"
        )
    keys = swept_key_order(trials)
    out = Path(out_dir) if out_dir is not None else Path(DEFAULT_REPORT_ROOT) / name
    out.mkdir(parents=True, exist_ok=True)
    result = ReportResult(
        sweep=name,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        metric=metric,
        mode=mode,
        swept_keys=keys,
        rows=leaderboard(
            trials, metric, mode, lambda run_id: run_link(tracking_uri, experiment_id, run_id)
        ),
        heatmaps=heatmaps(trials, keys, metric),
        out_dir=out,
        files=[],
    )
    files = {
        "leaderboard.csv": leaderboard_csv(result.rows, metric, keys),
        "leaderboard.md": leaderboard_markdown(result),
        TABLE_FILE: json.dumps(leaderboard_table_json(result.rows, metric, keys), indent=1),
    }
    for file_name, text in files.items():
        (out / file_name).write_text(text, encoding="utf-8")
        result.files.append(out / file_name)
    seeds = max(
        len(runs) for runs in _configurations(trials, [k for k in keys if k != SEED_KEY]).values()
    )
    panels = curve_panels(trials, keys, metric, mode)
    if any(run.history for run in trials):
        title = f"{name}: accuracy (train solid, validation dashed) and log flip ratio"
        result.files += plot_curves(panels, out / "curves", title, seeds)
    if result.heatmaps:
        first = next(iter(result.heatmaps.values()))
        title = f"{name}: over the {_label(first.row_key)} × {_label(first.col_key)} grid"
        if seeds > 1:
            title += f" (mean ± std over {seeds} seeds)"
        result.files += plot_heatmaps(list(result.heatmaps.values()), out / "heatmaps", title)
    if log_to_parent:
        _log_to_parent(client, result)
        result.logged_to_parent = True
    return result
