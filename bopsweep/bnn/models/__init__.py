"""The model registry, keyed by the names users type (``bopsweep train binarynet``).

A builder takes the dataset's input shape ``(C, H, W)`` and number of classes and
returns an ``nn.Module`` whose binary kernels are marked by their layers. Aliases
map the original code's names onto the same builder.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bopsweep.errors import unknown_name

ModelBuilder = Callable[[tuple[int, ...], int], nn.Module]

MODELS: dict[str, ModelBuilder] = {}
ALIASES: dict[str, str] = {}


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


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MODELS[canonical_model_name(name)](tuple(input_shape), num_classes)


# Importing the modules registers their models.
from bopsweep.bnn.models import (  # noqa: E402, F401
    binary_alexnet,
    binarynet,
    birealnet,
    mlp,
    xnornet,
)
