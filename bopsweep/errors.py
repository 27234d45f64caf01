"""Errors that reach the user as one clear message instead of a traceback.

Every command of the CLI catches :class:`UserError` and exits with code 2; anything
else is a bug (or a crash) and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: a name, value, file or spec that cannot be used."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run cannot continue meaningfully."""


def unknown_name(kind: str, name: object, choices: Iterable[str]) -> UserError:
    """The error for a name that is not in a registry, listing the valid names."""
    valid = ", ".join(sorted(choices))
    return UserError(f"unknown {kind} {name!r}; choose from: {valid}")
