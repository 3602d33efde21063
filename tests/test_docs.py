"""The docs match the code: the generated config reference is current, every key is documented, every
registered method, attack and command appears in the README (a starting page of at most 200 lines), and
every link between the pages resolves."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gkp.application.catalog import ATTACKS, PRUNING_METHODS
from gkp.application.cli import build_parser
from gkp.application.config import Experiment
from gkp.application.config_docs import DOCUMENT, config_reference
from gkp.foundation import settings

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_config_reference_is_generated_from_the_code():
    assert DOCUMENT.read_text() == config_reference(), (
        "docs/config.md is stale: run python -m gkp.application.config_docs"
    )


@dataclasses.dataclass
class Empty:
    """A section without keys of its own (the top-level keys, finetune: train's keys)."""


def test_the_config_reference_documents_every_config_key():
    reference = DOCUMENT.read_text()
    sections = {
        "model": settings.ModelConfig,
        "data": settings.DataConfig,
        "train": settings.TrainConfig,
        "prune": settings.PruneConfig,
        "eval": settings.EvalConfig,
    }
    for field in dataclasses.fields(Experiment):
        keys = [field.name, *(f"{field.name}.{f.name}" for f in dataclasses.fields(sections.get(field.name, Empty)))]
        for key in keys:
            assert f"`{key}`" in reference, f"{key} is missing from docs/config.md"
    assert "## `finetune`\n\nEvery key of `train`" in reference


def documented_classes() -> list[tuple[str, type]]:
    sections = [c for c in vars(settings).values() if isinstance(c, type) and dataclasses.is_dataclass(c)]
    return [
        ("experiment", Experiment),
        *((cls.__name__, cls) for cls in sections if cls.__module__ == settings.__name__),
        *((f"prune.params of {name}", method.params) for name, method in PRUNING_METHODS.items()),
        *((f"attack {name}", attack.params) for name, attack in ATTACKS.items()),
    ]


@pytest.mark.parametrize("owner, cls", documented_classes(), ids=lambda value: str(value))
def test_every_key_has_a_doc(owner, cls):
    undocumented = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("doc")]
    assert not undocumented, f"{owner}: give these fields a doc (gkp.foundation.schema.option(doc=...)): {undocumented}"


def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_the_readme_is_a_starting_page():
    """At most 200 lines: the reference and the reproducing detail live in docs/."""
    assert len(readme().splitlines()) <= 200


def test_the_readme_lists_every_command_method_and_attack():
    commands = build_parser()._subparsers._group_actions[0].choices
    text = readme()
    assert [c for c in commands if f"gkp {c}" not in text and not re.search(rf"\|{c}\b", text)] == []
    assert [m for m in PRUNING_METHODS.names() if f"`{m}`" not in text] == []
    assert [a for a in ATTACKS.names() if f"`{a}` |" not in text] == []
    for script in re.findall(r"bash (scripts/\S+\.sh)", text):
        assert (ROOT / script).is_file(), script


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_between_the_pages_resolves(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name} links to {target}: no such heading"
