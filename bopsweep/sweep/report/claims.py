"""The paper's section 5.1 findings, checked against a threshold x gamma sweep.

Section 5.1 of Helwegen et al. (2019) varies Bop's threshold and gamma and finds that
(1) more flips happen per step with a higher gamma, (2) fewer with a higher
threshold, and (3) the aggressive settings (gamma 1e-2, threshold 0) end with a
lower and noisier validation accuracy. For a sweep over both hparams, each finding
is stated as reproduced or not, with the statistic behind it:

* flips vs gamma (threshold): Spearman's rank correlation of a trial's mean flip
  ratio with gamma (threshold), within each row of the grid where the other
  parameter (and the seed) is fixed. Reproduced when it has the paper's sign in
  every row; the mean over rows is the figure reported.
* the aggressive settings: trials at the highest gamma or the lowest threshold
  against the rest, by their validation accuracy over the last quarter of their
  epochs (at least 3): its mean ("end accuracy") and its standard deviation
  ("noise"). Reproduced when the aggressive trials' mean end accuracy is lower
  (and their mean noise higher) than the others'.

Spearman's rho is Pearson's correlation of the ranks (ties share their mean rank),
a few lines of numpy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from bopsweep.sweep.outcome import FLIP_METRIC, SweepOutcome, TrialOutcome, format_value
from bopsweep.sweep.report.grid import SEED_KEY

GAMMA = "hparams.gamma"
THRESHOLD = "hparams.threshold"
ACCURACY = "val_accuracy"
CLAIMS_FILE = "claims.json"


@dataclass(frozen=True)
class Claim:
    """One finding of the paper, as this sweep bears it out (or not)."""

    key: str  # machine name, e.g. "flips_rise_with_gamma"
    finding: str  # the paper's finding, in words
    reproduced: bool
    value: float  # the figure the verdict rests on (rho, or a difference)
    statistic: str  # how that figure was computed, with the numbers

    @property
    def verdict(self) -> str:
        return "reproduced" if self.reproduced else "not reproduced"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation; NaN when either side is constant."""
    import numpy as np  # here: the live table imports this package and must stay light

    def ranks(values: list[float]):
        a = np.asarray(values, dtype=np.float64)
        order = a.argsort(kind="stable")
        out = np.empty(len(a))
        out[order] = np.arange(1, len(a) + 1)
        for value in np.unique(a):
            tied = a == value
            out[tied] = out[tied].mean()
        return out

    if len(x) < 2:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def _tail(trial: TrialOutcome, metric: str) -> list[float]:
    values = [v for v in trial.values(metric) if not math.isnan(v)]
    count = max(3, math.ceil(len(values) / 4))
    return values[-count:]


def _within_rows(trials: list[TrialOutcome], varied: str, fixed: str) -> list[float]:
    """rho(varied, mean flip ratio) in each row of trials sharing ``fixed`` and seed."""
    rows: dict[tuple, list[TrialOutcome]] = {}
    for trial in trials:
        rows.setdefault((trial.swept.get(fixed), trial.swept.get(SEED_KEY)), []).append(trial)
    return [
        spearman([t.swept[varied] for t in row], [t.mean_flip_ratio for t in row])
        for row in rows.values()
        if len({t.swept[varied] for t in row}) > 1
    ]


def _flip_claim(trials, varied: str, fixed: str, sign: int) -> Claim | None:
    import numpy as np

    rhos = _within_rows(trials, varied, fixed)
    if not rhos:
        return None
    name, other = varied.removeprefix("hparams."), fixed.removeprefix("hparams.")
    agree = sum(not math.isnan(r) and r * sign > 0 for r in rhos)
    seeds = len({t.swept.get(SEED_KEY) for t in trials})
    rows = f"{other}{' x seed' if seeds > 1 else ''}"
    mean = float(np.nanmean(rhos)) if any(not math.isnan(r) for r in rhos) else math.nan
    direction = "rise" if sign > 0 else "fall"
    return Claim(
        key=f"flips_{direction}_with_{name}",
        finding=f"flips per step {direction} with {name}",
        reproduced=agree == len(rhos),
        value=mean,
        statistic=(
            f"Spearman rho(mean flip ratio, {name}) {'>' if sign > 0 else '<'} 0 in "
            f"{agree} of {len(rhos)} rows (fixed {rows}); mean rho {mean:+.2f}"
        ),
    )


def _aggressive_claims(trials, metric: str) -> list[Claim]:
    import numpy as np

    scored = [t for t in trials if len(_tail(t, metric)) >= 2]
    if not scored:
        return []
    top_gamma = max(t.swept[GAMMA] for t in scored)
    low_threshold = min(t.swept[THRESHOLD] for t in scored)
    aggressive = [
        t for t in scored if t.swept[GAMMA] == top_gamma or t.swept[THRESHOLD] == low_threshold
    ]
    rest = [t for t in scored if t not in aggressive]
    if not aggressive or not rest:
        return []
    corner = [
        t for t in scored if t.swept[GAMMA] == top_gamma and t.swept[THRESHOLD] == low_threshold
    ]

    def end(group) -> float:
        return float(np.mean([np.mean(_tail(t, metric)) for t in group]))

    def noise(group) -> float:
        return float(np.mean([np.std(_tail(t, metric)) for t in group]))

    where = f"gamma {format_value(top_gamma)} or threshold {format_value(low_threshold)}"

    def corner_note(measure) -> str:
        if not corner:
            return ""
        at = f"gamma {format_value(top_gamma)}, threshold {format_value(low_threshold)}"
        return f"; the corner ({at}) alone: {measure(corner):.4f}"

    tail = "the last quarter of the epochs (at least 3)"
    lower = end(aggressive) - end(rest)
    noisier = noise(aggressive) - noise(rest)
    return [
        Claim(
            key="aggressive_end_lower",
            finding=f"{where} end with a lower {metric}",
            reproduced=lower < 0,
            value=lower,
            statistic=(
                f"mean {metric} over {tail}: {end(aggressive):.4f} ({len(aggressive)} trials) "
                f"vs {end(rest):.4f} (the other {len(rest)})" + corner_note(end)
            ),
        ),
        Claim(
            key="aggressive_end_noisier",
            finding=f"{where} end with a noisier {metric}",
            reproduced=noisier > 0,
            value=noisier,
            statistic=(
                f"std of {metric} over {tail}: {noise(aggressive):.4f} vs {noise(rest):.4f}"
                + corner_note(noise)
            ),
        ),
    ]


def _bopsweep_names(trial: TrialOutcome) -> TrialOutcome:
    """The trial with gamma swept under the original code's name (``gamma_start``)
    read as ``hparams.gamma``."""
    if GAMMA in trial.swept or "hparams.gamma_start" not in trial.swept:
        return trial
    swept = {k.replace("hparams.gamma_start", GAMMA): v for k, v in trial.swept.items()}
    return replace(trial, swept=swept)


def section51_claims(outcome: SweepOutcome) -> list[Claim]:
    """The section 5.1 findings for a grid over gamma and threshold (with seeds or any
    other swept keys); empty for any other sweep."""
    trials = [
        t
        for t in map(_bopsweep_names, outcome.trials)
        if isinstance(t.swept.get(GAMMA), (int, float))
        and isinstance(t.swept.get(THRESHOLD), (int, float))
        and t.values(FLIP_METRIC)
    ]
    gammas = {t.swept[GAMMA] for t in trials}
    thresholds = {t.swept[THRESHOLD] for t in trials}
    cells = {(t.swept[GAMMA], t.swept[THRESHOLD]) for t in trials}
    # A grid: every gamma with every threshold (random search scatters its points).
    if len(gammas) < 2 or len(thresholds) < 2 or len(cells) < len(gammas) * len(thresholds):
        return []
    claims = [
        _flip_claim(trials, GAMMA, THRESHOLD, +1),
        _flip_claim(trials, THRESHOLD, GAMMA, -1),
    ]
    metric = ACCURACY if any(t.values(ACCURACY) for t in trials) else outcome.metric
    return [c for c in claims if c is not None] + _aggressive_claims(trials, metric)


# ---------------------------------------------------------------- renderings
def claims_markdown(claims: list[Claim]) -> str:
    if not claims:
        return ""
    lines = [
        "## Paper section 5.1: findings checked",
        "",
        "| finding | verdict | statistic |",
        "|---|---|---|",
    ]
    lines += [f"| {c.finding} | {c.verdict} | {c.statistic} |" for c in claims]
    return "\n".join(lines) + "\n"


def claims_table(claims: list[Claim]):
    """The findings as a rich table for the terminal."""
    from rich.table import Table

    table = Table(title="Paper section 5.1: findings checked", title_justify="left")
    for header in ("finding", "verdict", "statistic"):
        table.add_column(header)
    for claim in claims:
        style = "green" if claim.reproduced else "red"
        table.add_row(claim.finding, f"[{style}]{claim.verdict}[/]", claim.statistic)
    return table


def claims_metrics(claims: list[Claim]) -> dict[str, float]:
    """The figures, as the parent run's metrics (``claim.<key>``)."""
    return {f"claim.{c.key}": c.value for c in claims if not math.isnan(c.value)}


def claims_tags(claims: list[Claim]) -> dict[str, str]:
    """The verdicts, as the parent run's tags (``bopsweep.claim.<key>``)."""
    return {f"bopsweep.claim.{c.key}": c.verdict for c in claims}
