"""The ``bopsweep`` command line: parse, call, print, exit codes.

Exit codes: 0 success; 1 a run or some trials failed; 2 bad input (unknown name,
bad value, malformed spec, missing data), always as one message, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bopsweep.errors import TrainingDiverged, UserError

app = typer.Typer(
    help="Sweeps of binarized neural networks trained with Bop (Ray Tune + MLflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Sweeps of binarized neural networks trained with Bop (Ray Tune + MLflow)."""


# ------------------------------------------------------------------------------ train
@app.command(no_args_is_help=True)
def train(
    model: Annotated[str, typer.Argument(help="Model name, e.g. binarynet, mlp.")],
    dataset: Annotated[str, typer.Option(help="cifar10, mnist, digits or synthetic.")] = "cifar10",
    preprocess_fn: Annotated[str, typer.Option(help="default or resize_and_flip.")] = "default",
    hparams_set: Annotated[
        str, typer.Option(help="Named hyperparameters: default (latent weights), bop, ...")
    ] = "default",
    hparams: Annotated[
        str, typer.Option(help="Overrides as key=value,... e.g. threshold=1e-6,gamma=1e-3.")
    ] = "",
    epochs: Annotated[int | None, typer.Option(help="Overrides the set's epochs.")] = None,
    data_dir: Annotated[str, typer.Option(help="Where datasets live on disk.")] = "data",
    download: Annotated[bool, typer.Option(help="Download the dataset if missing.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of initialisation and data order.")] = 0,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Write metrics.jsonl, config.json and checkpoint.pt here."),
    ] = None,
    max_train_samples: Annotated[
        int | None, typer.Option(help="Use only the first N training samples.")
    ] = None,
    max_val_samples: Annotated[
        int | None, typer.Option(help="Use only the first N validation samples.")
    ] = None,
) -> None:
    """Train one model, with the original paper code's command line.

    Example: bopsweep train binarynet --dataset cifar10 --preprocess-fn resize_and_flip
    --hparams-set bop --hparams threshold=1e-6,gamma=1e-3
    """
    from bopsweep.config import make_train_config, parse_hparams

    config = make_train_config(
        model=model,
        dataset=dataset,
        preprocess_fn=preprocess_fn,
        hparams_set=hparams_set,
        hparams=parse_hparams(hparams),
        epochs=epochs,
        data_dir=data_dir,
        download=download,
        device=device,
        seed=seed,
        max_train_samples=max_train_samples,
        max_val_samples=max_val_samples,
    )
    _run_train(config, output_dir)


def _run_train(config, output_dir: Path | None) -> None:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from bopsweep.train import Callback, Trainer

    trainer = Trainer(config)
    hp = trainer.hparams
    console.print(
        f"{config.model} on {config.dataset} ({len(trainer.data.train_y)} train images), "
        f"{hp.optimizer} set {config.hparams_set!r}, {hp.epochs} epochs, device {trainer.device}",
        highlight=False,
    )
    metrics_file = None
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        resolved = {**config.model_dump(), "hparams": hp.model_dump()}
        (output_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
        metrics_file = (output_dir / "metrics.jsonl").open("w")

    class Report(Callback):
        def __init__(self, progress: Progress) -> None:
            self.progress = progress
            self.task = progress.add_task("epoch", total=trainer.steps_per_epoch)

        def on_batch_end(self, trainer: Trainer, step: int) -> None:
            self.progress.update(self.task, completed=step + 1)

        def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
            self.progress.console.print(
                f"epoch {trainer.epoch}/{hp.epochs}  "
                f"loss {metrics['train_loss']:.4f}  acc {metrics['train_accuracy']:.4f}  "
                f"val_loss {metrics.get('val_loss', float('nan')):.4f}  "
                f"val_acc {metrics.get('val_accuracy', float('nan')):.4f}  "
                f"flips {metrics.get('flip_ratio', 0.0):.2e}  "
                f"{metrics['samples_per_s']:.0f} img/s",
                highlight=False,
            )
            if metrics_file is not None:
                metrics_file.write(json.dumps(metrics) + "\n")
                metrics_file.flush()
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
        trainer.fit([Report(progress)])
    if metrics_file is not None:
        metrics_file.close()
        torch.save(trainer.state_dict(), output_dir / "checkpoint.pt")
        console.print(f"wrote {output_dir}/metrics.jsonl, config.json, checkpoint.pt")


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()  # standalone: click prints usage errors itself, with exit code 2
    except UserError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except TrainingDiverged as error:
        console.print(f"[bold red]failed:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
