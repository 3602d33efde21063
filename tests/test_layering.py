"""The import direction: foundation <- mechanisms <- entries (models, datasets, methods, attacks) <- the
catalog of registries <- config, stages, runner, command line.

Mechanisms (plans, surgery, layers, counting, the engine and evaluation, data splits) import no model,
dataset, method or attack, so each can be read and tested alone, and importing the engine loads none of
them. Checked twice: on the source (every ``import``, function-level ones included, followed through the
project) and in a fresh interpreter (what importing the mechanisms really loads)."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gkp", "baselines", "attacks")

FOUNDATION = {
    "gkp",
    "gkp.errors",
    "gkp.files",
    "gkp.registry",
    "gkp.schema",
    "gkp.seeding",
    "gkp.contracts",
    "gkp.threat",
    "gkp.settings",
}
MECHANISM_PREFIXES = ("gkp.layers", "gkp.pruning", "gkp.engine")
MECHANISM_MODULES = {"gkp.counting", "gkp.data", "gkp.data.splits", "gkp.data.augment", "gkp.data.statistics"}
ENTRY_PREFIXES = ("attacks", "baselines", "gkp.grouped", "gkp.models")
ENTRY_MODULES = {"gkp.data.arrays", "gkp.data.folders", "gkp.data.sources", "gkp.suites", "gkp.adversarial"}
APPLICATION = {  # the catalog and what reads it
    "gkp.zoo",
    "gkp.importers",
    "gkp.export",
    "gkp.sweep",
    "gkp.launchers",
    "gkp.tables",
    "gkp.catalog",
    "gkp.config",
    "gkp.pipeline",
    "gkp.checkpoint",
    "gkp.authors",
    "gkp.rundir",
    "gkp.stages",
    "gkp.runner",
    "gkp.report",
    "gkp.curves",
    "gkp.reference",
    "gkp.cli",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def is_mechanism(name: str) -> bool:
    return name in MECHANISM_MODULES or name.startswith(MECHANISM_PREFIXES)


def is_entry(name: str) -> bool:
    return name in ENTRY_MODULES or name.split(".")[0] in ("attacks", "baselines") or name.startswith(ENTRY_PREFIXES)


def parents(name: str) -> list[str]:
    """The packages Python imports before ``name`` (their __init__ modules)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            continue
        yield node
        yield from runtime_nodes(node)


@cache
def direct_imports(name: str) -> frozenset[str]:
    """Project modules ``name``'s source imports when it runs (at module level or inside functions)."""
    found = set(parents(name))
    for node in runtime_nodes(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return frozenset(m for m in found if m in MODULES)


@cache
def import_closure(name: str) -> frozenset[str]:
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += direct_imports(current)
    return frozenset(seen)


def chain(start: str, target: str) -> list[str]:
    """One import path from ``start`` to ``target``, to name the culprit in a failure."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        current = todo.pop(0)
        for imported in sorted(direct_imports(current)):
            if imported not in paths:
                paths[imported] = [*paths[current], imported]
                todo.append(imported)
    return paths.get(target, [])


MECHANISMS = sorted(name for name in MODULES if is_mechanism(name))
ENTRIES = sorted(name for name in MODULES if is_entry(name))


def test_every_module_has_its_layer():
    unplaced = sorted(set(MODULES) - FOUNDATION - set(MECHANISMS) - set(ENTRIES) - APPLICATION)
    assert not unplaced, f"place these modules in a layer of this test: {unplaced}"


@pytest.mark.parametrize("name", sorted(FOUNDATION))
def test_the_foundation_imports_only_the_foundation(name):
    outside = sorted(import_closure(name) - FOUNDATION)
    assert not outside, f"{name} imports {outside[0]} via {' -> '.join(chain(name, outside[0]))}"


@pytest.mark.parametrize("name", MECHANISMS)
def test_mechanisms_import_no_model_dataset_method_or_attack(name):
    outside = sorted(m for m in import_closure(name) if m not in FOUNDATION and not is_mechanism(m))
    assert not outside, f"{name} imports {outside[0]} via {' -> '.join(chain(name, outside[0]))}"


@pytest.mark.parametrize("name", ENTRIES)
def test_entries_do_not_import_the_registries_or_what_reads_them(name):
    above = sorted(import_closure(name) & APPLICATION)
    assert not above, f"{name} imports {above[0]} via {' -> '.join(chain(name, above[0]))}"


def test_importing_every_mechanism_loads_no_entry_in_a_fresh_interpreter():
    code = (
        "import importlib, sys\n"
        f"for name in {MECHANISMS!r}: importlib.import_module(name)\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in ('gkp', 'baselines', 'attacks'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "gkp.engine.train" in loaded and "gkp.engine.evaluate" in loaded
    assert sorted(m for m in loaded if m not in FOUNDATION and not is_mechanism(m)) == []
