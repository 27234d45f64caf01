"""Flip ratios (Larq's FlipRatio) and the paper's log form pi = log(ratio + e^-9)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bopsweep.bnn.metrics import LOG_FLIP_FLOOR, flip_metrics, log_flip_ratio, topk_correct
from bopsweep.bnn.optim import Bop


def test_log_flip_ratio():
    assert LOG_FLIP_FLOOR == -9.0
    assert log_flip_ratio(0.0) == pytest.approx(-9.0, abs=1e-12)
    assert log_flip_ratio(1.0) == pytest.approx(math.log(1.0 + 1.2340980408667956e-4))
    assert log_flip_ratio(1e-3) == pytest.approx(-6.7914, abs=1e-4)  # ln(1.1234e-3)


def test_flip_metrics_per_layer_and_overall():
    a, b = torch.zeros(2, 2), torch.zeros(6)
    flips = [
        (a, torch.tensor(3.0, dtype=torch.float64), 2),  # 3 of 4 * 2 weight-steps
        (b, torch.tensor(6.0, dtype=torch.float64), 2),  # 6 of 6 * 2
    ]
    metrics = flip_metrics(flips, {a: "conv1", b: "dense3"})
    assert metrics["flip_ratio/conv1"] == 3 / 8
    assert metrics["flip_ratio/dense3"] == 6 / 12
    # Over all binary weights: weighted by size, not the mean of the layer ratios.
    assert metrics["flip_ratio"] == 9 / 20
    assert metrics["log_flip_ratio"] == pytest.approx(math.log(9 / 20 + math.exp(-9)))
    assert set(metrics) == {"flip_ratio/conv1", "flip_ratio/dense3", "flip_ratio", "log_flip_ratio"}


def test_flip_metrics_of_nothing():
    assert flip_metrics([], {}) == {}


def test_no_flips_gives_the_floor():
    a = torch.zeros(5)
    metrics = flip_metrics([(a, torch.tensor(0.0, dtype=torch.float64), 3)], {a: "x"})
    assert metrics["flip_ratio"] == 0.0
    assert metrics["log_flip_ratio"] == pytest.approx(-9.0)


def test_flip_metrics_from_bop():
    first = nn.Parameter(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    second = nn.Parameter(torch.tensor([-1.0, -1.0]))
    opt = Bop([first, second], threshold=0.0, gamma=1.0)
    for grads in ([[1.0, 1.0, -1.0, -1.0], [-1.0, 1.0]], [[0.0, 0.0, 1.0, -1.0], [1.0, 1.0]]):
        for p, g in zip((first, second), grads, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
    # Step 1: first flips 2 of 4, second flips 1 of 2 ([-1, -1] -> [1, -1]).
    # Step 2: first = [-1, -1, 1, 1]: m = [0, 0, 1, -1], so the two ties at 0 go
    # -1 -> +1 and w[2] = 1 agrees with m = 1 and flips: 3 of 4. second = [1, -1],
    # m = [1, 1]: w[0] flips, w[1] disagrees: 1 of 2.
    assert first.tolist() == [1.0, 1.0, -1.0, 1.0]
    assert second.tolist() == [-1.0, -1.0]
    metrics = flip_metrics(opt.read_flips(), {first: "a", second: "b"})
    assert metrics["flip_ratio/a"] == 5 / 8
    assert metrics["flip_ratio/b"] == 2 / 4
    assert metrics["flip_ratio"] == 7 / 12
    assert flip_metrics(opt.read_flips(), {first: "a", second: "b"}) == {}


def test_topk_correct_counts_targets_among_the_k_largest_logits():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.5, 0.2, 0.3, 0.4],  # target 1: top-1
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],  # target 4: 5th largest
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],  # target 5: 6th largest
        ]
    )
    targets = torch.tensor([1, 4, 5])
    assert topk_correct(logits, targets, 1).item() == 1
    assert topk_correct(logits, targets, 5).item() == 2
    assert topk_correct(logits, targets, 6).item() == 3
    # k above the number of classes counts every sample.
    assert topk_correct(logits[:, :3], torch.tensor([0, 1, 2]), 5).item() == 3
    assert topk_correct(logits, targets, 5).dtype == torch.int64


def test_topk_correct_on_stacked_logits_counts_per_model():
    # [K, B, C]: the logits of K models on one batch, as a trainer stacking K
    # configurations produces; one count per model.
    gen = torch.Generator().manual_seed(0)
    stacked = torch.randn(3, 50, 10, generator=gen)
    targets = torch.randint(10, (50,), generator=gen)
    counts = topk_correct(stacked, targets, 5)
    assert counts.shape == (3,)
    for k in range(3):
        top5 = stacked[k].argsort(dim=1, descending=True)[:, :5]
        assert counts[k].item() == sum(
            t in row for t, row in zip(targets, top5.tolist(), strict=True)
        )
