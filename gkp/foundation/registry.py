"""Registries: the entries of one kind (models, datasets, methods, attacks, ...), found by name in their
packages and imported only when a config names them.

An entry is a module-level ``ENTRY`` (or, for a family of entries sharing code, ``ENTRIES``) of a module in
one of the registry's packages. The entry named N lives in the module N (``attacks/pgd.py`` holds ``pgd``),
or, for a family, in the module named by N without its trailing digits or without its last ``_part``
(``resnet.py`` holds resnet8 ... resnet110, ``l1.py`` holds l1_a and l1_b; a ``-`` in a name reads as
``_``). So looking up a name imports that one module, adding an entry is adding its file, and a run loads
the entries it uses, not every entry of the project. ``names()`` (listings, error messages, the contract
tests) imports every module of the packages; modules without ``ENTRY`` or ``ENTRIES`` are helpers.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import keyword
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Generic, TypeVar

from gkp.foundation.errors import ConfigError

T = TypeVar("T")


def module_candidates(name: str) -> list[str]:
    """The modules an entry named ``name`` may live in, its own first (see the module docstring)."""
    key = str(name).replace("-", "_")
    if not key.isidentifier() or key.startswith("_") or keyword.iskeyword(key):
        return []
    family = [key.rstrip("0123456789"), key.rsplit("_", 1)[0]]
    return [c for c in dict.fromkeys([key, *family]) if c.isidentifier() and not keyword.iskeyword(c)]


def module_entries(module: ModuleType) -> tuple:
    """The entries a module declares (``ENTRY`` or ``ENTRIES``)."""
    single = getattr(module, "ENTRY", None)
    return (single,) if single is not None else tuple(getattr(module, "ENTRIES", ()))


class Registry(Generic[T]):
    """The entries of type ``entry_type`` in the modules of ``packages``; a lookup's miss names the valid
    choices. ``add`` registers an entry made elsewhere (a test's, a user's plug-in), which wins over a
    module of the same name."""

    def __init__(self, kind: str, entry_type: type, packages: tuple[str, ...]):
        self.kind, self.entry_type, self.packages = kind, entry_type, packages
        self._found: dict[str, T] = {}
        self._added: dict[str, T] = {}
        self._listed = False

    def add(self, name: str, entry: T) -> T:
        if name in self._added:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._added[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget an entry ``add`` registered."""
        self._added.pop(name, None)

    def get(self, name: str, key_path: str | None = None) -> T:
        entry = self._lookup(name)
        if entry is not None:
            return entry
        where = f"{key_path}: " if key_path else ""
        raise ConfigError(
            f"{where}unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; "
            f"valid choices: {', '.join(self.names())}"
        )

    def names(self) -> list[str]:
        self._list_all()
        return sorted({**self._found, **self._added})

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(name, self.get(name)) for name in self.names()]

    # ---------------------------------------------------------------- finding entries in their modules

    def _lookup(self, name: str) -> T | None:
        if name in self._added:
            return self._added[name]
        for package in self.packages:
            for candidate in module_candidates(name):
                if name in self._found:
                    return self._found[name]
                module = self._module(package, candidate)
                if module is not None:
                    self._take(module)
        return self._found.get(name)

    @staticmethod
    def _module(package: str, name: str) -> ModuleType | None:
        qualified = f"{package}.{name}"
        return importlib.import_module(qualified) if importlib.util.find_spec(qualified) is not None else None

    def _take(self, module: ModuleType) -> None:
        """Record the entries of ``module``, each checked to be of the registry's type and findable by name."""
        here = module.__name__.rpartition(".")[2]
        for entry in module_entries(module):
            if not isinstance(entry, self.entry_type):
                raise TypeError(f"{module.__name__}: its entries must be {self.entry_type.__name__}s, got {entry!r}")
            if here not in module_candidates(entry.name):
                raise TypeError(
                    f"{module.__name__} declares the {self.kind} '{entry.name}', which a lookup by name cannot "
                    f"find there: move it to a module named {module_candidates(entry.name)[:1] or entry.name!r}"
                )
            known = self._found.setdefault(entry.name, entry)
            if known is not entry:
                raise ValueError(f"{self.kind} '{entry.name}' is declared twice")

    def _list_all(self) -> None:
        if self._listed:
            return
        for package in self.packages:
            for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
                if not info.name.startswith("_"):
                    self._take(importlib.import_module(f"{package}.{info.name}"))
        self._listed = True


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(name), choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
