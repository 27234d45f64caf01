"""``bopsweep train``'s run: one configuration trained to the end in this process.

A progress bar per epoch and a line per epoch on the terminal; with an output folder,
``config.json``, ``metrics.jsonl`` (one line per epoch) and a checkpoint written after
every epoch (beside, then renamed: a run killed mid-write keeps the previous one),
which ``--resume`` continues without repeating or losing an epoch. The same
:class:`~bopsweep.train.Trainer` as a sweep's trials; no Ray, no MLflow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console

from bopsweep.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"


def _resume_state(output_dir: Path, resolved: dict) -> dict:
    """The checkpoint to continue from, refused when the run in ``output_dir`` was
    started with another configuration."""
    import torch

    checkpoint = output_dir / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise UserError(f"--resume: no {CHECKPOINT_FILE} in {output_dir} to continue from")
    config_file = output_dir / "config.json"
    if config_file.is_file():
        saved = json.loads(config_file.read_text())
        changed = sorted(k for k in {*saved, *resolved} if saved.get(k) != resolved.get(k))
        if changed:
            raise UserError(
                f"--resume: the run in {output_dir} was started with other settings "
                f"({', '.join(changed)}); use another --output-dir or drop --resume"
            )
    # Onto the CPU whatever device wrote it: a checkpoint of a GPU run then resumes on a
    # machine without one (or on another GPU), and the RNG states must be CPU tensors
    # anyway; the trainer copies weights and optimizer state onto its own device.
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def _save_checkpoint(state: dict, output_dir: Path) -> None:
    import torch

    # Written beside and renamed: a run killed mid-write keeps the previous epoch's.
    partial = output_dir / (CHECKPOINT_FILE + ".partial")
    torch.save(state, partial)
    os.replace(partial, output_dir / CHECKPOINT_FILE)


def _env_callbacks() -> list:
    """The callbacks of ``BOPSWEEP_TRIAL_CALLBACKS`` (as for a sweep's trials, with
    index 0): profilers and the fault injection of the tests."""
    import importlib

    callbacks = []
    for entry in filter(None, os.environ.get("BOPSWEEP_TRIAL_CALLBACKS", "").split(",")):
        module, _, name = entry.strip().partition(":")
        callback = getattr(importlib.import_module(module), name)(0)
        if callback is not None:
            callbacks.append(callback)
    return callbacks


def run_local(config, output_dir: Path | None, console: Console, *, resume: bool = False) -> None:
    """Train ``config`` to the end here, with a progress bar per epoch; with
    ``output_dir``, ``metrics.jsonl``, ``config.json`` and a checkpoint per epoch there
    (``resume``: continue from it)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from bopsweep.train import Callback, Trainer

    hp = config.resolved_hparams()
    resolved = json.loads(json.dumps({**config.model_dump(), "hparams": hp.model_dump()}))
    # Checked before the data is loaded and the model built.
    state = _resume_state(output_dir, resolved) if resume else None
    trainer = Trainer(config)
    if state is not None:
        trainer.load_state_dict(state)
    console.print(
        f"{config.model} on {config.dataset} ({len(trainer.data.train_y)} train images), "
        f"{hp.optimizer} set {config.hparams_set!r}, {hp.epochs} epochs, device {trainer.device}"
        + (f", resumed after epoch {trainer.epoch}" if resume else ""),
        highlight=False,
    )
    metrics_file = None
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
        # The checkpoint's history is the record: an epoch logged after the last
        # checkpoint (a kill in between) is trained again, not logged twice.
        metrics_file = (output_dir / "metrics.jsonl").open("w")
        for metrics in trainer.history:
            metrics_file.write(json.dumps(metrics) + "\n")
        metrics_file.flush()

    class Report(Callback):
        def __init__(self, progress: Progress) -> None:
            self.progress = progress
            self.task = progress.add_task("epoch", total=trainer.steps_per_epoch)

        def on_batch_end(self, trainer: Trainer, step: int) -> None:
            self.progress.update(self.task, completed=step + 1)

        def on_epoch_end(self, trainer: Trainer, members: list) -> None:
            metrics = members[0]
            if metrics is None:  # diverged: the run ends with its message
                return
            test = metrics.get("test_accuracy")
            self.progress.console.print(
                f"epoch {trainer.epoch}/{hp.epochs}  "
                f"loss {metrics['train_loss']:.4f}  acc {metrics['train_accuracy']:.4f}  "
                f"val_loss {metrics.get('val_loss', float('nan')):.4f}  "
                f"val_acc {metrics.get('val_accuracy', float('nan')):.4f}  "
                + ("" if test is None else f"test_acc {test:.4f}  ")
                + f"flips {metrics.get('flip_ratio', 0.0):.2e}  "
                f"{metrics['samples_per_s']:.0f} img/s",
                highlight=False,
            )
            if metrics_file is not None:
                metrics_file.write(json.dumps(metrics) + "\n")
                metrics_file.flush()
                _save_checkpoint(trainer.state_dict(), output_dir)
            self.progress.reset(self.task, description=f"epoch {trainer.epoch + 1}")

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with progress:
        trainer.fit([Report(progress), *_env_callbacks()])
    trainer.raise_if_diverged()
    if metrics_file is not None:
        metrics_file.close()
        console.print(f"wrote {output_dir}/metrics.jsonl, config.json, {CHECKPOINT_FILE}")
