"""gkp table: the paper's numbers as transcribed (checked against the spec), and our runs in its layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gkp.cli import main
from gkp.tables import paper_table, table_rows


def spec_rows(shared: Path) -> list[tuple[str, str, list[float | None]]]:
    """Table 10's rows as ../shared/specs/paper.md prints them."""
    text = (shared / "specs" / "paper.md").read_text()
    section = text[text.index("### Table 2 / Table 10") :]
    section = section[: section.index("Paper's text for this table")]
    rows, method = [], None
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith(("|---", "| Method")):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0]:
            method = re.sub(r"\s*\(T10 only\)", "", cells[0].replace("**", ""))
        values = [float(m.group(1)) if (m := re.match(r"\*{0,2}([\d.]+)", c)) else None for c in cells[2:8]]
        rows.append((method, cells[1].replace("–", "-"), values))
    return rows


def test_the_data_file_holds_the_papers_table10_as_printed(shared):
    rows = [(method, row, values) for method, row, *values in paper_table("table10")["rows"]]
    assert rows == spec_rows(shared)


def entry(model: str, benign: float, attacks: dict[str, float], macs: float = 71.855e6) -> dict:
    scored = [{"label": label, "accuracy": value} for label, value in attacks.items()]
    return {"model": model, "benign": {"accuracy": benign}, "attacks": scored, "macs": macs, "params": 482_000}


ATTACKS = {"fgsm_0.01": 0.76, "fgsm_0.1": 0.45, "pgd_3": 0.44}


def test_runs_fill_the_papers_layout_row_by_row(tmp_path, capsys):
    srgkp = {
        "name": "SR-GKP",
        **entry("final", 0.93, ATTACKS),
        "other_models": [
            entry("best_benign", 0.9408, ATTACKS),
            entry("best_fgsm_0.01", 0.9383, {**ATTACKS, "fgsm_0.01": 0.7640}),
            entry("dense", 0.9324, ATTACKS, macs=126.561e6),
        ],
    }
    rap = {"name": "RAP-ADMM", **entry("masked", 0.7837, ATTACKS, macs=71.661e6), "other_models": []}
    for results in (srgkp, rap):
        (tmp_path / results["name"]).mkdir()
        (tmp_path / results["name"] / "results.json").write_text(json.dumps(results))
    rows = {(method, row): ours for method, row, ours, _ in table_rows("table10", [srgkp, rap])}
    assert rows[("SR-GKP", "BB")][0] == pytest.approx(94.08) and rows[("SR-GKP", "(a)=(b)")][1] == pytest.approx(76.40)
    assert rows[("Unpruned", "-")][0] == pytest.approx(93.24) and rows[("Unpruned", "-")][4] == pytest.approx(126.561)
    assert rows[("RAP-ADMM", "-")][0] == pytest.approx(78.37) and rows[("CC", "BB")] == [None] * 6
    assert main(["table", str(tmp_path / "SR-GKP"), str(tmp_path / "RAP-ADMM"), "--paper", "table10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| Method | Row | Benign | FGSM .01 | FGSM .1 | PGD | MACs (M) | Params (M) |"
    assert len(lines) == 4 + len(paper_table("table10")["rows"])
    srgkp_bb = next(line for line in lines if line.startswith("| SR-GKP | BB |"))
    assert "94.08 / 94.08 (+0.00)" in srgkp_bb and "| CC | BB | - / 94.04 |" in "\n".join(lines)
    assert main(["table", str(tmp_path / "SR-GKP"), "--paper", "table10", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("method,row,benign_ours,benign_paper")
