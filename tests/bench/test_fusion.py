"""Bench section ``fusion`` in the quick bench: the quickstart fused, and
BinaryNet members fused against separate trainers."""

from __future__ import annotations

from bopsweep.bench.common import BATCH_SIZE, FULL, QUICK


def test_the_quickstart_ran_fused(quick_bench):
    """The smoke run runs the quickstart fused only: its unfused run is the same
    command as sweep_overhead's (a full run measures both, interleaved)."""
    _, results = quick_bench
    section = results["sections"]["fusion"]
    assert set(section["quickstart"]) == {"auto"}
    fused = section["quickstart"]["auto"]
    assert fused["ray_trials"] == ["fused_000"]
    assert fused["wall_s"] > 0 and fused["samples_per_s"] > 0


def test_binarynet_members_fused_and_separate_are_timed(quick_bench):
    _, results = quick_bench
    figures = results["sections"]["fusion"]["binarynet"]
    assert set(figures) == {"1", "2"}
    for members, row in figures.items():
        assert row["fused_member_samples_per_s"] > 0
        assert row["gain"] == row["separate_steps_s"] / row["fused_step_s"]
        assert row["rounds"] >= 1, members
        assert row["batch_size"] == QUICK.member_batch_size


def test_the_full_bench_compares_members_at_the_papers_batch():
    assert FULL.member_batch_size == BATCH_SIZE == 100
