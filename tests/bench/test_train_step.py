"""Bench section ``train_step``: BNN against full precision and Larq; bf16 only where
the device computes it natively."""

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
    "bnn_fp32_vs_larq",
]
BF16 = ["bnn_bf16_images_per_s", "fp_bf16_images_per_s", "bnn_vs_fp_bf16", "bnn_bf16_vs_larq"]


def test_train_step_reports_its_figures_and_targets(quick_bench):
    _, results = quick_bench
    section = results["sections"]["train_step"]
    if results["machine"]["native_bf16"]:
        assert_numbers(section, FP32 + BF16)
        assert_targets(section, {"bnn_vs_fp_fp32", "bnn_vs_fp_bf16", "vs_larq"})
    else:
        assert_numbers(section, FP32)
        assert_targets(section, {"bnn_vs_fp_fp32", "vs_larq"})


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
    assert_targets(section, {"bnn_vs_fp_fp32", "vs_larq"})
    assert "fp32" in section["targets"]["vs_larq"]["what"]
    rows = train_step.rows(section)
    assert ("train_step", "bnn_bf16, fp_bf16", "bf16 not native on this CPU: not measured") in [
        row[:3] for row in rows
    ]


def test_larq_is_compared_on_the_same_kind_of_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert train_step.larq_anchor(torch.device("cpu")) == (12.2, "AVX2")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert train_step.larq_anchor(torch.device("cpu")) == (48.7, "AVX512")
    # Off the CPU, the faster CPU's figure.
    assert train_step.larq_anchor(torch.device("cuda")) == (48.7, "AVX512")
