"""The paper's Tables 2-7 and 9-19 read from ../shared/specs/paper.md, in its several formats (pipe tables,
compact "BB/(a)/(b)" cells, bullet lists), as rows of ``gkp/application/reports/paper_tables.yaml``: [part,]
method, row, values. Read from the spec's text so that the data file is checked against it, not against a copy."""

from __future__ import annotations

import re
from pathlib import Path

Row = list  # [part?, method, row, *values]

LABEL = r"(?:BB|\([a-d]\))(?:\s*[=&]\s*(?:BB|\([a-d]\)))*"
NUMBERS = r"[\d.]+(?:/[\d.]+)+"
METHOD_END = re.compile(rf":?\s+(?={LABEL}\s|{NUMBERS})")


def section(text: str, start: str, end: str) -> str:
    body = text[text.index(start) :]
    return body[: body.index(end, len(start))]


def _number(text: str) -> float | None:
    text = text.strip().strip('"')
    return None if text in ("-", "–", "") else float(text)


def compact_rows(method: str, text: str, sizes: int) -> list[Row]:
    """Rows of one method from "BB 1/2/3; (a) 4/5/6; MACS; PARAMS" (or "1/2/3 (MACS; PARAMS)"): the MACs
    and parameters, where printed, on its first row; ``sizes`` is how many such columns the table has."""
    text = text.replace("**", "").strip().rstrip(".")
    text = re.sub(r"\s*\(([\d.]+); ([\d.]+)\)$", r"; \1; \2", text)
    rows, extra = [], []
    for piece in (p.strip() for p in text.split(";")):
        if labelled := re.fullmatch(rf"({LABEL})\s+({NUMBERS})", piece):
            rows.append([method, labelled[1], *map(float, labelled[2].split("/"))])
        elif re.fullmatch(NUMBERS, piece):
            rows.append([method, "-", *map(float, piece.split("/"))])
        else:
            extra.append(_number(piece))
    assert len(extra) in (0, sizes), f"{method}: {text!r}"
    return [row + (extra if i == 0 and extra else [None] * sizes) for i, row in enumerate(rows)]


def bullet_rows(line: str, sizes: int) -> list[Row]:
    """A bullet "- METHOD[:] ROWS" (Tables 11, 12, 17-19)."""
    body = line.strip().removeprefix("- ").replace("**", "")
    end = METHOD_END.search(body)
    method = body[: end.start()].strip()
    return compact_rows(RUN_NAMES.get(method, method), body[end.end() :], sizes)


def _pipe_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _pipe_lines(body: str) -> list[list[str]]:
    lines = [line for line in body.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [_pipe_cells(line) for line in lines[1:]]  # without the header


def _leading_number(cell: str) -> float | None:
    found = re.match(r"\*{0,2}([\d.]+)", cell)
    return float(found[1]) if found else None


def table10(text: str) -> tuple[list[Row], set[str]]:
    """Table 10's rows and the methods it alone has (Table 2 is the rest)."""
    rows, method, only10 = [], None, set()
    for cells in _pipe_lines(section(text, "### Table 2 / Table 10", "Paper's text for this table")):
        if cells[0]:
            method = re.sub(r"\s*\(T10 only\)", "", cells[0].replace("**", ""))
            if "(T10 only)" in cells[0]:
                only10.add(method)
        rows.append([method, cells[1].replace("–", "-"), *map(_leading_number, cells[2:8])])
    return rows, only10


def table9(text: str) -> list[Row]:
    rows = []
    for method, labels, values, *rest in _pipe_lines(section(text, "### Table 9:", "(In each compact")):
        method = method.replace("**", "")
        if labels in ("–", "-"):
            numbers = values.split("/") if "/" in values else [values, *rest[:3]]
            rows.append([method, "-", *map(float, numbers), *map(_number, rest[-2:])])
            continue
        sizes = list(map(_number, rest[-2:]))
        for i, (label, numbers) in enumerate(zip(labels.replace(" ", "").split("/"), values.split(";"), strict=True)):
            rows.append([method, label, *map(float, numbers.strip().split("/")), *(sizes if i == 0 else [None, None])])
    return rows


def bullet_table(text: str, start: str, end: str) -> list[Row]:
    """Tables 11 and 12: one bullet per method."""
    body = section(text, start, end)
    return [row for line in body.splitlines() if line.startswith("- ") for row in bullet_rows(line, 2)]


def table3(text: str) -> list[Row]:
    body = section(text, "### Table 3:", "- Two baselines")
    return [[baseline, method, "-", *map(float, values)] for method, baseline, *values in _pipe_lines(body)]


def table13(text: str) -> list[Row]:
    body = section(text, "### Table 13:", "### Table 1:")
    r56 = re.search(r"\*\*ResNet-56:\*\* (.*)", body)[1].replace("**", "")
    rows = []
    for method, rest in re.findall(r"(Unpruned|SR-GKP|TMI-GKP) (.*?)(?=\. [A-Z]|\.$)", r56):
        if "(same MACs/params)" in rest:  # as the row before
            rest = rest.replace("(same MACs/params)", "({}; {})".format(*rows[-1][-2:]))
        rows += [["ResNet-56", *row] for row in compact_rows(method, rest, 2)]
    r101 = body[body.index("**ResNet-101:**") :]
    head = re.search(r"Unpruned ([\d./]+) \(([\d.]+); ([\d.]+)\)", r101)
    rows.append(["ResNet-101", "Unpruned", "-", *map(float, head[1].split("/")), float(head[2]), float(head[3])])
    for line in r101.splitlines():
        if found := re.match(r"\s+- (?:\*\*)?(SR-GKP|TMI-GKP)(?:\*\*)?(?: \(([\d.]+); ([\d.]+)\))?: (.*)", line):
            sizes = f"; {found[2]}; {found[3]}" if found[2] else ""
            rows += [["ResNet-101", *row] for row in compact_rows(found[1], found[4].rstrip(".") + sizes, 2)]
    return rows


RUN_NAMES = {  # the spec's labels (which vary between Tables 4 and 5) and the data file's, folder names
    "TMI-driven clustering + Greedy": "TMI-Greedy",
    "TMI + Greedy": "TMI-Greedy",
    "Smoothness Snaking + Greedy": "Snaking-Greedy",
    "Snaking + Greedy": "Snaking-Greedy",
    "Snaking + Least Smooth": "Snaking-LeastSmooth",
    'Snaking + "Least Greedy" [sic; means Least Smooth]': "Snaking-LeastSmooth",
    "Snaking + Smooth Beam Greedy": "Snaking-SmoothBeamGreedy",
    "OTOv2 from scratch": "OTOv2-scratch",
    "OTOv2 post-train": "OTOv2-post-train",
}


def _blocks(body: str) -> dict[str, tuple[str, list[str]]]:
    """The spec's "**ResNet-N** (unpruned ...):" blocks: their heading's remainder and bullet lines."""
    blocks, current = {}, None
    for line in body.splitlines():
        if found := re.match(r"-? ?\*\*(ResNet-\d+):?\*\*(.*)", line):
            current = found[1]
            blocks[current] = (found[2], [])
        elif current and line.strip().startswith("- "):
            blocks[current][1].append(line.strip()[2:])
    return blocks


def _sentence(text: str) -> str:
    """The rows of an entry, without a trailing remark ("These differ ...", "**This is ...**")."""
    return re.split(r"\.\s+(?=\*\*|[A-Z])", text.strip())[0]


def ablations(text: str) -> dict[str, list[Row]]:
    body = section(text, "### Ablations: Tables 4 and 5", "### Table 6")
    tables = {}
    for table, arch in (("table4", "ResNet-32"), ("table5", "ResNet-56")):
        heading, lines = _blocks(body)[arch]
        rows = [["Unpruned", "-", *map(float, re.search(r"unpruned ([\d./]+)", heading)[1].split("/"))]]
        for line in lines:
            label, rest = line.split(": ", 1)
            rows += compact_rows(RUN_NAMES[label], _sentence(rest), 0)
        tables[table] = rows
    return tables


def table6(text: str) -> list[Row]:
    body = section(text, "### Table 6:", "- The paper's conclusion")
    rows = []
    for arch, (entries, _) in _blocks(body).items():
        for entry in entries.strip(" :").rstrip(".").split(";"):
            name, numbers = entry.strip().rsplit(" ", 1)
            method = "SFP-" + name.rstrip(":").replace(" ", "-") if name != "SFP" else name
            rows.append([arch, method, "-", *map(float, numbers.split("/"))])
    return rows


def _seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(value) * units[unit] for value, unit in re.findall(r"(\d+)([hms])", text))


def table7(text: str) -> list[Row]:
    body = section(text, "**Table 7, wall-clock times:**", "- The paper says")
    archs, rows = ("ResNet-32", "ResNet-56", "ResNet-110"), []
    for method, *times in _pipe_lines(body):
        for arch, grouping, total in zip(archs, times[::2], times[1::2], strict=True):
            rows.append([arch, method, "-", _seconds(grouping), _seconds(total)])
    return sorted(rows, key=lambda row: archs.index(row[0]))


def csb(text: str) -> dict[str, list[Row]]:
    body = section(text, "### Tables 14–16", "- So the reported models")
    tables = {}
    for table, arch in (("table14", "ResNet-32"), ("table15", "ResNet-56"), ("table16", "ResNet-110")):
        rows = []
        for line in _blocks(body)[arch][1]:
            alphas, rest = line.split(": ", 1)
            for alpha in re.sub(r"\s*\(identical\)", "", alphas).split(" and "):
                rows += compact_rows(f"CSB-{alpha}", _sentence(rest), 0)
        tables[table] = rows
    return tables


def pruning_rate_625(text: str) -> dict[str, list[Row]]:
    body = section(text, "### Tables 17–19", "**Table 20")
    tables = {}
    for table, arch in (("table17", "ResNet-32"), ("table18", "ResNet-56"), ("table19", "ResNet-110")):
        heading, lines = _blocks(body)[arch]
        rows = [["Unpruned", "-", *map(float, re.search(r"unpruned ([\d./]+)", heading)[1].split("/")), None, None]]
        for line in lines:
            if copied := re.search(r"OTOv2 rows look copy-pasted .*? to (\d+\.\d+)", line):
                otov2 = [list(row) for row in tables["table18"] if row[0].startswith("OTOv2")]
                otov2[0][2] = float(copied[1])  # "only the from-scratch benign changes"
                rows += otov2
            else:
                rows += bullet_rows("- " + line, 2)
        tables[table] = rows
    return tables


def paper_tables(spec: Path) -> dict[str, list[Row]]:
    """Every table of the data file, as the spec prints it."""
    text = spec.read_text()
    rows10, only10 = table10(text)
    return {
        "table2": [row for row in rows10 if row[0] not in only10],
        "table3": table3(text),
        **ablations(text),
        "table6": table6(text),
        "table7": table7(text),
        "table9": table9(text),
        "table10": rows10,
        "table11": bullet_table(text, "### Table 11:", "On ResNet-110"),
        "table12": bullet_table(text, "### Table 12:", "### Table 3:"),
        "table13": table13(text),
        **csb(text),
        **pruning_rate_625(text),
    }
