"""The sweep commands: ``plan``, ``schema``, ``run``, ``sync`` and ``submit``, and how a
sweep's plan and outcome are printed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bopsweep.cli.app import _make_console, _print_json, app, console
from bopsweep.errors import UserError

# ------------------------------------------------------------------------------ sweeps
SpecArg = Annotated[Path, typer.Argument(help="A sweep spec (YAML), e.g. sweeps/quickstart.yaml.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a spec key by dot path, repeatable: --set train.epochs=1 "
        "--set resources.gpu=0.25 --set parameters.hparams.gamma.values=[1e-3,1e-4]",
    ),
]


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (text goes to stderr).")
]
TRACKING_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
ExperimentOpt = Annotated[
    str | None,
    typer.Option(
        envvar=EXPERIMENT_ENV,
        show_envvar=True,
        help="MLflow experiment of the sweep (default: the spec's tracking.experiment, then "
        "its name). An explicit --set tracking.experiment=... wins over both.",
    ),
]


def _experiment_override(experiment: str | None) -> list[str]:
    # JSON quoting keeps a name like "2024" a string once read as YAML.
    return [f"tracking.experiment={json.dumps(experiment)}"] if experiment else []


def _value_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@app.command()
def plan(spec: SpecArg, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Validate a sweep spec and show its trials, without starting anything.

    Editors check and complete specs with the JSON Schema in sweeps/schema.json
    (`bopsweep schema` prints it).
    """
    from bopsweep.sweep.fusion import plan_groups
    from bopsweep.sweep.spec import SCHEMA_FILE, expand, load_spec, max_epochs, stopping_summary

    loaded = load_spec(spec, set_ or [])
    trials = expand(loaded)
    s = loaded.spec
    groups = plan_groups(s, trials)
    ray_trial = {t.index: g.dirname for g in groups for t in g.trials}
    alone_reason = {t.index: g.alone for g in groups for t in g.trials}
    total_epochs = sum(t.train.resolved_hparams().epochs for t in trials)
    stopping = s.stopping
    # When trials may be stopped early: the epochs of W&B's cut points or ASHA's rungs.
    early = stopping_summary(stopping, max_epochs(s, trials))
    if as_json:
        _print_json(
            {
                "name": s.name,
                "description": s.description,
                "method": s.method,
                "trials": len(trials),
                "trial_epochs": total_epochs,
                "search_space": {k: p.describe() for k, p in s.parameters.items()},
                # With method: bayes the searcher proposes the values as the sweep
                # runs: each trial lists the values known now (fixed ones, the seed).
                "planned": [
                    {
                        "index": t.index,
                        "name": t.name,
                        "swept": t.swept,
                        "train": t.train.model_dump(mode="json"),
                        # The Ray trial that trains it (fused_NNN: a fused group).
                        "ray_trial": ray_trial[t.index],
                        # Why it trains alone where fuse would group it.
                        "alone": alone_reason[t.index],
                    }
                    for t in trials
                ],
                "metric": s.metric.model_dump(mode="json"),
                "scheduler": stopping.model_dump(mode="json") if stopping else None,
                "early_stopping": early,
                # What was read differently from how it was written (W&B, Ray Tune).
                "notes": list(loaded.notes),
                "time_budget_s": s.time_budget_s,
                "resources": s.resources.model_dump(mode="json"),
                "max_concurrent_trials": s.max_concurrent_trials,
                "experiment": s.experiment,
                "spec_sha256": loaded.sha256,
                "schema": SCHEMA_FILE,
            }
        )
        return
    out = _make_console()
    out.print(_plan_table(loaded, trials, ray_trial))
    if any(g.fused for g in groups):
        out.print(
            f"{len(trials)} trials in {len(groups)} Ray trials: trials that differ only in "
            "per-member values train fused, as one stacked model (fuse: "
            f"{s.fuse}; --set fuse=off to run each alone)",
            highlight=False,
        )
    alone: dict[str, int] = {}
    for group in groups:
        if group.alone:
            alone[group.alone] = alone.get(group.alone, 0) + 1
    for reason, count in alone.items():
        out.print(f"{count} trials train one per process: {reason}", highlight=False)
    concurrency = (
        f", at most {s.max_concurrent_trials} at a time" if s.max_concurrent_trials else ""
    )
    target = f", target {s.metric.target:g}" if s.metric.target is not None else ""
    out.print(
        f"{len(trials)} trials, {total_epochs} trial-epochs in all{concurrency}; "
        f"metric {s.metric.name} ({s.metric.mode}{target}); experiment {s.experiment!r}; "
        f"spec sha256 {loaded.sha256[:12]}",
        highlight=False,
    )
    ends = [early] if early else []
    if s.time_budget_s is not None:
        ends.append(f"time budget {s.time_budget_s:g} s")
    if ends:
        out.print("; ".join(ends), highlight=False)
    for note in loaded.notes:
        out.print(f"note: {note}", highlight=False)
    out.print(f"spec schema for editors: {SCHEMA_FILE} (`bopsweep schema`)", highlight=False)


def _plan_table(loaded, trials, ray_trial: dict[int, str]):
    from rich.table import Table

    s = loaded.spec
    resources = f"{s.resources.cpu:g} CPU" + (
        f", {s.resources.gpu:g} GPU" if s.resources.gpu else ""
    )
    if s.method == "bayes":
        seeds = f" x {len(s.seeds)} seeds" if s.seeds else ""
        table = Table(
            title=f"{s.name}: {len(trials)} trials ({s.num_samples} configurations{seeds}) "
            f"proposed by Optuna (TPE, seed {s.search_seed}) as the sweep runs, "
            f"{resources} each"
        )
        table.add_column("parameter")
        table.add_column("search space")
        for key, param in s.parameters.items():
            table.add_row(key, param.describe())
        return table
    table = Table(title=f"{s.name}: {len(trials)} trials ({s.method}), {resources} each")
    table.add_column("trial", justify="right")
    swept_keys = list(trials[0].swept) if trials else []
    for key in swept_keys:
        table.add_column(key.removeprefix("hparams."), justify="right")
    table.add_column("model / dataset")
    table.add_column("hparams set")
    table.add_column("epochs", justify="right")
    fused = any(name.startswith("fused_") for name in ray_trial.values())
    if fused:
        table.add_column("Ray trial")
    for trial in trials:
        table.add_row(
            f"{trial.index:03d}",
            *(_value_text(trial.swept[k]) for k in swept_keys),
            f"{trial.train.model} / {trial.train.dataset}",
            trial.train.hparams_set,
            str(trial.train.resolved_hparams().epochs),
            *([ray_trial[trial.index]] if fused else []),
        )
    return table


@app.command()
def schema(
    out: Annotated[
        Path | None, typer.Option(help="Write it to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the JSON Schema of sweep specs (the one in sweeps/schema.json).

    Editors with the YAML language server use it through a first line
    `# yaml-language-server: $schema=<path or URL of schema.json>` in a spec.
    """
    from bopsweep.sweep.spec import json_schema_text

    text = json_schema_text()
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out}", highlight=False)


@app.command()
def run(
    spec: SpecArg,
    set_: SetOpt = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            envvar=TRACKING_ENV,
            show_envvar=True,
            help="MLflow tracking URI (default: the spec's, then sqlite:///mlflow.db here). "
            "Credentials come only from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
            "or MLFLOW_TRACKING_TOKEN.",
        ),
    ] = None,
    experiment: ExperimentOpt = None,
    address: Annotated[
        str | None,
        typer.Option(
            envvar="RAY_ADDRESS",
            show_envvar=True,
            help="Ray cluster: auto, HOST:6379 or ray://HOST:10001 (default: a local Ray).",
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Results and checkpoints (default: the spec's, then ./bopsweep_results)."
        ),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(help="Start over instead of resuming an interrupted sweep of the same name."),
    ] = False,
    download: Annotated[
        bool,
        typer.Option(help="Download missing datasets (sets train.download) where allowed."),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show Ray's and MLflow's log lines live (they always go to "
            "<results>/logs/driver.log).",
        ),
    ] = False,
    tracking_wait: Annotated[
        float,
        typer.Option(
            help="Seconds a rerun waits for a tracking server that does not answer, when "
            "the sweep already has its parent run there (a new sweep is refused at once).",
            min=0,
        ),
    ] = 300.0,
    without_tracking: Annotated[
        bool,
        typer.Option(
            "--without-tracking",
            help="When a rerun's tracking server still does not answer after "
            "--tracking-wait, train anyway: every epoch stays in the results folder and "
            "`bopsweep sync NAME` sends it once the server is up.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a sweep with Ray Tune, every trial tracked in MLflow.

    Running the same spec again resumes an interrupted sweep (finished trials are
    not re-run); --restart starts over. The terminal shows the live table and the
    leaderboard; Ray's and MLflow's logs go to the sweep's results folder. With
    --json the final leaderboard is printed as JSON on stdout, everything else on
    stderr.
    """
    from rich.live import Live

    from bopsweep.sweep.report.tables import live_table
    from bopsweep.sweep.runner import RunOptions, run_sweep
    from bopsweep.sweep.spec import load_spec

    overrides = [
        *_experiment_override(experiment),
        *(set_ or []),
        *(["train.download=true"] if download else []),
    ]
    loaded = load_spec(spec, overrides)
    options = RunOptions(
        tracking_uri=tracking_uri,
        address=address,
        storage=storage,
        restart=restart,
        verbose=verbose,
        tracking_wait_s=tracking_wait,
        without_tracking=without_tracking,
    )
    # Redrawn when the sweep's model changes, at most twice a second: the driver's
    # CPU time is taken from the trials running beside it.
    last_draw = [0.0]

    def draw(current) -> None:
        now = time.monotonic()
        finished = all(t.status in ("FINISHED", "FAILED", "KILLED") for t in current.trials)
        if now - last_draw[0] >= 0.5 or finished:
            live.update(live_table(current, max_rows=_rows_that_fit(console)), refresh=True)
            last_draw[0] = now

    with Live(console=console, auto_refresh=False, transient=False) as live:
        outcome = run_sweep(
            loaded,
            options,
            listener=draw,
            on_step=lambda text: console.print(
                f"sweep {loaded.spec.name!r} from {spec}: {text}", highlight=False
            ),
        )
    console.print()
    if outcome.stopped:
        # Every trial would fail the same way: one message, no leaderboard.
        raise UserError(outcome.stopped)
    _print_outcome(outcome, spec, overrides, out=console if as_json else None)
    if as_json:
        from bopsweep.sweep.report.tables import outcome_json

        _print_json(outcome_json(outcome))
    if outcome.interrupted:
        raise typer.Exit(130)
    if outcome.failed or outcome.tracking_error:
        raise typer.Exit(1)


def _rows_that_fit(out: Console, floor: int = 5) -> int:
    """Trial rows a table can show on ``out`` with its title, header, borders and
    caption: a terminal's height, or 50 lines in a log or a pipe."""
    if not out.is_terminal:
        return 50
    return max(floor, out.height - 8)


def _print_outcome(outcome, spec: Path, overrides: list[str], out=None) -> None:
    from bopsweep.sweep.report import claims_table, section51_claims
    from bopsweep.sweep.report.tables import leaderboard_table
    from bopsweep.sweep.state import SweepFolder

    out = out or _make_console()
    where = "the whole leaderboard: report/leaderboard.csv in the results folder"
    if not outcome.storage or SweepFolder(outcome.storage, outcome.name).local is None:
        where = f"the whole leaderboard: `bopsweep report {outcome.name}`"
    out.print(leaderboard_table(outcome, limit=_rows_that_fit(out, floor=20), elsewhere=where))
    claims = section51_claims(outcome)
    if claims:
        out.print(claims_table(claims))
    if outcome.ended_early:
        out.print(f"the sweep ended early: {outcome.ended_early}", highlight=False)
    if outcome.tracking_error:
        out.print(
            f"[red]not every epoch reached the tracking server at {outcome.tracking_uri}[/] "
            f"({outcome.tracking_error}); every epoch is in the local results: run "
            f"`bopsweep sync {outcome.name} --storage {outcome.storage}` once it is "
            "reachable",
            highlight=False,
        )
    url = outcome.experiment_url()
    if url:
        out.print(f"MLflow: {url}", highlight=False)
    else:
        out.print(
            f"MLflow store {outcome.tracking_uri}: browse it with `bopsweep ui`", highlight=False
        )
    if outcome.storage:
        folder = SweepFolder(outcome.storage, outcome.name)
        # A sweep stored at a URI keeps no log files: the libraries' logs went to the
        # terminal.
        logs = f" (logs: {folder.log_dir})" if folder.log_dir is not None else ""
        out.print(f"results and checkpoints: {folder.path}{logs}", highlight=False)
    for trial in sorted(outcome.trials, key=lambda t: t.index):
        if trial.status == "FAILED" and not outcome.stopped:
            reason = (trial.error or "").strip().splitlines()
            line = reason[-1] if reason else "no reason recorded"
            where = f" (log: {trial.log_file})" if trial.log_file else ""
            out.print(
                f"[red]trial {trial.index:03d} failed[/]: {line[:300]}{where}", highlight=False
            )
    if outcome.interrupted:
        again = _command_again(spec, overrides)
        out.print(
            f"interrupted: resume with `{again}` (or add --restart to start over)", highlight=False
        )


def _command_again(spec: Path, overrides: list[str]) -> str:
    """The command the user typed, to resume with: every option of it (--address,
    --tracking-uri, --storage...) decides which sweep a rerun continues. Without
    --restart, which would start over instead."""
    import shlex

    args = sys.argv[1:]
    if args[:1] == ["run"]:
        return shlex.join(["bopsweep", *(a for a in args if a != "--restart")])
    return shlex.join(["bopsweep", "run", str(spec), *(f"--set={s}" for s in overrides)])


@app.command()
def sync(
    name: Annotated[str, typer.Argument(help="The sweep's name (its results folder).")],
    storage: Annotated[
        str, typer.Option(help="Where the sweep's results are (default ./bopsweep_results).")
    ] = "bopsweep_results",
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: the one the sweep was run with)."),
    ] = None,
) -> None:
    """Upload to MLflow the epochs, runs and statuses a sweep's server missed.

    Reads every trial's local results; epochs the server already has are skipped,
    so it is safe to run more than once.
    """
    from bopsweep.sweep.state import resolve_storage_path
    from bopsweep.sweep.sync import sync_sweep

    report = sync_sweep(name, resolve_storage_path(storage), tracking_uri)
    outcome = report.outcome
    counts = ", ".join(f"{n} {s.lower()}" for s, n in outcome.counts().items())
    console.print(
        f"synced {name!r} to {outcome.tracking_uri}: {report.epochs_sent} epochs sent; "
        f"{len(outcome.trials)} trials ({counts})",
        highlight=False,
    )


@app.command()
def submit(
    spec: SpecArg,
    set_: SetOpt = None,
    address: Annotated[
        str | None,
        typer.Option(
            envvar=["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"],
            show_envvar=True,
            help="Ray job server, e.g. http://HEAD:8265.",
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            envvar=TRACKING_ENV, show_envvar=True, help="MLflow server the trials log to."
        ),
    ] = None,
    experiment: ExperimentOpt = None,
    storage: Annotated[
        str | None, typer.Option(help="Shared storage on the cluster for results.")
    ] = None,
    working_dir: Annotated[
        Path, typer.Option(help="Folder uploaded with the job (holds the spec).")
    ] = Path("."),
    wait: Annotated[bool, typer.Option(help="Follow the job's logs until it ends.")] = True,
) -> None:
    """Run a sweep on a Ray cluster as a Ray Job (`bopsweep run` on the head node).

    The tracking URI and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD travel as
    the job's environment variables, not on its command line.
    """
    from bopsweep.sweep.spec import load_spec
    from bopsweep.sweep.submit import submit_sweep

    overrides = [*_experiment_override(experiment), *(set_ or [])]
    load_spec(spec, overrides)  # a bad spec is refused here, not on the cluster
    if not address:
        raise UserError("give the cluster's job server: --address http://HEAD:8265")
    submission_id, status = submit_sweep(
        spec,
        overrides,
        address=address,
        tracking_uri=tracking_uri,
        storage=storage,
        working_dir=working_dir,
        wait=wait,
        echo=lambda text: console.print(text, highlight=False, markup=False),
    )
    console.print(f"job {submission_id}: {status}", highlight=False)
    if status not in ("SUCCEEDED", "PENDING"):
        raise typer.Exit(1)
