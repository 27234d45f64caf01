"""Bench section ``fusion`` in the quick bench: the quickstart fused, and
BinaryNet members fused against separate trainers."""

from __future__ import annotations

from bopsweep.bench.common import BATCH_SIZE, FULL, QUICK


def test_the_quickstart_ran_fused(quick_bench):
    """The smoke run has the quickstart fused only, and it is sweep_overhead's smoke
    run (the same command), not a second sweep; a full run measures both."""
    _, results = quick_bench
    section = results["sections"]["fusion"]
    assert set(section["quickstart"]) == {"auto"}
    fused = section["quickstart"]["auto"]
    assert fused["ray_trials"] == ["fused_000"]
    assert fused["run_by"] == "sweep_overhead"
    assert results["sections"]["sweep_overhead"]["ray_trials"] == ["fused_000"]
    assert fused["wall_s"] > 0 and fused["samples_per_s"] > 0


def test_binarynet_members_fused_and_separate_are_timed(quick_bench):
    _, results = quick_bench
    figures = results["sections"]["fusion"]["binarynet"]
    assert set(figures) == {"2"}
    for members, row in figures.items():
        assert row["fused_member_samples_per_s"] > 0
        assert row["gain"] == row["separate_steps_s"] / row["fused_step_s"]
        assert row["rounds"] >= 1, members
        assert row["batch_size"] == QUICK.binarynet_batch_size


def test_the_full_bench_compares_members_at_the_papers_batch():
    assert FULL.binarynet_batch_size == BATCH_SIZE == 100


def test_a_member_count_past_the_budget_is_left_out(monkeypatch, tmp_path):
    """A K whose rounds, projected from the smaller K's, would end past the member
    budget is not measured; the largest K measured is the one recorded for auto."""
    import dataclasses

    import torch

    from bopsweep.bench import fusion
    from bopsweep.bench.common import Context

    class Trainer(int):
        """Stands for K members (fused) or one member (separate): its step costs
        10 s a member fused, 12 s a member separate."""

        def train_epoch(self) -> None: ...

    def members(device, k, batch):
        return "fp32", Trainer(k), [Trainer(1)] * k

    def timed(candidates, *args, **kwargs):
        k = candidates["fused"].__self__
        return {
            "fused": {"median_s": 10.0 * k, "rounds": 3},
            "separate": {"median_s": 12.0 * k, "rounds": 3},
        }

    run = {"trials": 9, "wall_s": 1.0, "samples_per_s": 1.0, "trial_train_s": 1.0}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fusion, "_quickstart", lambda context, fuse: dict(run))
    monkeypatch.setattr(fusion, "_members", members)
    monkeypatch.setattr(fusion, "interleaved", timed)
    plan = dataclasses.replace(FULL, member_budget_s=800.0)
    section = fusion.measure(Context(torch.device("cpu"), plan, tmp_path, {}))
    # K=3: 66 s a round, 22 s a member; K=9, projected 9 x 22 x 4 = 792 s, fits in 800 s.
    assert [section["binarynet"][k]["gain"] for k in ("3", "9")] == [1.2, 1.2]
    assert "1" not in section["binarynet"]  # one member fused is one trainer
    plan = dataclasses.replace(FULL, member_budget_s=300.0)
    section = fusion.measure(Context(torch.device("cpu"), plan, tmp_path, {}))
    assert section["binarynet"]["3"]["gain"] == 1.2
    assert "time budget" in section["binarynet"]["9"]["skipped"]
    assert section["recorded_gains"]["binarynet"] == 1.2
    assert section["recorded_gains"]["mlp"] == 1.0
    assert any("K=9" in row[1] and "budget" in row[2] for row in fusion.rows(section))
