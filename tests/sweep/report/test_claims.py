"""The paper's section 5.1 findings, checked on synthetic sweeps whose answer is known,
and on the report of a real MLflow store (leaderboard.md, claims.json, parent run)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from bopsweep.sweep.outcome import SweepOutcome, TrialOutcome
from bopsweep.sweep.report.claims import claims_table, section51_claims, spearman

THRESHOLDS = [0.0, 1e-6, 1e-5]
GAMMAS = [1e-2, 1e-3, 1e-4]


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 4, 9).tolist()
        y = rng.normal(size=9).tolist()
        expected = stats.spearmanr(x, y).statistic
        assert spearman(x, y) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert spearman([1e-4, 1e-3, 1e-2], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def _trial(index, threshold, gamma, seed, *, flips, accuracy, noise, epochs=16) -> TrialOutcome:
    swept = {"hparams.threshold": threshold, "hparams.gamma": gamma}
    if seed is not None:
        swept["seed"] = seed
    # The last quarter (4 epochs) averages to accuracy, with standard deviation noise.
    wobble = [noise * (-1) ** e for e in range(epochs)]
    return TrialOutcome(
        index=index,
        swept=swept,
        status="FINISHED",
        history={
            "flip_ratio": [(e, flips) for e in range(epochs)],
            "val_accuracy": [(e, accuracy + wobble[e]) for e in range(epochs)],
        },
    )


def _grid(seeds=(None,), *, paper: bool = True) -> SweepOutcome:
    """A 3x3 grid shaped like the quickstart's result when ``paper``, else the reverse
    of every finding."""
    trials = []
    for threshold in THRESHOLDS:
        for gamma in GAMMAS:
            for seed in seeds:
                flips = gamma / (1 + threshold * 1e6) * (1 + 0.01 * (seed or 0))
                aggressive = gamma == 1e-2 or threshold == 0.0
                if not paper:
                    flips = 1 / flips
                    aggressive = not aggressive
                trials.append(
                    _trial(
                        len(trials),
                        threshold,
                        gamma,
                        seed,
                        flips=flips,
                        accuracy=0.9 if aggressive else 0.97,
                        noise=0.05 if aggressive else 0.005,
                    )
                )
    return SweepOutcome(
        "grid", "val_accuracy", "max", "sqlite:///x.db", "0", "p" * 32, None, trials
    )


def test_a_sweep_like_the_papers_reproduces_every_finding():
    claims = {c.key: c for c in section51_claims(_grid())}
    assert list(claims) == [
        "flips_rise_with_gamma",
        "flips_fall_with_threshold",
        "aggressive_end_lower",
        "aggressive_end_noisier",
    ]
    assert all(c.reproduced for c in claims.values())
    assert claims["flips_rise_with_gamma"].value == pytest.approx(1.0)
    assert claims["flips_fall_with_threshold"].value == pytest.approx(-1.0)
    assert "in 3 of 3 rows (fixed threshold)" in claims["flips_rise_with_gamma"].statistic
    # 5 aggressive trials (gamma 0.01 or threshold 0) at 0.9 against 4 at 0.97.
    lower = claims["aggressive_end_lower"]
    assert lower.value == pytest.approx(0.9 - 0.97)
    assert "0.9000 (5 trials) vs 0.9700 (the other 4)" in lower.statistic
    assert "the corner (gamma 0.01, threshold 0) alone: 0.9000" in lower.statistic
    assert lower.finding == "gamma 0.01 or threshold 0 end with a lower val_accuracy"
    assert claims["aggressive_end_noisier"].value == pytest.approx(0.05 - 0.005)


def test_the_reverse_of_every_finding_is_not_reproduced():
    claims = section51_claims(_grid(paper=False))
    assert [c.verdict for c in claims] == ["not reproduced"] * 4
    assert "in 0 of 3 rows" in claims[0].statistic


def test_with_seeds_every_seed_is_a_row():
    claims = section51_claims(_grid(seeds=(0, 1)))
    assert "in 6 of 6 rows (fixed threshold x seed)" in claims[0].statistic
    assert "in 6 of 6 rows (fixed gamma x seed)" in claims[1].statistic
    # One seed against the paper: not reproduced, and the count says where.
    outcome = _grid(seeds=(0, 1))
    for trial in outcome.trials:
        if trial.swept["seed"] == 1 and trial.swept["hparams.threshold"] == 1e-5:
            gamma = trial.swept["hparams.gamma"]
            trial.history["flip_ratio"] = [(e, 1 / gamma) for e in range(16)]
    rise = section51_claims(outcome)[0]
    assert not rise.reproduced and "in 5 of 6 rows" in rise.statistic


def test_only_a_threshold_by_gamma_grid_has_claims():
    grid = _grid()
    one_d = [t for t in grid.trials if t.swept["hparams.threshold"] == 1e-6]
    assert (
        section51_claims(SweepOutcome("g", "val_accuracy", "max", "", "0", "p", trials=one_d)) == []
    )
    scattered = [t for t in grid.trials if t.index in (0, 4, 8)]  # the diagonal: no grid
    assert (
        section51_claims(SweepOutcome("g", "val_accuracy", "max", "", "0", "p", trials=scattered))
        == []
    )


def test_terminal_table():
    from rich.console import Console

    console = Console(width=250, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(claims_table(section51_claims(_grid())))
    text = console.export_text()
    assert "Paper section 5.1: findings checked" in text
    assert text.count("reproduced") == 4 and "not reproduced" not in text


def test_the_report_states_the_findings_in_its_files_and_the_parent_run(store, grid_report):
    # The store's grid: flips rise with gamma and fall with threshold; every trial's
    # accuracy wobbles the same, so "noisier" is not reproduced.
    verdicts = {c.key: c.verdict for c in grid_report.claims}
    assert verdicts == {
        "flips_rise_with_gamma": "reproduced",
        "flips_fall_with_threshold": "reproduced",
        "aggressive_end_lower": "reproduced",
        "aggressive_end_noisier": "not reproduced",
    }
    markdown = (grid_report.out_dir / "leaderboard.md").read_text()
    assert "## Paper section 5.1: findings checked" in markdown
    assert "| flips per step rise with gamma | reproduced | Spearman rho" in markdown
    assert "in 6 of 6 rows (fixed threshold x seed)" in markdown
    saved = json.loads((grid_report.out_dir / "claims.json").read_text())
    assert [c["key"] for c in saved] == list(verdicts)
    parent = store.client.get_run(grid_report.outcome.parent_run_id)
    for key, verdict in verdicts.items():
        assert parent.data.tags[f"bopsweep.claim.{key}"] == verdict
    assert parent.data.metrics["claim.flips_rise_with_gamma"] == pytest.approx(1.0)
    assert parent.data.metrics["claim.aggressive_end_noisier"] == pytest.approx(0.0, abs=1e-12)
    artifacts = {f.path for f in store.client.list_artifacts(parent.info.run_id, "report")}
    assert "report/claims.json" in artifacts


def test_gamma_swept_under_the_original_name():
    outcome = _grid()
    for trial in outcome.trials:
        trial.swept["hparams.gamma_start"] = trial.swept.pop("hparams.gamma")
    assert [c.verdict for c in section51_claims(outcome)] == ["reproduced"] * 4
