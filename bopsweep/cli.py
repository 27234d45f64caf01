"""The ``bopsweep`` command line: parse, call, print, exit codes.

Exit codes: 0 success; 1 a run or some trials failed; 2 bad input (unknown name,
bad value, malformed spec, missing data), always as one message, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bopsweep.errors import TrainingDiverged, UserError

app = typer.Typer(
    help="Sweeps of binarized neural networks trained with Bop (Ray Tune + MLflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Click's shell completion, through Typer: --install-completion / --show-completion
    # (bash, zsh, fish, PowerShell).
    add_completion=True,
)


def _make_console(stderr: bool = False) -> Console:
    # Off a terminal (CI logs, pipes) rich assumes 80 columns and truncates tables.
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=140)


console = _make_console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from bopsweep import __version__

        print(f"bopsweep {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Sweeps of binarized neural networks trained with Bop (Ray Tune + MLflow)."""


def _print_json(data) -> None:
    """Machine-readable output: on stdout, alone (human text goes to stderr)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------ train
@app.command(no_args_is_help=True)
def train(
    model: Annotated[str, typer.Argument(help="Model name, e.g. binarynet, mlp.")],
    dataset: Annotated[str, typer.Option(help="cifar10, mnist, digits or synthetic.")] = "cifar10",
    preprocess_fn: Annotated[
        str, typer.Option(help="default or resize_and_flip; ImageNet: default or imagenet_tf.")
    ] = "default",
    hparams_set: Annotated[
        str, typer.Option(help="Named hyperparameters: default (latent weights), bop, ...")
    ] = "default",
    hparams: Annotated[
        str, typer.Option(help="Overrides as key=value,... e.g. threshold=1e-6,gamma=1e-3.")
    ] = "",
    epochs: Annotated[int | None, typer.Option(help="Overrides the set's epochs.")] = None,
    data_dir: Annotated[str, typer.Option(help="Where datasets live on disk.")] = "data",
    download: Annotated[bool, typer.Option(help="Download the dataset if missing.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of initialisation and data order.")] = 0,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            help="Write metrics.jsonl, config.json and checkpoint.pt (after every epoch) here."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue the run in --output-dir from its last epoch's checkpoint."),
    ] = False,
    validation_split: Annotated[
        bool,
        typer.Option(
            "--validation-split/--no-validation-split",
            "--validationset",
            help="Hold out a fixed 10% of the training set as validation data; the "
            "test set is reported as test_accuracy.",
        ),
    ] = False,
    max_train_samples: Annotated[
        int | None, typer.Option(help="Use only the first N training samples.")
    ] = None,
    max_val_samples: Annotated[
        int | None, typer.Option(help="Use only the first N validation samples.")
    ] = None,
) -> None:
    """Train one model, with the original paper code's command line.

    Example: bopsweep train binarynet --dataset cifar10 --preprocess-fn resize_and_flip
    --hparams-set bop --hparams threshold=1e-6,gamma=1e-3
    """
    from bopsweep.config import make_train_config, parse_hparams

    config = make_train_config(
        model=model,
        dataset=dataset,
        preprocess_fn=preprocess_fn,
        hparams_set=hparams_set,
        hparams=parse_hparams(hparams),
        epochs=epochs,
        data_dir=data_dir,
        download=download,
        device=device,
        seed=seed,
        max_train_samples=max_train_samples,
        max_val_samples=max_val_samples,
        validation_split=validation_split,
    )
    if resume and output_dir is None:
        raise UserError("--resume continues the run in --output-dir: give --output-dir")
    from bopsweep.data import check_available

    # Missing data is refused before torch is imported (seconds).
    check_available(config.dataset, config.data_dir, config.download)
    _run_train(config, output_dir, resume=resume)


CHECKPOINT_FILE = "checkpoint.pt"


def _resume_state(output_dir: Path, resolved: dict) -> dict:
    """The checkpoint to continue from, refused when the run in ``output_dir`` was
    started with another configuration."""
    import torch

    checkpoint = output_dir / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise UserError(f"--resume: no {CHECKPOINT_FILE} in {output_dir} to continue from")
    config_file = output_dir / "config.json"
    if config_file.is_file():
        saved = json.loads(config_file.read_text())
        changed = sorted(k for k in {*saved, *resolved} if saved.get(k) != resolved.get(k))
        if changed:
            raise UserError(
                f"--resume: the run in {output_dir} was started with other settings "
                f"({', '.join(changed)}); use another --output-dir or drop --resume"
            )
    # Onto the CPU whatever device wrote it: a checkpoint of a GPU run then resumes on a
    # machine without one (or on another GPU), and the RNG states must be CPU tensors
    # anyway; the trainer copies weights and optimizer state onto its own device.
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def _save_checkpoint(state: dict, output_dir: Path) -> None:
    import torch

    # Written beside and renamed: a run killed mid-write keeps the previous epoch's.
    partial = output_dir / (CHECKPOINT_FILE + ".partial")
    torch.save(state, partial)
    os.replace(partial, output_dir / CHECKPOINT_FILE)


def _env_callbacks() -> list:
    """The callbacks of ``BOPSWEEP_TRIAL_CALLBACKS`` (as for a sweep's trials, with
    index 0): profilers and the fault injection of the tests."""
    import importlib

    callbacks = []
    for entry in filter(None, os.environ.get("BOPSWEEP_TRIAL_CALLBACKS", "").split(",")):
        module, _, name = entry.strip().partition(":")
        callback = getattr(importlib.import_module(module), name)(0)
        if callback is not None:
            callbacks.append(callback)
    return callbacks


def _run_train(config, output_dir: Path | None, *, resume: bool = False) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from bopsweep.train import Callback, Trainer

    hp = config.resolved_hparams()
    resolved = json.loads(json.dumps({**config.model_dump(), "hparams": hp.model_dump()}))
    # Checked before the data is loaded and the model built.
    state = _resume_state(output_dir, resolved) if resume else None
    trainer = Trainer(config)
    if state is not None:
        trainer.load_state_dict(state)
    console.print(
        f"{config.model} on {config.dataset} ({len(trainer.data.train_y)} train images), "
        f"{hp.optimizer} set {config.hparams_set!r}, {hp.epochs} epochs, device {trainer.device}"
        + (f", resumed after epoch {trainer.epoch}" if resume else ""),
        highlight=False,
    )
    metrics_file = None
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
        # The checkpoint's history is the record: an epoch logged after the last
        # checkpoint (a kill in between) is trained again, not logged twice.
        metrics_file = (output_dir / "metrics.jsonl").open("w")
        for metrics in trainer.history:
            metrics_file.write(json.dumps(metrics) + "\n")
        metrics_file.flush()

    class Report(Callback):
        def __init__(self, progress: Progress) -> None:
            self.progress = progress
            self.task = progress.add_task("epoch", total=trainer.steps_per_epoch)

        def on_batch_end(self, trainer: Trainer, step: int) -> None:
            self.progress.update(self.task, completed=step + 1)

        def on_epoch_end(self, trainer: Trainer, members: list) -> None:
            metrics = members[0]
            if metrics is None:  # diverged: the run ends with its message
                return
            test = metrics.get("test_accuracy")
            self.progress.console.print(
                f"epoch {trainer.epoch}/{hp.epochs}  "
                f"loss {metrics['train_loss']:.4f}  acc {metrics['train_accuracy']:.4f}  "
                f"val_loss {metrics.get('val_loss', float('nan')):.4f}  "
                f"val_acc {metrics.get('val_accuracy', float('nan')):.4f}  "
                + ("" if test is None else f"test_acc {test:.4f}  ")
                + f"flips {metrics.get('flip_ratio', 0.0):.2e}  "
                f"{metrics['samples_per_s']:.0f} img/s",
                highlight=False,
            )
            if metrics_file is not None:
                metrics_file.write(json.dumps(metrics) + "\n")
                metrics_file.flush()
                _save_checkpoint(trainer.state_dict(), output_dir)
            self.progress.reset(self.task, description=f"epoch {trainer.epoch + 1}")

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with progress:
        trainer.fit([Report(progress), *_env_callbacks()])
    trainer.raise_if_diverged()
    if metrics_file is not None:
        metrics_file.close()
        console.print(f"wrote {output_dir}/metrics.jsonl, config.json, {CHECKPOINT_FILE}")


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


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[
        str, typer.Option(help="Interface to bind; loopback unless told otherwise.")
    ] = "127.0.0.1",
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            envvar=TRACKING_ENV,
            show_envvar=True,
            help="Store to browse (default: sqlite:///mlflow.db here).",
        ),
    ] = None,
) -> None:
    """Start the MLflow UI on the local store and print its URL."""
    from bopsweep.sweep.mlflow_client import resolve_tracking_uri, server_env

    uri = resolve_tracking_uri(tracking_uri, None)
    if uri.startswith("http"):
        console.print(f"{uri} is already a server: open it in a browser", highlight=False)
        return
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    console.print(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C to stop)", highlight=False)
    sys.stderr.flush()
    # Become the server, so that stopping `bopsweep ui` stops it and leaves no orphan.
    os.execve(sys.executable, command, server_env())


@app.command(no_args_is_help=True)
def report(
    name_or_spec: Annotated[
        str,
        typer.Argument(
            help="A sweep name (e.g. quickstart) or its spec file (e.g. sweeps/quickstart.yaml)."
        ),
    ],
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            envvar=TRACKING_ENV,
            show_envvar=True,
            help="MLflow tracking URI (default: the spec's, then sqlite:///mlflow.db here).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for the report (default: ./bopsweep_reports/<name>)."),
    ] = None,
    log_to_parent: Annotated[
        bool,
        typer.Option(help="Also log the report to the sweep's parent run, under report/."),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Leaderboard, curves (paper Figure 1) and heatmaps of a sweep, read from MLflow."""
    from bopsweep.sweep import report as sweep_report

    uri = sweep_report.tracking_uri_for(name_or_spec, tracking_uri)
    result = sweep_report.write_report(uri, name_or_spec, out, log_to_parent=log_to_parent)
    if as_json:
        from bopsweep.sweep.report.tables import outcome_json

        _print_json(
            {
                **outcome_json(result.outcome, result.swept_keys),
                "report_dir": str(result.out_dir),
                "files": [str(p) for p in result.files],
                "logged_to_parent": result.logged_to_parent,
            }
        )
    stdout = console if as_json else _make_console()
    stdout.print(sweep_report.leaderboard_table(result.outcome, result.swept_keys))
    if result.claims:
        stdout.print(sweep_report.claims_table(result.claims))
    stdout.print(
        f"report: {result.out_dir} ({', '.join(p.name for p in result.files)})", highlight=False
    )
    where = "logged to the parent run under report/" if result.logged_to_parent else "parent run"
    browse = "" if result.outcome.is_server else " (browse it with `bopsweep ui`)"
    stdout.print(f"{where}: {result.outcome.parent_link}{browse}", highlight=False)


@app.command()
def bench(
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    quick: Annotated[
        bool,
        typer.Option(
            help="The fewest rounds and smallest runs (about a minute on 2 CPU cores); "
            "every section still runs, Ray and MLflow included."
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(help="Where to write the JSON (default: bench_results/bench-<device>.json)."),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only this section (repeatable): bop_step, train_step, data_pipeline, "
            "logging, sweep_overhead, memory, fusion, cli_startup."
        ),
    ] = None,
) -> None:
    """Measure Bop, training, data, sweep, logging, memory and start-up against targets.

    Each target is a ratio of two measurements interleaved in the same run; bf16 is
    measured only where the device computes it natively. A full run takes at most
    about 5 minutes on 2 CPU cores; see docs/benchmarks.md.
    """
    from rich.table import Table

    from bopsweep.bench import failed_sections, run_bench, table_rows

    results = run_bench(
        device,
        quick=quick,
        only=tuple(only or ()),
        progress=lambda message: console.print(f"bench: {message}", highlight=False),
    )
    path = output or Path("bench_results") / f"bench-{device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    machine = results["machine"]
    table = Table(
        title=f"bopsweep bench ({'quick' if quick else 'full'}) on {machine['device']}: "
        f"{machine['cpu']}, {machine['torch_threads']} threads, torch {machine['torch']}"
    )
    for column in ("section", "figure", "value", "target", "met"):
        table.add_column(column, justify="right" if column in ("value", "target") else "left")
    for row in table_rows(results):
        style = "red" if row[4] == "NO" else ("green" if row[4] == "yes" else None)
        table.add_row(*row, style=style)
    _make_console().print(table)
    console.print(f"wrote {path} in {results['elapsed_s']:.0f} s", highlight=False)
    failed = failed_sections(results)
    if failed:
        console.print(f"[bold red]failed sections:[/] {', '.join(failed)}", highlight=False)
        raise typer.Exit(1)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    # MLflow's INFO lines (database migrations...) would interleave with the live table.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow writes a "View run" line to stdout as each run ends; stdout is for the
    # commands' own output (--json), which prints the links itself.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        app()  # standalone: click prints usage errors itself, with exit code 2
    except UserError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except TrainingDiverged as error:
        console.print(f"[bold red]failed:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)


def command() -> None:
    """The ``bopsweep`` command: :func:`main`, then a quick exit.

    Once a command's work is done and flushed, Python's own exit would still tear
    down every module it imported (Ray, MLflow, matplotlib): ~0.7 s of CPU after a
    sweep, on the user's clock. The command finishes what an exit must (threads still
    working, atexit handlers such as Ray's and MLflow's, logging's files, the
    terminal) and then ends the process at once. :func:`main` keeps Python's exit, for
    callers that stay in the process (tests)."""
    try:
        main()
        code = 0
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:  # sys.exit("message"): Python prints it and exits 1
            print(done.code, file=sys.stderr)
            code = 1
    _quick_exit(code)


def _quick_exit(code: int) -> None:
    import atexit
    import logging
    import threading

    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


if __name__ == "__main__":
    command()
