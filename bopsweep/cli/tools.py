"""The commands around sweeps: ``ui`` (the MLflow UI), ``report`` and ``bench``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from bopsweep.cli.app import _make_console, _print_json, app, console
from bopsweep.cli.sweeps import TRACKING_ENV, JsonOpt


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
            "logging, sweep_overhead, sweep_scale, memory, fusion, cli_startup."
        ),
    ] = None,
) -> None:
    """Measure Bop, training, data, sweeps, logging, memory and start-up against targets.

    Each target is a ratio of two measurements interleaved in the same run; bf16 is
    measured only where the device computes it natively. A full run takes 5-6
    minutes on 2 CPU cores, 1.5 of them the sweeps of 10, 100 and 1,000 trials; see
    docs/benchmarks.md.
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
