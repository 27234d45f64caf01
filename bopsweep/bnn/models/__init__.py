"""The model registry, keyed by the names users type (``bopsweep train binarynet``).

A builder takes the dataset's input shape ``(C, H, W)`` and number of classes and
returns an ``nn.Module`` whose binary kernels are marked by their layers. Aliases
map the original code's names onto the same builder.

The registry names each builder by the module that defines it, and imports that
module (and torch) only in :func:`build_model`: checking a model name, as every spec
and ``bopsweep plan`` does, costs no torch. Each model module also registers its
builder with :func:`register_model` when imported, under the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bopsweep.errors import UserError, unknown_name
from bopsweep.registry import LazyRegistry

if TYPE_CHECKING:
    from torch import nn

ModelBuilder = Callable[..., "nn.Module"]

MODELS: LazyRegistry[ModelBuilder] = LazyRegistry(
    "model",
    {
        "binarynet": "bopsweep.bnn.models.binarynet:binarynet",
        "mlp": "bopsweep.bnn.models.mlp:mlp",
        "binary_alexnet": "bopsweep.bnn.models.binary_alexnet:binary_alexnet",
        "xnornet": "bopsweep.bnn.models.xnornet:xnornet",
        "birealnet": "bopsweep.bnn.models.birealnet:birealnet",
    },
)
# The original code's names.
ALIASES: dict[str, str] = {"alexnet": "binary_alexnet"}
# The architecture hparams each model's builder takes as keyword arguments (the
# original code's names), with their defaults; checked without importing torch.
MODEL_OPTIONS: dict[str, dict[str, int]] = {
    "binarynet": {"filters": 128, "dense_units": 1024, "kernel_size": 3},
    "mlp": {"dense_units": 256},
    "birealnet": {"filters": 64},
    "binary_alexnet": {},
    "xnornet": {},
}


def register_model(name: str, *aliases: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def decorator(builder: ModelBuilder) -> ModelBuilder:
        MODELS[name] = builder
        for alias in aliases:
            ALIASES[alias] = name
        return builder

    return decorator


def model_names() -> list[str]:
    return sorted([*MODELS, *ALIASES])


def canonical_model_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise unknown_name("model", name, model_names())
    return name


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **options: int
) -> nn.Module:
    """``options``: architecture hparams of :data:`MODEL_OPTIONS` (defaults when unset)."""
    name = canonical_model_name(name)
    unknown = set(options) - set(MODEL_OPTIONS.get(name, {}))
    if unknown:
        valid = ", ".join(MODEL_OPTIONS.get(name, {})) or "none"
        raise UserError(
            f"hparam {sorted(unknown)[0]!r} is not an option of model {name}; its "
            f"architecture hparams: {valid}"
        )
    return MODELS[name](tuple(input_shape), num_classes, **options)
