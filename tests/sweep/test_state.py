"""The results folder of a sweep: resume decisions and refusals."""

from __future__ import annotations

import json

import pytest

from bopsweep.errors import UserError
from bopsweep.sweep.state import STATE_FILE, SweepFolder, decide_resume, resolve_storage


def _folder(tmp_path) -> SweepFolder:
    folder = SweepFolder(str(tmp_path), "grid")
    folder.write_state({"spec_sha256": "aaa", "tracking_uri": "sqlite:///a.db", "x": 1})
    return folder


def test_a_rerun_resumes_when_state_and_ray_experiment_are_there(tmp_path):
    folder = _folder(tmp_path)
    resume = decide_resume(folder, "aaa", "sqlite:///a.db", restart=False, restorable=True)
    assert resume.resuming and resume.state["x"] == 1
    fresh = decide_resume(folder, "aaa", "sqlite:///a.db", restart=False, restorable=False)
    assert not fresh.resuming


def test_a_changed_spec_or_tracking_uri_is_refused(tmp_path):
    folder = _folder(tmp_path)
    with pytest.raises(UserError, match=r"the spec changed since sweep .grid..*--restart"):
        decide_resume(folder, "bbb", "sqlite:///a.db", restart=False, restorable=True)
    with pytest.raises(UserError, match=r"was tracked at sqlite:///a\.db"):
        decide_resume(folder, "aaa", "http://server", restart=False, restorable=True)


def test_restart_clears_the_folder(tmp_path):
    folder = _folder(tmp_path)
    resume = decide_resume(folder, "bbb", "sqlite:///a.db", restart=True, restorable=True)
    assert not resume.resuming and not folder.local.exists()


def test_storage_precedence_and_writability(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_storage(None, None) == str(tmp_path / "bopsweep_results")
    assert resolve_storage("cli", "spec") == str(tmp_path / "cli")
    assert resolve_storage(None, "s3://bucket/x/") == "s3://bucket/x"
    SweepFolder(str(tmp_path / "new" / "deep"), "grid").check_writable()  # made later
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="not a writable folder"):
        SweepFolder(str(blocker / "under"), "grid").check_writable()


def test_a_storage_uri_goes_through_pyarrows_filesystem(tmp_path):
    # file:// takes the same path as s3:// or gs:// (pyarrow's filesystems), on disk.
    folder = SweepFolder(f"file://{tmp_path}/results", "sweep")
    assert folder.local is None and folder.read_state() is None and folder.trial_dirs() == []
    folder.check_writable()
    folder.write_state({"spec_sha256": "abc"})
    assert json.loads((tmp_path / "results" / "sweep" / STATE_FILE).read_text()) == {
        "spec_sha256": "abc"
    }
    assert folder.read_state() == {"spec_sha256": "abc"}
    (tmp_path / "results" / "sweep" / "trial_001").mkdir()
    (tmp_path / "results" / "sweep" / "trial_000").mkdir()
    (tmp_path / "results" / "sweep" / "trial_000" / "result.json").write_text("{}\n")
    assert folder.trial_dirs() == ["trial_000", "trial_001"]
    assert folder.read_text("trial_000/result.json") == "{}\n"
    assert folder.read_text("trial_001/result.json") is None
    folder.remove()
    assert not (tmp_path / "results" / "sweep").exists()
    assert folder.read_state() is None


def test_a_uri_query_stays_at_the_end_of_every_path():
    folder = SweepFolder("s3://bucket/results?endpoint_override=127.0.0.1:9000", "sweep")
    assert folder.path == "s3://bucket/results/sweep?endpoint_override=127.0.0.1:9000"
    assert folder.trial_dir(3) == (
        "s3://bucket/results/sweep/trial_003?endpoint_override=127.0.0.1:9000"
    )
