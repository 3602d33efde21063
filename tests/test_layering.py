"""The import direction, shown by the folders: foundation (``gkp/foundation``) <- mechanisms
(``gkp/mechanisms``) <- entries (``gkp/entries``, ``baselines``, ``attacks``) <- application
(``gkp/application``: the registries, config, pipeline, command line).

Mechanisms (plans, surgery, layers, counting, the engine and evaluation, data splits) import no model,
dataset, method or attack, so each can be read and tested alone, and importing the engine loads none of
them. Checked on the source (every ``import``, function-level ones included, followed through the
project) and in a fresh interpreter (what importing the mechanisms really loads); and no module imports
itself through others (no import cycle anywhere)."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gkp", "baselines", "attacks")
LAYERS = ("foundation", "mechanisms", "entries", "application")


def layer_of(name: str) -> str:
    """The layer of a module, from its folder."""
    parts = name.split(".")
    if parts[0] in ("baselines", "attacks"):
        return "entries"
    if name == "gkp":
        return "foundation"
    if name == "gkp.__main__":
        return "application"
    return parts[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def parents(name: str) -> list[str]:
    """The packages Python imports before ``name`` (their __init__ modules)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def runtime_nodes(tree: ast.AST, facade: bool = False):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for annotations only) and, in
    the package's facade (``gkp/__init__.py``), its ``__getattr__``, which loads the public API on first use
    (``tests/test_api.py`` checks that importing ``gkp`` loads nothing of the application)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            continue
        if facade and isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            continue
        yield node
        yield from runtime_nodes(node)


@cache
def direct_imports(name: str) -> frozenset[str]:
    """Project modules ``name``'s source imports when it runs (at module level or inside functions)."""
    found = set(parents(name))
    for node in runtime_nodes(ast.parse(MODULES[name].read_text()), facade=name == "gkp"):
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


def below(layer: str) -> set[str]:
    """The layers a module of ``layer`` may import: its own and those under it."""
    return set(LAYERS[: LAYERS.index(layer) + 1])


def first_cycle() -> list[str] | None:
    """A chain of imports that leads from a module back to itself, if there is one."""
    for name in sorted(MODULES):
        for imported in sorted(direct_imports(name)):
            back = chain(imported, name)
            if back:
                return [name, *back]
    return None


def test_every_module_lives_in_a_layer_folder():
    unplaced = sorted(name for name in MODULES if layer_of(name) not in LAYERS)
    assert not unplaced, f"move these modules into gkp/{{{','.join(LAYERS)}}}/: {unplaced}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_only_its_layer_and_those_under_it(name):
    above = sorted(m for m in import_closure(name) if layer_of(m) not in below(layer_of(name)))
    assert not above, f"{name} ({layer_of(name)}) imports {above[0]} via {' -> '.join(chain(name, above[0]))}"


def test_no_module_imports_itself_through_others():
    cycle = first_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_importing_every_mechanism_loads_no_entry_in_a_fresh_interpreter():
    mechanisms = sorted(name for name in MODULES if layer_of(name) == "mechanisms")
    code = (
        "import importlib, sys\n"
        f"for name in {mechanisms!r}: importlib.import_module(name)\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in ('gkp', 'baselines', 'attacks'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "gkp.mechanisms.engine.train" in loaded and "gkp.mechanisms.engine.evaluate" in loaded
    assert sorted(m for m in loaded if layer_of(m) not in below("mechanisms")) == []


# ------------------------------------------------------------------------------------------- what a command loads

PROBE = """
import sys
from gkp.application.cli import main
for command in {commands!r}:
    assert main(command) == 0, command
ours = [(name, module) for name, module in sorted(sys.modules.items()) if name.split('.')[0] in {packages!r}]
entries = [name for name, module in ours if hasattr(module, 'ENTRY') or hasattr(module, 'ENTRIES')]
print('ENTRIES', ' '.join(entries))
"""


def entries_loaded_by(*commands: list[str]) -> set[str]:
    """The entry modules (those declaring ENTRY or ENTRIES) a fresh interpreter loads to run ``commands``."""
    probe = PROBE.format(commands=[list(command) for command in commands], packages=PACKAGES)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return set(next(line for line in out.splitlines() if line.startswith("ENTRIES")).split()[1:])


@pytest.fixture(scope="module")
def l1_fgsm_run(tmp_path_factory):
    """A run of L1 pruning evaluated under FGSM: its config, folder and the entry modules it loaded."""
    import yaml

    from conftest import tiny_config

    folder = tmp_path_factory.mktemp("l1_fgsm")
    config = tiny_config(train={"epochs": 1}, finetune={"epochs": 1}, attacks=[{"name": "fgsm", "eps": "8/255"}])
    (folder / "l1.yaml").write_text(yaml.safe_dump(config))
    loaded = entries_loaded_by(["run", str(folder / "l1.yaml"), "--out", str(folder / "run")])
    return folder, loaded


def test_a_run_loads_the_entries_its_config_names_and_no_other(l1_fgsm_run):
    _, loaded = l1_fgsm_run
    assert loaded == {
        "gkp.entries.models.resnet",  # resnet8
        "gkp.entries.datasets.synthetic",
        "baselines.l1",
        "attacks.fgsm",
        "gkp.entries.losses.cross_entropy",
        "gkp.entries.optimizers.sgd",
    }


def test_reading_or_converting_a_checkpoint_loads_no_method_attack_loss_or_optimizer(l1_fgsm_run):
    folder, _ = l1_fgsm_run
    checkpoint = str(folder / "run" / "finetuned.ckpt")
    loaded = entries_loaded_by(
        ["info", checkpoint], ["export", checkpoint, "--out", str(folder / "exported.safetensors")]
    )
    assert loaded == {"gkp.entries.models.resnet"}


def test_a_lookup_imports_the_module_of_its_entry_and_no_other():
    """resnet50 has a module of its own: the CIFAR family module ``resnet`` (also a candidate by name) stays
    unread; pgd_kl likewise leaves ``attacks.pgd`` alone."""
    code = (
        "import sys\n"
        "from gkp.application.catalog import ATTACKS, MODELS\n"
        "MODELS.get('resnet50'), ATTACKS.get('pgd_kl')\n"
        "print(' '.join(m for m in sys.modules if m.startswith(('gkp.entries.models.', 'attacks.'))))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert loaded == {"gkp.entries.models.resnet50", "gkp.entries.models.bottleneck_resnet", "attacks.pgd_kl"}
