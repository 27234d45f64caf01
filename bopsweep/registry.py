"""Registries keyed by the names users type, whose entries are imported only when used.

Checking a name (``bopsweep plan``, a refused spec, ``--help``) must not pay for
importing torch, so a registry holds each entry as the ``"module:attribute"`` path
that defines it and imports that module the first time the entry is looked up.
Entries registered as objects (``register_model``, ``register_dataset``) are used
as they are. This module imports nothing heavy itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


def resolve(path: str) -> object:
    """``"package.module:attribute"`` -> the attribute, importing its module."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


class LazyRegistry(Mapping[str, T], Generic[T]):
    """Names -> entries, each given as an object or as ``"module:attribute"``.

    Membership, iteration and ``len`` read only the names; ``registry[name]``
    imports the entry's module on first use and keeps the object.
    """

    def __init__(self, kind: str, entries: Mapping[str, T | str]) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = dict(entries)

    def __getitem__(self, name: str) -> T:
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = resolve(entry)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def __setitem__(self, name: str, entry: T | str) -> None:
        self._entries[name] = entry

    # Mapping's default __contains__ looks the entry up, which would import it.
    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"LazyRegistry({self.kind!r}, {sorted(self._entries)})"
