"""A finished sweep and its report, seen the way people see them: in the MLflow UI.

A real sweep runs against a real ``mlflow server``, ``bopsweep report`` logs its
report, then headless Chromium (Debian's, driven by Playwright) opens the experiment,
finds the parent run and its trials by name, and the report files in the parent run's
artifacts. Screenshots land in ``test-artifacts/report_browser/`` at the repository
root (git-ignored).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import REPO, bopsweep, sweep_file

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # the React app renders after several API round trips
SCREENSHOTS = REPO / "test-artifacts" / "report_browser"
GRID = [
    "--set",
    "parameters.hparams.threshold.values=[0,1e-6]",
    "--set",
    "parameters.hparams.gamma.values=[1e-3,1e-4]",
    "--set",
    "train.epochs=2",
    "--set",
    "resources.cpu=1",
]
TRIALS = [
    "trial_000 threshold=0 gamma=0.001",
    "trial_001 threshold=0 gamma=0.0001",
    "trial_002 threshold=1e-06 gamma=0.001",
    "trial_003 threshold=1e-06 gamma=0.0001",
]
REPORT_FILES = [
    # A threshold x gamma grid: the paper's section 5.1 findings checked.
    "claims.json",
    "curves.png",
    "curves.svg",
    "heatmaps.png",
    "heatmaps.svg",
    "leaderboard.csv",
    "leaderboard.json",
    "leaderboard.md",
]


@pytest.fixture(scope="module")
def browser():
    # A missing browser fails (not skips): the UI check would silently never run.
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium`"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: pip install -e '.[test]' (never `playwright install`)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    print(f"\nscreenshots of the MLflow UI: {SCREENSHOTS}")
    return SCREENSHOTS


def test_report_in_the_mlflow_ui(mlflow_server, workdir, browser, screenshots):
    uri = mlflow_server.uri
    run = bopsweep("run", sweep_file("quickstart.yaml"), *GRID, "--tracking-uri", uri, cwd=workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = next(
        line.removeprefix("MLflow: ")
        for line in run.stdout.splitlines()
        if line.startswith("MLflow: ")
    )

    unknown = bopsweep("report", "no-such-sweep", "--tracking-uri", uri, cwd=workdir)
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    assert "no sweep named 'no-such-sweep'" in unknown.stderr
    assert "quickstart" in unknown.stderr.split("sweeps there:")[1]

    made = bopsweep("report", "quickstart", "--tracking-uri", uri, cwd=workdir)
    assert made.returncode == 0, made.stderr[-3000:]
    assert "quickstart: leaderboard by val_accuracy (max)" in made.stdout
    folder = workdir / "bopsweep_reports" / "quickstart"
    assert sorted(p.name for p in folder.iterdir()) == REPORT_FILES

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quickstart")
    parents = client.search_runs(
        [experiment.experiment_id],
        "tags.`bopsweep.role` = 'sweep'",
        order_by=["attributes.start_time DESC"],
    )
    parent = parents[0]
    exp_id, parent_id = experiment.experiment_id, parent.info.run_id
    assert f"{uri}/#/experiments/{exp_id}/runs/{parent_id}" in made.stdout
    logged = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert logged == {f"report/{name}" for name in REPORT_FILES}

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        _check_ui(page, uri, exp_id, parent_id, printed, screenshots)
    except Exception:
        page.screenshot(path=str(screenshots / "failure.png"), full_page=True)
        raise
    finally:
        page.close()


def _shot(page, path: Path, full_page: bool = False) -> None:
    """A screenshot without the UI's chat panel, which takes a third of the width
    (closed when it is there: other MLflow versions have none)."""
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    with contextlib.suppress(Exception):
        if close.first.is_visible():
            close.first.click(timeout=5_000)
    page.screenshot(path=str(path), full_page=full_page)


def _check_ui(page, uri: str, exp_id: str, parent_id: str, printed: str, shots: Path) -> None:
    # The link `bopsweep run` printed opens the runs table ("Model training" view),
    # not MLflow 3's GenAI overview: the parent run, then its trials, which the
    # table nests under the parent until the row is expanded.
    assert printed == f"{uri}/#/experiments/{exp_id}?workflowType=machine_learning"
    page.goto(printed, wait_until="domcontentloaded")
    parent_cell = page.get_by_role("gridcell").filter(
        has=page.get_by_role("link", name="quickstart", exact=True)
    )
    parent_cell.first.wait_for()
    page.wait_for_function(f"() => location.hash.includes('/experiments/{exp_id}/runs')")
    first_trial = page.get_by_role("link", name=TRIALS[0], exact=True)
    if not first_trial.is_visible():
        parent_cell.first.get_by_role("button").first.click()  # the expand (+) button
    for name in TRIALS:
        page.get_by_role("link", name=name, exact=True).wait_for()
    # Each trial's dataset input is in the table's Dataset column.
    page.get_by_text(re.compile(r"^digits \([0-9a-f]{8}\)$")).first.wait_for()
    _shot(page, shots / "1_runs_table.png")

    # The parent run's page, by its link in the table.
    parent_link = page.get_by_role("gridcell").get_by_role("link", name="quickstart", exact=True)
    assert parent_link.first.get_attribute("href").endswith(f"/runs/{parent_id}")
    parent_link.first.click()
    page.wait_for_function(f"() => location.hash.includes('/runs/{parent_id}')")
    page.get_by_text(parent_id, exact=True).first.wait_for()
    for name in TRIALS:  # listed under "Child runs"
        page.get_by_text(re.compile(re.escape(name))).first.wait_for()
    _shot(page, shots / "2_parent_run.png", full_page=True)

    # Its artifacts: the report/ folder and every file in it; the figures render.
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("report", exact=True).first.click()
    for name in REPORT_FILES:
        page.get_by_text(name, exact=True).first.wait_for()
    _shot(page, shots / "3_artifacts.png")
    for name in ("curves.png", "heatmaps.png"):
        page.get_by_text(name, exact=True).first.click()
        page.get_by_text(f"report/{name}", exact=True).first.wait_for()
        preview = page.locator("img[src^='blob:']").first
        preview.wait_for()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 600", arg=preview.element_handle()
        )
        _shot(page, shots / f"4_artifact_{name}")
    page.get_by_text("leaderboard.csv", exact=True).first.click()
    page.get_by_text("report/leaderboard.csv", exact=True).first.wait_for()
    page.get_by_text("FINISHED", exact=True).first.wait_for()  # rendered as a table
    _shot(page, shots / "5_artifact_leaderboard.png")
