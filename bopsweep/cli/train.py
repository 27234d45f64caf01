"""``bopsweep train``: one run with the original paper code's command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bopsweep.cli.app import app, console
from bopsweep.errors import UserError


# ------------------------------------------------------------------------------ train
@app.command(no_args_is_help=True)
def train(
    model: Annotated[str, typer.Argument(help="Model name, e.g. binarynet, mlp.")],
    dataset: Annotated[str, typer.Option(help="cifar10, mnist, digits or synthetic.")] = "cifar10",
    preprocess_fn: Annotated[
        str, typer.Option(help="default or resize_and_flip; ImageNet: default or imagenet_tf.")
    ] = "default",
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
        typer.Option(
            help="Write metrics.jsonl, config.json and checkpoint.pt (after every epoch) here."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue the run in --output-dir from its last epoch's checkpoint."),
    ] = False,
    validation_split: Annotated[
        bool,
        typer.Option(
            "--validation-split/--no-validation-split",
            "--validationset",
            help="Hold out a fixed 10% of the training set as validation data; the "
            "test set is reported as test_accuracy.",
        ),
    ] = False,
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
    from bopsweep.config import make_train_config
    from bopsweep.hparams import parse_hparams

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
        validation_split=validation_split,
    )
    if resume and output_dir is None:
        raise UserError("--resume continues the run in --output-dir: give --output-dir")
    from bopsweep.data import check_available

    # Missing data is refused before torch is imported (seconds).
    check_available(config.dataset, config.data_dir, config.download)
    from bopsweep.local_run import run_local

    run_local(config, output_dir, console, resume=resume)
