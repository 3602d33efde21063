"""Name -> object registries (models, datasets, pruning methods, attacks) with one lookup helper."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from gkp.foundation.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A plain mapping from names to entries whose lookup names the valid choices on a miss."""

    def __init__(self, kind: str, entries: dict[str, T] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = dict(entries or {})

    @classmethod
    def of(cls, kind: str, entries) -> Registry:
        """A registry of ``entries`` under their own ``name``; a name given twice is an error."""
        registry = cls(kind)
        for entry in entries:
            registry.add(entry.name, entry)
        return registry

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str, key_path: str | None = None) -> T:
        if name in self._entries:
            return self._entries[name]
        where = f"{key_path}: " if key_path else ""
        raise ConfigError(
            f"{where}unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; "
            f"valid choices: {', '.join(self.names())}"
        )

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self):
        return [(name, self._entries[name]) for name in self.names()]


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(name), choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
