"""The ``bopsweep`` command line: parse, call, print, exit codes.

Exit codes: 0 success; 1 a run or some trials failed; 2 bad input (unknown name,
bad value, malformed spec, missing data), always as one message, never a traceback.
"""

from __future__ import annotations

import os
import sys

# The commands, in the order --help lists them (each module adds its own to ``app``).
# isort: off
from bopsweep.cli import train  # noqa: F401
from bopsweep.cli import sweeps  # noqa: F401
from bopsweep.cli import tools  # noqa: F401

# isort: on
from bopsweep.cli.app import app, console
from bopsweep.errors import TrainingDiverged, UserError


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
