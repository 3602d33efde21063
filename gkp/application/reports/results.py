"""Plain-text tables of results for the terminal: one run's ``results.json``, or several side by side, and
the attacks of one run in detail."""

from __future__ import annotations

import json
from typing import Any

from gkp.foundation.errors import RunFolderError


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _percent_or_dash(value: float | None) -> str:
    return "-" if value is None else _percent(value)


def _aligned(row: list[str], widths: list[int]) -> str:
    """First column left-aligned (names), the others right-aligned (numbers)."""
    cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
    return "  ".join(cells)


def _has_zeroed_weights(entry: dict[str, Any]) -> bool:
    return "nonzero_params" in entry and entry["nonzero_params"] < entry.get("params", 0)


def _millions(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.3f}"


def _unbounded(attack: dict[str, Any]) -> bool:
    """A minimum-norm attack without eps: it bounds no threat model, so it has a median norm, not an accuracy."""
    return "median_norm" in attack and attack.get("params", {}).get("eps") is None


def _labels(runs: tuple[dict[str, Any], ...], unbounded: bool) -> list[str]:
    labels: list[str] = []
    for results in runs:
        labels += [a["label"] for a in results["attacks"] if _unbounded(a) == unbounded and a["label"] not in labels]
    return labels


def _norm_header(runs: tuple[dict[str, Any], ...], label: str) -> str:
    norm = next(a.get("params", {}).get("norm", "") for r in runs for a in r["attacks"] if a["label"] == label)
    return f"{label} median {norm}"


def _data(results: dict[str, Any]) -> str:
    return f"{results.get('data', '?')} ({results['benign']['total']})"


def _run_columns(results: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    """method and rate of a row; the dense model has neither."""
    pruned = not str(entry.get("model", "")).startswith("dense")
    method, rate = results.get("method"), results.get("rate")
    return [str(method) if pruned and method else "-", f"{rate:g}" if pruned and rate is not None else "-"]


def check_results(results: dict[str, Any], source: str) -> None:
    """A RunFolderError naming ``source`` unless ``results`` holds what an evaluation writes for each of its
    models: the benign accuracy and a list of attacks with labels and accuracies (what every report reads;
    a table shows '-' for what else is missing)."""
    for entry in [results, *(results.get("other_models") or [])]:
        problem = _entry_problem(entry) if isinstance(entry, dict) else "a model's entry is not a mapping"
        if problem:
            raise RunFolderError(
                f"{source} is not what gkp eval writes ({problem}); evaluate again: gkp eval CONFIG --out FOLDER"
            )


def _entry_problem(entry: dict[str, Any]) -> str | None:
    number = (int, float)
    if not isinstance(entry.get("benign"), dict) or not isinstance(entry["benign"].get("accuracy"), number):
        return "no benign accuracy"
    attacks = entry.get("attacks")
    if not isinstance(attacks, list) or not all(
        isinstance(a, dict)
        and isinstance(a.get("label"), str)
        and isinstance(a.get("accuracy"), number)
        and isinstance(a.get("params", {}), dict)
        for a in attacks
    ):
        return "no list of attacks with labels and accuracies"
    return None


def results_table(*runs: dict[str, Any], names: list[str] | None = None) -> str:
    """One row per evaluated model of each run: params, MACs, benign, each attack and the worst case
    (accuracy in %). With several runs, rows are named ``run/model`` (``names``: the runs' folder names,
    default their config names), a method and a rate column say what each row is, missing attacks show
    as '-', and runs on different data get a data column. When a model has filters zeroed in place (a
    training-time method's masked model), a column gives the SR-GKP authors' MACs, which count only
    non-zero weights. Minimum-norm attacks without eps bound no threat model: they get a column of their
    median adversarial norm, after the accuracies."""
    names = names or [results["name"] for results in runs]
    labels, unbounded = _labels(runs, unbounded=False), _labels(runs, unbounded=True)
    entries = _once([(i, r, e) for i, r in enumerate(runs) for e in [r, *r.get("other_models", [])]])
    several, authors = len(runs) > 1, any(_has_zeroed_weights(entry) for _, _, entry in entries)
    data = len({_data(results) for results in runs}) > 1
    header = ["model", *(["method", "rate"] if several else []), *(["data"] if data else [])]
    header += ["params (M)", "MACs (M)", *(["authors' MACs (M)"] if authors else []), "benign", *labels]
    header += (["worst case"] if labels else []) + [_norm_header(runs, label) for label in unbounded]
    rows = []
    for index, results, entry in entries:
        attacks = {a["label"]: a for a in entry["attacks"]}
        model = str(entry.get("model", "-"))
        row = [f"{names[index]}/{model}" if several else model]
        row += _run_columns(results, entry) if several else []
        row += [_data(results)] if data else []
        row += [_millions(entry.get("params")), _millions(entry.get("macs"))]
        row += [_millions(entry.get("authors_macs"))] if authors else []
        row += [_percent(entry["benign"]["accuracy"])]
        row += [_percent(attacks[label]["accuracy"]) if label in attacks else "-" for label in labels]
        row += [_percent_or_dash((entry.get("worst_case") or {}).get("accuracy"))] if labels else []
        row += [_norm(attacks.get(label, {}).get("median_norm")) for label in unbounded]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    title = ", ".join(dict.fromkeys(names))
    images = "" if data else f" on {runs[0]['benign']['total']} test images"
    return "\n".join([f"{title}: accuracy (%){images}", *(_aligned(r, widths) for r in [header, *rows])])


def results_records(*runs: dict[str, Any], names: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of ``results_table`` as records for other programs (``gkp compare --csv`` / ``--json``):
    the run's name, the model, its method, rate and data, its counts (params, MACs, the authors' and the
    method's own MACs where measured) and its accuracies as fractions (None where an attack was not run),
    the worst case and the median norms of minimum-norm attacks."""
    names = names or [results["name"] for results in runs]
    labels, unbounded = _labels(runs, unbounded=False), _labels(runs, unbounded=True)
    entries = _once([(i, r, e) for i, r in enumerate(runs) for e in [r, *r.get("other_models", [])]])
    records = []
    for index, results, entry in entries:
        attacks = {a["label"]: a for a in entry["attacks"]}
        pruned = not str(entry.get("model", "")).startswith("dense")
        record = {
            "run": names[index],
            "model": entry.get("model"),
            "method": results.get("method") if pruned else None,
            "rate": results.get("rate") if pruned else None,
            "data": results.get("data"),
            "test_images": entry["benign"]["total"],
            **{key: entry.get(key) for key in ("params", "macs", "authors_macs", "method_macs")},
            "benign": entry["benign"]["accuracy"],
            **{label: attacks[label]["accuracy"] if label in attacks else None for label in labels},
            "worst_case": (entry.get("worst_case") or {}).get("accuracy"),
            **{f"{label} median norm": attacks.get(label, {}).get("median_norm") for label in unbounded},
        }
        records.append(record)
    return records


def hparams_of(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """What TensorBoard's HParams view compares a run by: its settings (name, method, rate, data) and, per
    evaluated model, its benign, per-attack and worst-case accuracies and its params and MACs (millions)."""
    records = results_records(results)
    settings = {key: records[0][key] for key in ("run", "method", "rate", "data")}
    hparams = {key: "none" if value is None else value for key, value in settings.items()}
    skipped = {"run", "model", "method", "rate", "data", "test_images"}
    metrics = {}
    for record in records:
        for key, value in record.items():
            if key not in skipped and isinstance(value, (int, float)) and not isinstance(value, bool):
                scale = 1e6 if key in ("params", "macs", "authors_macs", "method_macs") else 1
                metrics[f"{record['model']}/{key}"] = value / scale
    return hparams, metrics


def _once(entries: list[tuple[int, dict, dict]]) -> list[tuple[int, dict, dict]]:
    """The entries without repeats: one model (the same checkpoint) evaluated alike in several runs, as the
    dense model every cell of a sweep starts from, is shown once."""
    seen, kept = set(), []
    for index, results, entry in entries:
        key = json.dumps([entry.get("checkpoint"), entry.get("benign"), entry.get("attacks")], sort_keys=True)
        if entry.get("checkpoint") is None or key not in seen:
            seen.add(key)
            kept.append((index, results, entry))
    return kept


def _worst_of(results: dict[str, Any]) -> str:
    """What the worst case is over: robust under every attack with a bound, minimum-norm attacks without
    eps left out (they bound no threat model: their median norm is the figure)."""
    bounded = [a["label"] for a in results["attacks"] if not _unbounded(a)]
    unbounded = [a["label"] for a in results["attacks"] if _unbounded(a)]
    over = f"clean and under all of {', '.join(bounded)}" if bounded else "clean"
    return over + (f"; not {', '.join(unbounded)} (minimum-norm, no eps)" if unbounded else "")


def _norm(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _setting(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def attacks_table(results: dict[str, Any]) -> str:
    """The attacks of one run's first evaluated model: correct / total, wall time and resolved parameters."""
    header = ["attack", "correct / total", "seconds", "parameters"]
    rows = [
        [
            entry["label"],
            f"{entry['correct']} / {entry['total']}",
            f"{entry['seconds']:.1f}",
            " ".join(f"{key}={_setting(value)}" for key, value in entry["params"].items()),
        ]
        for entry in results["attacks"]
    ]
    worst = results["worst_case"]
    rows.append(["worst case", f"{worst['correct']} / {worst['total']}", f"{worst['seconds']:.1f}", _worst_of(results)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [(_aligned(r[:3], widths[:3]) + "  " + r[3]).rstrip() for r in [header, *rows]]
    return "\n".join([f"{results['model']}: attacks on {results['benign']['total']} test images", *lines])
