"""Bench section ``train_step``: BNN against full precision and its float32 roofline; bf16
only where the device computes it natively."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from bopsweep.bench import QUICK, train_step
from bopsweep.bench.common import Context
from bopsweep.precision import NATIVE_BF16_ENV

from .conftest import assert_numbers, assert_targets

FP32 = [
    "bnn_fp32.median_s",
    "bnn_fp32_images_per_s",
    "fp_fp32_images_per_s",
    "bnn_vs_fp_fp32",
    "step_gflop_per_image",
    "sgemm_gflop_per_s",
    "conv_gflop_per_s",
    "peak_gflop_per_s",
    "roofline_images_per_s",
    "bnn_fp32_of_roofline",
]
BF16 = ["bnn_bf16_images_per_s", "fp_bf16_images_per_s", "bnn_vs_fp_bf16"]


def test_train_step_reports_its_figures_and_targets(quick_bench):
    _, results = quick_bench
    section = results["sections"]["train_step"]
    if results["machine"]["native_bf16"]:
        assert_numbers(section, FP32 + BF16)
        assert_targets(section, {"bnn_vs_fp_fp32", "bnn_vs_fp_bf16", "roofline"})
    else:
        assert_numbers(section, FP32)
        assert_targets(section, {"bnn_vs_fp_fp32", "roofline"})


def test_bf16_is_not_measured_where_it_is_not_native(monkeypatch, tmp_path):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    plan = dataclasses.replace(QUICK, train_rounds=1, train_warmup=0)
    previous = torch.get_num_threads()
    try:
        section = train_step.measure(Context(torch.device("cpu"), plan, Path(tmp_path), {}))
    finally:
        torch.set_num_threads(previous)
    assert section["precisions"] == ["fp32"]
    assert not any(key.startswith(("bnn_bf16", "fp_bf16")) for key in section)
    assert_numbers(section, FP32)
    assert_targets(section, {"bnn_vs_fp_fp32", "roofline"})
    assert "float32" in section["targets"]["roofline"]["what"]
    rows = train_step.rows(section)
    assert ("train_step", "bnn_bf16, fp_bf16", "bf16 not native on this CPU: not measured") in [
        row[:3] for row in rows
    ]


def test_the_roofline_counts_binarynet_flops_and_times_a_real_sgemm():
    from bopsweep.bench.train_step import _trainers

    bnn, _ = _trainers(torch.device("cpu"), "fp32", 10)
    per_image = train_step.step_flops(bnn.train_epoch) / 10
    # BinaryNet on 32x32x3: about 1.03 GFLOP forward per image, twice that backward.
    assert 2.9e9 < per_image < 3.3e9
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64)
    assert train_step.step_flops(lambda: linear(x)) == 2 * 8 * 64 * 32
    peaks = train_step.peak_flops_per_s(torch.device("cpu"), rounds=1)
    assert set(peaks) == {"sgemm", "conv"}
    for flops in peaks.values():
        assert 1e9 < flops < 1e14  # a CPU's cores: GFLOP/s to tens of TFLOP/s
