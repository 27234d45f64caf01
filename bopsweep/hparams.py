"""Hyperparameters: the typed, frozen :class:`HParams`, the paper's named sets of them
(by model; the original code's set names and hparam names accepted too) and how a
run's hparams resolve.

The flow is nanoGPT's: defaults -> a named hyperparameter set (``--hparams-set``)
-> ``key=value`` overrides (``--hparams threshold=1e-6,gamma=1e-3``). An unknown key
or a value of the wrong type is an error naming the valid keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bopsweep.bnn.models import MODEL_OPTIONS, canonical_model_name
from bopsweep.bnn.schedules import Schedule
from bopsweep.errors import UserError, unknown_name

ScheduleName = Literal["constant", "exponential", "linear"]


class HParams(BaseModel):
    """The hyperparameters of one training run (the original code's ``HParams``).

    Schedules: ``<name>_schedule`` is ``constant``, ``exponential`` (multiply by
    ``<name>_decay_factor`` every ``<name>_decay_epochs`` epochs, staircase) or
    ``linear`` (to ``<name>_end`` over ``<name>_decay_epochs`` epochs, all epochs
    when unset). ``<name>`` is ``gamma``, ``threshold``, ``sigma`` or ``lr``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    optimizer: Literal["bop", "bop2", "bop2_unbiased", "latent"] = Field(
        "bop",
        description="bop | bop2 (second-order Bop) | bop2_unbiased (bop2 scoring "
        "(m / gamma) / sqrt(v / sigma), as Bop and Beyond's code) | latent (latent-weight "
        "baseline)",
    )
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(100, gt=0)
    threshold: float = Field(1e-8, ge=0)
    threshold_schedule: ScheduleName = "constant"
    threshold_end: float | None = Field(None, ge=0)
    threshold_decay_factor: float | None = Field(None, gt=0)
    threshold_decay_epochs: float | None = Field(None, gt=0)
    gamma: float = Field(1e-4, gt=0, le=1)
    gamma_schedule: ScheduleName = "constant"
    gamma_end: float | None = Field(None, gt=0, le=1)
    gamma_decay_factor: float | None = Field(None, gt=0)
    gamma_decay_epochs: float | None = Field(None, gt=0)
    gamma_decay_steps: int | None = Field(
        None, gt=0, description="the decay period in steps (overrides gamma_decay_epochs)"
    )
    sigma: float = Field(1e-2, gt=0, le=1, description="second-moment rate of bop2")
    sigma_schedule: ScheduleName = "constant"
    sigma_end: float | None = Field(None, gt=0, le=1)
    sigma_decay_factor: float | None = Field(None, gt=0)
    sigma_decay_epochs: float | None = Field(None, gt=0)
    fp_optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-2, gt=0, description="learning rate of the fp optimizer")
    lr_schedule: ScheduleName = "constant"
    lr_end: float | None = Field(None, gt=0)
    lr_decay_factor: float | None = Field(None, gt=0)
    lr_decay_epochs: float | None = Field(None, gt=0)
    weight_decay: float = Field(
        0.0,
        ge=0,
        description="L2 on full-precision kernels (not BatchNorm, not biases, not binary)",
    )
    adam_epsilon: float = Field(
        1e-8,
        gt=0,
        description="epsilon of Adam (the fp optimizer and the latent-weight baseline): "
        "torch's 1e-8 by default; 1e-7 is Keras' value, which the paper's code used "
        "(Keras adds it before the bias correction, so the two differ in the first few "
        "thousand steps even then: docs/fidelity.md)",
    )
    # Architecture hparams (the original code's names); None: the model's default.
    # Which model takes which: bopsweep.bnn.models.MODEL_OPTIONS.
    filters: int | None = Field(None, gt=0)
    dense_units: int | None = Field(None, gt=0)
    kernel_size: int | None = Field(None, gt=0)

    def model_options(self) -> dict[str, int]:
        """The architecture hparams set, as keyword arguments of the model builder."""
        return {k: getattr(self, k) for k in ARCHITECTURE_KEYS if getattr(self, k) is not None}

    def schedule(self, name: str, steps_per_epoch: int) -> Schedule:
        """The schedule of ``gamma``, ``threshold``, ``sigma`` or ``lr`` in optimizer steps."""
        kind = getattr(self, f"{name}_schedule")
        start = getattr(self, name)
        decay_epochs = getattr(self, f"{name}_decay_epochs")
        if kind == "constant":
            return Schedule("constant", start)
        steps = getattr(self, f"{name}_decay_steps", None) or round(
            (decay_epochs or self.epochs) * steps_per_epoch
        )
        steps = max(steps, 1)
        if kind == "exponential":
            factor = getattr(self, f"{name}_decay_factor")
            period = decay_epochs or getattr(self, f"{name}_decay_steps", None)
            if factor is None or period is None:
                raise UserError(
                    f"hparam {name}_schedule=exponential needs {name}_decay_factor "
                    f"and {name}_decay_epochs"
                )
            return Schedule("exponential", start, steps=steps, factor=factor)
        end = getattr(self, f"{name}_end")
        if end is None:
            raise UserError(f"hparam {name}_schedule=linear needs {name}_end")
        return Schedule("linear", start, end=end, steps=steps)


ARCHITECTURE_KEYS = ("filters", "dense_units", "kernel_size")


def _keras_l2(value: Any) -> float:
    # Keras' l2(q) adds q * sum(w ** 2) to the loss: its gradient is 2q * w, what
    # PyTorch's weight_decay adds to the gradient.
    return 2 * float(value)


# The original code's hparam names that differ from bopsweep's: name -> (bopsweep
# name or names, conversion of the value). Accepted in --hparams and in specs.
ORIGINAL_NAMES: dict[str, tuple[str | tuple[str, ...], Any]] = {
    "lr_start": ("lr", None),
    "learning_rate": ("lr", None),
    "gamma_start": ("gamma", None),
    "gamma_decay": ("gamma_decay_factor", None),
    "decay_step": ("gamma_decay_steps", None),
    "regularization_quantity": ("weight_decay", _keras_l2),
    # "Bop and Beyond"'s code: each rate's start and decay factor, and one period (or
    # length, for linear decays) in epochs shared by every schedule.
    "threshold_start": ("threshold", None),
    "threshold_decay": ("threshold_decay_factor", None),
    "sigma_start": ("sigma", None),
    "sigma_decay": ("sigma_decay_factor", None),
    "lr_decay": ("lr_decay_factor", None),
    "epochs_decay": (
        ("threshold_decay_epochs", "gamma_decay_epochs", "sigma_decay_epochs", "lr_decay_epochs"),
        None,
    ),
}

# Every key --hparams and specs accept: bopsweep's names and the original ones.
HPARAM_KEYS: tuple[str, ...] = (*HParams.model_fields, *ORIGINAL_NAMES)


def translate_original_names(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with the original code's names replaced by bopsweep's."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        names, convert = ORIGINAL_NAMES.get(key, (key, None))
        for name in (names,) if isinstance(names, str) else names:
            if name in out:
                raise UserError(f"hparam {key} sets {name} a second time; give one of them")
            out[name] = value if convert is None else convert(value)
    return out


def _bop2_sets(names: tuple[str, str], **values: Any) -> dict[str, HParams]:
    """One set per second-order optimizer: ``bop2`` and ``bop2_unbiased`` (named
    ``names``) share every value, as the original code's pairs of sets do."""
    return {
        name: HParams(optimizer=optimizer, **values)
        for name, optimizer in zip(names, ("bop2", "bop2_unbiased"), strict=True)
    }


_BINARYNET = {
    # Latent-weight baseline: ste_sign kernels clipped to [-1, 1], Adam on everything.
    "default": HParams(optimizer="latent", epochs=100, batch_size=256, lr=5e-3),
    "bop": HParams(optimizer="bop", epochs=100, batch_size=100, threshold=1e-6, gamma=1e-3),
    "bop_sec52": HParams(
        optimizer="bop",
        epochs=500,
        batch_size=50,
        threshold=1e-8,
        gamma=1e-4,
        gamma_schedule="exponential",
        gamma_decay_factor=0.1,
        gamma_decay_epochs=100,
    ),
    # Bop2ndOrder ("Bop and Beyond", Suarez-Ramirez et al. 2021) as its code trains
    # this BatchNorm BinaryNet (Bop2ndOrder repo, branch conference,
    # models/binarynet_batch.py:110 and :135; its LayerNorm BinaryNet, binarynet.py,
    # uses threshold 1e-6). The flip test is on m / sqrt(v), a scale-free signal, so
    # gamma is tiny (m barely forgets) and v adapts at sigma 1e-3.
    **_bop2_sets(
        ("bop2", "bop2_unbiased"),
        epochs=100,
        batch_size=100,
        threshold=1e-5,
        gamma=1e-7,
        sigma=1e-3,
        lr=0.01,
    ),
    # Its schedule study (section 5.1.4; binarynet_batch.py:306 and :487): every rate,
    # the learning rate included, x0.1 every 100 epochs (staircase), at batch 50.
    **_bop2_sets(
        ("bop2_exp", "bop2_unbiased_exp"),
        epochs=350,
        batch_size=50,
        threshold=1e-6,
        gamma=1e-7,
        sigma=1e-3,
        lr=0.01,
        **{
            f"{rate}_{key}": value
            for rate in ("threshold", "gamma", "sigma", "lr")
            for key, value in (("schedule", "exponential"), ("decay_factor", 0.1))
        },
        threshold_decay_epochs=100,
        gamma_decay_epochs=100,
        sigma_decay_epochs=100,
        lr_decay_epochs=100,
    ),
    # Its CIFAR-10 result (section 5.2: 91.9% biased, 91.4% unbiased;
    # binarynet_batch.py:422 and :601): 500 epochs at batch 50, every rate linear
    # over all of them, sigma rising while the others fall.
    **_bop2_sets(
        ("bop2_cifar", "bop2_unbiased_cifar"),
        epochs=500,
        batch_size=50,
        threshold=1e-5,
        threshold_schedule="linear",
        threshold_end=1e-8,
        gamma=1e-2,
        gamma_schedule="linear",
        gamma_end=1e-5,
        sigma=1e-7,
        sigma_schedule="linear",
        sigma_end=1e-2,
        lr=0.01,
        lr_schedule="linear",
        lr_end=1e-3,
    ),
}

_MLP = {
    "default": HParams(optimizer="latent", epochs=30, batch_size=32, lr=5e-3),
    "bop": HParams(optimizer="bop", epochs=30, batch_size=32, threshold=1e-6, gamma=1e-3),
    # BinaryNet's bop2 rates at the MLP's epochs and batch size, like "bop".
    **_bop2_sets(
        ("bop2", "bop2_unbiased"),
        epochs=30,
        batch_size=32,
        threshold=1e-5,
        gamma=1e-7,
        sigma=1e-3,
    ),
}


def _imagenet_sets(
    epochs: int, weight_decay: float = 0.0, bop2_epochs: int | None = None
) -> dict[str, HParams]:
    """Section 5.3: batch 1024, Adam on the real-valued parameters with its learning
    rate decayed linearly 2.5e-3 -> 5e-6 over all steps; Bop at threshold 1e-8 with
    gamma decayed linearly 1e-4 -> 1e-6 over all steps (Keras' PolynomialDecay).

    ``bop2`` (for ``bop2_epochs``): "Bop and Beyond"'s ImageNet runs (its
    ``bop2ndOrder_ImageNet`` sets), the same Adam schedule and, linearly over all
    steps, threshold 1e-8 -> 1e-5 (rising), gamma 1e-4 -> 1e-9 and sigma
    1e-5 -> 1e-2 (rising)."""
    shared = dict(
        epochs=epochs,
        batch_size=1024,
        lr=2.5e-3,
        lr_schedule="linear",
        lr_end=5e-6,
        weight_decay=weight_decay,
    )
    sets = {
        "bop": HParams(
            optimizer="bop",
            threshold=1e-8,
            gamma=1e-4,
            gamma_schedule="linear",
            gamma_end=1e-6,
            **shared,
        ),
        # The original code has no latent-weight set for these models: the baseline
        # trains the same network with latent weights under the same Adam schedule.
        "default": HParams(optimizer="latent", **shared),
    }
    if bop2_epochs is not None:
        sets["bop2"] = HParams(
            optimizer="bop2",
            threshold=1e-8,
            threshold_schedule="linear",
            threshold_end=1e-5,
            gamma=1e-4,
            gamma_schedule="linear",
            gamma_end=1e-9,
            sigma=1e-5,
            sigma_schedule="linear",
            sigma_end=1e-2,
            **{**shared, "epochs": bop2_epochs},
        )
    return sets


# Keras' l2(5e-7) adds 5e-7 * sum(w ** 2) to the loss; its gradient, 1e-6 * w, is what
# PyTorch's weight_decay adds to the gradient.
_XNORNET_L2 = 5e-7

# "Bop and Beyond"'s ImageNet runs: XNOR-Net as long as Bop's (xnor_batch.py:423),
# Bi-Real Net 150 epochs, half of Bop's 300 (birealnet_batch.py:429; its
# regularization_quantity reaches no layer of that model).
_XNORNET = _imagenet_sets(epochs=100, weight_decay=2 * _XNORNET_L2, bop2_epochs=100)
_BIREALNET = {
    **_imagenet_sets(epochs=300, bop2_epochs=150),
    # A constant-rate pair (birealnet_batch.py:152 and :182): batch 256, Adam lr 0.01.
    **_bop2_sets(
        ("bop2_constant", "bop2_unbiased_constant"),
        epochs=300,
        batch_size=256,
        threshold=1e-8,
        gamma=1e-5,
        sigma=1e-6,
        lr=0.01,
    ),
}

# "Bop and Beyond"'s names for the same sets (its models/*_batch.py, the BatchNorm
# models these are), accepted as they are in its command lines.
_ORIGINAL_SET_NAMES: dict[str, dict[str, str]] = {
    "binarynet": {
        "bop2ndOrder": "bop2",
        "bop2ndOrder_unbiased": "bop2_unbiased",
        "bop2ndOrder_testExp": "bop2_exp",
        "bop2ndOrder_unbiased_testExp": "bop2_unbiased_exp",
        # testPoly and CIFAR are the same values.
        "bop2ndOrder_testPoly": "bop2_cifar",
        "bop2ndOrder_CIFAR": "bop2_cifar",
        "bop2ndOrder_unbiased_testPoly": "bop2_unbiased_cifar",
        "bop2ndOrder_unbiased_CIFAR": "bop2_unbiased_cifar",
    },
    "xnornet": {"bop2ndOrder_ImageNet": "bop2", "bop2ndOrder_testPoly": "bop2"},
    "birealnet": {
        "bop2ndOrder_ImageNet": "bop2",
        "bop2ndOrder_testPoly": "bop2",
        "bop2ndorder": "bop2_constant",
        "bop2ndorder_unbiased": "bop2_unbiased_constant",
    },
}


def _with_original_names(model: str, sets: dict[str, HParams]) -> dict[str, HParams]:
    aliases = _ORIGINAL_SET_NAMES.get(model, {})
    return {**sets, **{alias: sets[name] for alias, name in aliases.items()}}


# One entry per model; the original code's set names included.
HPARAM_SETS: dict[str, dict[str, HParams]] = {
    model: _with_original_names(model, sets)
    for model, sets in {
        "binarynet": _BINARYNET,
        "mlp": _MLP,
        "binary_alexnet": _imagenet_sets(epochs=150),
        "xnornet": _XNORNET,
        "birealnet": _BIREALNET,
    }.items()
}


def _type_error_message(error: ValidationError, where: str) -> str:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "value"
    return f"{where} {field}: {first['msg']} (got {first.get('input')!r})"


def resolve_hparams(
    model: str, hparams_set: str, overrides: dict[str, Any], epochs: int | None = None
) -> HParams:
    """The named set of ``model`` with ``overrides`` applied, validated."""
    model = canonical_model_name(model)
    sets = HPARAM_SETS.get(model, {})
    if hparams_set not in sets:
        raise UserError(
            f"unknown hparams set {hparams_set!r} for {model}; choose from: "
            + ", ".join(sorted(sets))
        )
    for key in overrides:
        if key not in HPARAM_KEYS:
            raise unknown_name("hparam", key, HPARAM_KEYS)
    try:
        translated = translate_original_names(overrides)
    except ValueError:
        raise UserError("hparam regularization_quantity: not a number") from None
    values = {**sets[hparams_set].model_dump(), **translated}
    if epochs is not None:
        values["epochs"] = epochs
    try:
        hparams = HParams.model_validate(values)
    except ValidationError as error:
        raise UserError(_type_error_message(error, "hparam")) from None
    options = MODEL_OPTIONS.get(model, {})
    for key in hparams.model_options():
        if key not in options:
            raise UserError(
                f"hparam {key} is not an option of model {model}; its architecture "
                f"hparams: {', '.join(options) or 'none'}"
            )
    return hparams


def parse_hparams(text: str) -> dict[str, str]:
    """``"threshold=1e-6,gamma=1e-3"`` -> ``{"threshold": "1e-6", "gamma": "1e-3"}``.

    Values stay strings; :class:`HParams` converts them to the declared types.
    """
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--hparams expects key=value pairs separated by commas, got {item!r}")
        out[key.strip()] = value.strip()
    return out
