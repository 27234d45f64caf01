"""While a sweep runs, library log lines and native (fd 2) output go to its log file;
the terminal (Python's sys.stderr) keeps only what bopsweep prints."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap


def test_library_logs_and_native_stderr_go_to_the_file(tmp_path):
    script = textwrap.dedent(
        f"""
        import logging, os, sys, warnings
        from pathlib import Path
        from bopsweep.sweep import logs
        with logs.captured(Path({str(tmp_path)!r}) / "logs") as path:
            logging.getLogger("ray.tune").warning("ray says hello")
            logging.getLogger("mlflow").warning("mlflow says hello")
            warnings.warn("a library warning")
            os.write(2, b"native line from C++\\n")
            print("table row", file=sys.stderr)
        print("after", file=sys.stderr)
        os.write(2, b"native after\\n")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["table row", "after", "native after"]
    log = (tmp_path / "logs" / "driver.log").read_text()
    for text in ("ray says hello", "mlflow says hello", "a library warning", "native line"):
        assert text in log, log


def test_verbose_also_shows_them_live(tmp_path, capfd):
    from bopsweep.sweep import logs

    logger = logging.getLogger("ray")
    level = logger.level
    logger.setLevel(logging.INFO)  # an earlier ray.init in this process may have raised it
    try:
        with logs.captured(tmp_path / "logs", verbose=True):
            logger.warning("visible")
    finally:
        logger.setLevel(level)
    assert "visible" in capfd.readouterr().err
    assert "visible" in (tmp_path / "logs" / "driver.log").read_text()
