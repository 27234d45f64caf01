"""The ``bopsweep`` Typer app and what every command prints with: the console (on
stderr) and JSON output (on stdout). The command modules add their commands to
:data:`app`; :mod:`bopsweep.cli` runs it."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

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
