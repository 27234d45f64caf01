"""torch's optimizers, run eagerly without importing ``torch._dynamo``.

The first time any torch optimizer is built (``add_param_group``), zeroes its
gradients, saves or loads its state, or steps (Adam's and SGD's ``step``), torch
imports ``torch._dynamo``: 1.1-1.2 s of CPU and ~880 modules (sympy and mpmath among
them) in every process that trains, a trial's worker included, where it sits between
the trial's start and its first epoch. Those methods only need it to tell
``torch.compile`` not to trace them (``torch._disable_dynamo``) and to put graph breaks
around ``step``; bopsweep compiles models (``compile: true``), never an optimizer, so
its optimizers always run eagerly, where neither does anything.

:func:`install` makes those methods run eagerly in this process: the four disabled
methods get the cache entry torch's wrapper would otherwise import dynamo to fill (the
method itself), and Adam's and SGD's ``step`` is the undecorated ``step`` under
``torch.no_grad`` (what the decorator does for a non-differentiable optimizer,
without the graph breaks). The updates are the same, bit for bit. Where torch's
internals differ from what this expects, nothing is changed and the optimizers import
dynamo as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

DISABLED_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
STEPPED = (torch.optim.Adam, torch.optim.SGD)
# torch/_compile.py caches the dynamo-disabled function under this attribute.
_CACHE = "__dynamo_disable"

# Each class's step as torch defines it, kept to compare against (tests).
STOCK_STEPS: dict[type, Callable[..., Any]] = {}


def install() -> None:
    """Run torch's optimizers eagerly in this process (idempotent)."""
    for name in DISABLED_METHODS:
        inner = getattr(getattr(Optimizer, name), "__wrapped__", None)
        if inner is not None and not hasattr(inner, _CACHE):
            setattr(inner, _CACHE, inner)
    for cls in STEPPED:
        if cls in STOCK_STEPS:
            continue
        raw = _undecorated_step(cls.step)
        if raw is not None:
            STOCK_STEPS[cls] = cls.step
            cls.step = torch.no_grad()(raw)


def _undecorated_step(step: Callable[..., Any]) -> Callable[..., Any] | None:
    """``step`` as written in its class, below torch's decorators (they keep it in
    ``__wrapped__``); None if it is not found."""
    function = step
    while getattr(function, "__code__", None) is not None:
        if function.__code__.co_name == "step":
            return function
        function = getattr(function, "__wrapped__", None)
    return None
