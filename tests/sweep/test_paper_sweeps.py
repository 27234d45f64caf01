"""The paper's sweep files: each passes ``bopsweep plan``, expands to the runs the
paper describes, and the digits comparison trains through the Python API (no Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bopsweep.sweep.spec import expand, load_spec
from bopsweep.train import train

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
PAPER_SWEEPS = [
    "imagenet_alexnet.yaml",
    "imagenet_xnornet.yaml",
    "imagenet_birealnet.yaml",
    "sec52_vs_latent.yaml",
    "optimizers_digits.yaml",
]


@pytest.mark.parametrize("name", PAPER_SWEEPS)
def test_plan_accepts_the_sweep(name):
    result = subprocess.run(
        [sys.executable, "-m", "bopsweep.cli", "plan", str(SWEEPS / name)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "trials" in result.stdout


@pytest.mark.parametrize(
    ("name", "model", "epochs"),
    [
        ("imagenet_alexnet.yaml", "binary_alexnet", 150),
        ("imagenet_xnornet.yaml", "xnornet", 100),
        ("imagenet_birealnet.yaml", "birealnet", 300),
    ],
)
def test_imagenet_sweeps_use_the_paper_settings(name, model, epochs):
    (trial,) = expand(load_spec(SWEEPS / name))
    config = trial.train
    assert (config.model, config.dataset, config.hparams_set) == (model, "imagenet2012", "bop")
    hp = config.resolved_hparams()
    assert (hp.optimizer, hp.epochs, hp.batch_size, hp.threshold) == ("bop", epochs, 1024, 1e-8)
    assert (hp.gamma, hp.gamma_schedule, hp.gamma_end) == (1e-4, "linear", 1e-6)
    assert (hp.lr, hp.lr_schedule, hp.lr_end) == (2.5e-3, "linear", 5e-6)
    # Keras' l2(5e-7) on XNOR-Net's full-precision kernels is weight decay 1e-6.
    assert hp.weight_decay == (1e-6 if model == "xnornet" else 0.0)
    spec = load_spec(SWEEPS / name).spec
    assert spec.resources.gpu == 1


def test_sec52_compares_bop_with_the_latent_baseline():
    trials = expand(load_spec(SWEEPS / "sec52_vs_latent.yaml"))
    assert [(t.swept["hparams_set"], t.swept["seed"]) for t in trials] == [
        (hparams_set, seed) for hparams_set in ("bop_sec52", "default") for seed in (0, 1, 2)
    ]
    optimizers = {t.train.hparams_set: t.train.resolved_hparams().optimizer for t in trials}
    assert optimizers == {"bop_sec52": "bop", "default": "latent"}
    assert {t.train.model for t in trials} == {"binarynet"}


@pytest.mark.usefixtures("one_thread")
def test_optimizers_digits_trains_one_epoch_each():
    loaded = load_spec(SWEEPS / "optimizers_digits.yaml", ["train.epochs=1"])
    trials = expand(loaded)
    assert len(trials) == 9
    assert loaded.spec.resources.cpu == 1 and loaded.spec.resources.gpu == 0
    seen = set()
    for trial in trials:
        result = train(trial.train, device=torch.device("cpu"))
        assert len(result.history) == 1
        metrics = result.final
        assert 0.0 <= metrics["val_accuracy"] <= 1.0
        assert metrics["flip_ratio"] > 0.0
        seen.add((result.hparams.optimizer, trial.train.seed))
    assert seen == {(o, s) for o in ("bop", "bop2", "latent") for s in (0, 1, 2)}
