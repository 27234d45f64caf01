"""The report's figures: curves laid out like Figure 1 of the paper, and heatmaps.

The curves follow Figure 1 of Helwegen et al. (2019): per setting, training accuracy
(solid) and validation accuracy (dashed) over the epochs, above the log flip ratio
``pi = log(flip ratio + e^-9)``; one group of panels per swept parameter, the other
parameters held at one value (the paper's threshold 1e-6 / gamma 1e-3 when swept,
otherwise the middle value). A 2-D grid also gets heatmaps of the final metric and
the mean flip ratio. With seeds, curves and cells are means over seeds.

What to draw (:func:`curve_panels`, :func:`heatmaps`) is computed apart from the
drawing, so it can be checked number by number; matplotlib is imported only by the
functions that draw.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bopsweep.sweep.outcome import SweepOutcome, TrialOutcome
from bopsweep.sweep.report.grid import (
    configurations,
    reference_value,
    seed_count,
    setting_keys,
    sort_values,
    varied_keys,
)

# Okabe & Ito's palette, distinguishable with the common colour-vision deficiencies;
# ordered so that the first few colours also differ in lightness, and without the
# yellow, which is unreadable as a thin line on white.
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
LOG_FLIP_FLOOR = -9.0  # pi when nothing flips: log(e^-9)
# The histories the curves draw, besides the sweep's own metric.
CURVE_METRICS = ("train_accuracy", "val_accuracy", "log_flip_ratio")
# The paper's Figure 1 quantity: the last binary layer's log flip ratio per optimizer
# step (the trainer's per-step series). The curves use it where the runs have it (the
# report reads it for the runs it draws only: hundreds of points per epoch), and the
# epoch means of all binary weights (``log_flip_ratio``) otherwise.
STEP_FLIP_METRIC = "log_flip_ratio_last"


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


@dataclass(frozen=True)
class CurvePanel:
    """One column of the curves figure: ``key`` varied, the others held at ``fixed``."""

    key: str | None
    fixed: dict[str, Any]
    settings: list[tuple[str, list[TrialOutcome]]]  # (legend label, the seeds' runs)


# ------------------------------------------------------------------ what to draw
def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    present = [v for v in values if not math.isnan(v)]
    if not present:
        return math.nan, math.nan, 0
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return statistics.fmean(present), std, len(present)


def heatmaps(outcome: SweepOutcome, keys: Sequence[str]) -> dict[str, Heatmap]:
    """Final metric and mean flip ratio over a 2-D grid of two swept parameters, or
    nothing when the sweep is not such a grid (one parameter, random search...)."""
    trials, metric = outcome.trials, outcome.metric
    varied = varied_keys(trials, keys)
    if len(varied) != 2:
        return {}
    row_key, col_key = varied
    rows = sort_values(t.swept.get(row_key) for t in trials)
    cols = sort_values(t.swept.get(col_key) for t in trials)
    cells = configurations(trials, varied)
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


def curve_panels(outcome: SweepOutcome, keys: Sequence[str]) -> list[CurvePanel]:
    """The columns of the curves figure: one per swept parameter of a grid, the
    others held at their reference value; else the best few settings together."""
    trials = outcome.trials
    varied = varied_keys(trials, keys)
    config_keys = setting_keys(keys)
    groups = configurations(trials, config_keys)
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
        settings = [(plot_value(v), chosen[v]) for v in sort_values(chosen)]
        panels.append(CurvePanel(key, fixed, settings))
    if panels:
        return panels
    # Not a grid (random search, or one setting): the best few settings together.
    sign = -1 if outcome.mode == "max" else 1

    def score(runs: list[TrialOutcome]) -> float:
        best = statistics.fmean([r.best(outcome.metric, outcome.mode) for r in runs])
        return math.inf if math.isnan(best) else sign * best

    ranked = sorted(groups.items(), key=lambda item: score(item[1]))[: len(OKABE_ITO)]
    settings = []
    for config, runs in ranked:
        values = dict(zip(config_keys, config, strict=True))
        text = ", ".join(f"{_label(k)}={plot_value(values[k])}" for k in varied)
        settings.append((text or runs[0].name, runs))
    return [CurvePanel(None, {}, settings)]


# ----------------------------------------------------------------------- drawing
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


def _series(
    runs: Sequence[TrialOutcome], metric: str
) -> tuple[list[int], list[float], list[float]]:
    """Per-epoch mean (and std) over the seeds' runs of one configuration."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in run.history.get(metric, []):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    stats = [_mean_std(by_step[s]) for s in steps]
    return [s + 1 for s in steps], [m for m, _, _ in stats], [sd for _, sd, _ in stats]


def _step_series(runs: Sequence[TrialOutcome]):
    """The per-step series' mean (and std) over the seeds' runs, its x in epochs
    (step k of an epoch of S steps at epoch + (k + 1) / S); None when a run lacks it."""
    if not runs or not all(run.history.get(STEP_FLIP_METRIC) for run in runs):
        return None
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in run.history[STEP_FLIP_METRIC]:
            by_step.setdefault(step, []).append(value)
    epochs = max(len(run.history.get("log_flip_ratio", [])) for run in runs)
    steps = sorted(by_step)
    per_epoch = (steps[-1] + 1) / epochs if epochs else 1.0
    stats = [_mean_std(by_step[s]) for s in steps]
    x = [(s + 1) / per_epoch for s in steps]
    return x, [m for m, _, _ in stats], [sd for _, sd, _ in stats]


def import_plotting() -> None:
    """Import what drawing needs (about 0.7 s of CPU), so that a caller can do it
    before the figures are wanted: a sweep does it while its trials train."""
    import matplotlib.backends.backend_agg
    import matplotlib.backends.backend_svg  # noqa: F401
    from matplotlib import colormaps, colors, figure, lines, ticker  # noqa: F401
    from PIL import Image  # noqa: F401


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
    # The layout is the PNG's: computing it again for the SVG (text extents of every
    # tick label) would double the drawing time at the end of every sweep.
    figure.set_layout_engine("none")
    figure.savefig(paths[1], metadata={"Date": None})
    return paths


def plot_curves(panels: Sequence[CurvePanel], stem: Path, title: str, seeds: int) -> list[Path]:
    """Figure 1 of the paper: accuracy (train solid, validation dashed) above the log
    flip ratio, one column per swept parameter. Writes ``stem.png`` and ``stem.svg``."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(5.2 * len(panels) + 0.6, 7.4), layout="constrained")
    axes = figure.subplots(2, len(panels), sharex="col", squeeze=False)
    for column, panel in enumerate(panels):
        accuracy_ax, flip_ax = axes[0][column], axes[1][column]
        colours = _colours(len(panel.settings))
        per_step = all(_step_series(runs) is not None for _, runs in panel.settings)
        for colour, (label, runs) in zip(colours, panel.settings, strict=True):
            for metric, style in (("train_accuracy", "-"), ("val_accuracy", "--")):
                x, mean, std = _series(runs, metric)
                accuracy_ax.plot(x, mean, style, color=colour, linewidth=1.6)
                if len(runs) > 1:
                    low = [m - s for m, s in zip(mean, std, strict=True)]
                    high = [m + s for m, s in zip(mean, std, strict=True)]
                    accuracy_ax.fill_between(x, low, high, color=colour, alpha=0.12, lw=0)
            x, mean, std = _step_series(runs) if per_step else _series(runs, "log_flip_ratio")
            width = 0.9 if per_step else 1.6
            flip_ax.plot(x, mean, "-", color=colour, linewidth=width, label=label)
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
        flip_ax.set_ylabel(
            "last layer, per step:  π = ln(flip ratio + e⁻⁹)"
            if per_step
            else "log flip ratio  π = ln(flip ratio + e⁻⁹)"
        )
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
    """The heatmaps side by side, each cell annotated with its mean (± std over
    seeds). Writes ``stem.png`` and ``stem.svg``."""
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


# -------------------------------------------------------------------- the files
def write_figures(
    outcome: SweepOutcome, keys: Sequence[str], out_dir: Path
) -> tuple[dict[str, Heatmap], list[Path]]:
    """Draw the curves (when any trial has a history) and, for a 2-D grid, the
    heatmaps into ``out_dir``; returns the heatmaps and the files written."""
    seeds = seed_count(outcome.trials, keys)
    files: list[Path] = []
    if any(trial.history for trial in outcome.trials):
        title = f"{outcome.name}: accuracy (train solid, validation dashed) and log flip ratio"
        files += plot_curves(curve_panels(outcome, keys), out_dir / "curves", title, seeds)
    maps = heatmaps(outcome, keys)
    if maps:
        first = next(iter(maps.values()))
        title = f"{outcome.name}: over the {_label(first.row_key)} × {_label(first.col_key)} grid"
        if seeds > 1:
            title += f" (mean ± std over {seeds} seeds)"
        files += plot_heatmaps(list(maps.values()), out_dir / "heatmaps", title)
    return maps, files
