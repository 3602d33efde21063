"""What a new user trips over: bad inputs that must stop with one line naming the problem and the fix (a
table), the command line's list, version and help, the compare table, labels, suites and subsets."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gkp.application.catalog import load_data
from gkp.application.cli import COMMANDS, build_parser, main
from gkp.application.config import build_experiment, load_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.application.reports.results import results_table
from gkp.foundation.settings import DataConfig

from conftest import tiny_config, write_config

CPU = "cpu"
ONE_EPOCH = {"train": {"epochs": 1}, "stages": ["train"]}


def npz(path: Path, count: int, labels=None) -> str:
    images = np.random.default_rng(0).integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
    np.savez(path, images=images, labels=np.arange(count) % 3 if labels is None else np.asarray(labels))
    return str(path)


def _empty_npz(tmp: Path) -> tuple[dict, str]:
    data = {"name": "npz", "train_path": npz(tmp / "a.npz", 0), "test_path": npz(tmp / "b.npz", 4)}
    return tiny_config(data=data, **ONE_EPOCH), str(tmp / "run")


def _gappy_labels(tmp: Path) -> tuple[dict, str]:
    train = npz(tmp / "a.npz", 40, labels=[0, 1, 2, 37] * 10)
    data = {"name": "npz", "train_path": train, "test_path": npz(tmp / "b.npz", 4)}
    return tiny_config(data=data, **ONE_EPOCH), str(tmp / "run")


def _out_is_a_file(tmp: Path) -> tuple[dict, str]:
    (tmp / "notes.md").write_text("mine")
    return tiny_config(**ONE_EPOCH), str(tmp / "notes.md")


def _out_under_a_file(tmp: Path) -> tuple[dict, str]:
    (tmp / "notes.md").write_text("mine")
    return tiny_config(**ONE_EPOCH), str(tmp / "notes.md" / "run")


def _out_holds_other_files(tmp: Path) -> tuple[dict, str]:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("mine")
    return tiny_config(**ONE_EPOCH), str(tmp / "mine")


def _out_unwritable(tmp: Path) -> tuple[dict, str]:
    return tiny_config(**ONE_EPOCH), "/proc/gkp-run"


def _classes_unlike_the_checkpoint(tmp: Path) -> tuple[dict, str]:
    from gkp.application.catalog import build_model
    from gkp.application.checkpoints.io import save_checkpoint

    save_checkpoint(tmp / "ten.ckpt", build_model("resnet8", num_classes=10))
    model = {"arch": None, "checkpoint": str(tmp / "ten.ckpt"), "num_classes": 100}
    return tiny_config(model=model, stages=["eval"], attacks=[]), str(tmp / "run")


def _missing_relative_npz(tmp: Path) -> tuple[dict, str]:
    data = {"name": "npz", "train_path": "data/nowhere.npz", "test_path": npz(tmp / "b.npz", 4)}
    return tiny_config(data=data, **ONE_EPOCH), str(tmp / "run")


BAD_RUNS = [
    ("npz without images", _empty_npz, "a.npz holds no images"),
    ("npz labels with gaps", _gappy_labels, "labels run up to 37, so the model would have 38 classes, but 34"),
    ("--out is a file", _out_is_a_file, "notes.md is a file, not a folder; pass --out a new or empty folder"),
    ("--out under a file", _out_under_a_file, "cannot be a run folder (Not a directory); pass --out a folder"),
    ("--out holds other files", _out_holds_other_files, "holds other files and is not a run folder"),
    ("--out cannot be made", _out_unwritable, "/proc/gkp-run cannot be a run folder"),
    ("num_classes unlike the checkpoint", _classes_unlike_the_checkpoint, "the config says 100 but model.checkpoint"),
    ("a relative npz path that is not there", _missing_relative_npz, "relative paths are read from the current folder"),
]


@pytest.mark.parametrize("make, message", [(m, t) for _, m, t in BAD_RUNS], ids=[n for n, _, _ in BAD_RUNS])
def test_bad_runs_stop_with_one_line_naming_the_problem(make, message, tmp_path, capsys):
    config, out = make(tmp_path)
    path = write_config(tmp_path / "x.yaml", config)
    assert main(["run", str(path), "--out", out]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("gkp: error: ") and "\n" not in error and message in error, error
    if "holds other files" in message:
        assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]  # nothing written beside


def test_a_truncated_authors_file_says_it_is_truncated(tmp_path, shared):
    from gkp.application.checkpoints.authors import import_authors_resnet
    from gkp.foundation.errors import CheckpointError

    whole = (shared / "checkpoints" / "adv_robust_gkp_resnet20_cifar10.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    assert not zipfile.is_zipfile(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="truncated or corrupt .download it again and check its sha256"):
        import_authors_resnet(tmp_path / "cut.pt", tmp_path / "out.ckpt")


def test_a_changed_training_setting_is_named_by_its_key_path(tmp_path):
    from gkp.foundation.errors import RunFolderError

    config = tiny_config(stages=["train"], train={"epochs": 1, "schedule": "multistep", "milestones": [1, 2]})
    run_experiment(build_experiment(config), out=tmp_path / "run")
    config["train"]["milestones"] = [1, 3]
    with pytest.raises(RunFolderError, match=r"\(train\.milestones\[1\]: 2 -> 3\)"):
        run_experiment(build_experiment(config), out=tmp_path / "run")


EVAL_ONLY = {"stages": ["eval"], "attacks": [{"name": "fgsm"}, {"name": "pgd", "steps": 2}]}


def test_a_finished_run_is_evaluated_again_with_other_attacks_and_keeps_both_results(tmp_path):
    config = tiny_config(**copy.deepcopy(EVAL_ONLY), model={"checkpoint": str(_checkpoint(tmp_path))})
    first = run_experiment(build_experiment(config), out=tmp_path / "run")
    checkpoint_time = (tmp_path / "m.ckpt").stat().st_mtime_ns
    config["attacks"][1]["steps"] = 3
    config["eval"] = {"models": ["final", "dense"]}
    second = run_experiment(build_experiment(config), out=tmp_path / "run")
    assert first["attacks"][1]["params"]["steps"] == 2 and second["attacks"][1]["params"]["steps"] == 3
    assert len(second["other_models"]) == 1 and (tmp_path / "m.ckpt").stat().st_mtime_ns == checkpoint_time
    evaluations = sorted((tmp_path / "run" / "evaluations").iterdir())
    kept = [
        json.loads((folder / "results.json").read_text())["attacks"][1]["params"]["steps"] for folder in evaluations
    ]
    assert sorted(kept) == [2, 3] and json.loads((tmp_path / "run" / "results.json").read_text()) == second


def test_an_interrupted_evaluation_resumes_after_its_finished_attacks(tmp_path, monkeypatch):
    import dataclasses

    from gkp.application.catalog import ATTACKS

    config = tiny_config(**copy.deepcopy(EVAL_ONLY), model={"checkpoint": str(_checkpoint(tmp_path))})
    straight = run_experiment(build_experiment(config), out=tmp_path / "straight")
    calls = {"fgsm": 0}
    fgsm, pgd = ATTACKS.get("fgsm"), ATTACKS.get("pgd")

    def counting_fgsm(*args):
        calls["fgsm"] += 1
        return fgsm.run(*args)

    def interrupted_pgd(*args):
        raise KeyboardInterrupt

    exp = build_experiment(config)
    broken = [
        dataclasses.replace(a, attack=dataclasses.replace(a.attack, run=interrupted_pgd)) if a.name == "pgd" else a
        for a in exp.attacks
    ]
    with pytest.raises(KeyboardInterrupt):
        run_experiment(dataclasses.replace(exp, attacks=tuple(broken)), out=tmp_path / "run")
    assert (tmp_path / "run" / "evaluations").is_dir()
    counted = [
        dataclasses.replace(a, attack=dataclasses.replace(fgsm, run=counting_fgsm)) if a.name == "fgsm" else a
        for a in exp.attacks
    ]
    resumed = run_experiment(dataclasses.replace(exp, attacks=tuple(counted)), out=tmp_path / "run")
    assert calls["fgsm"] == 0 and pgd is exp.attacks[1].attack  # fgsm's finished results were kept
    assert [a["correct"] for a in resumed["attacks"]] == [a["correct"] for a in straight["attacks"]]
    assert resumed["worst_case"]["correct"] == straight["worst_case"]["correct"]
    assert not any((tmp_path / "run" / "evaluations").glob("*/partial"))


def _checkpoint(tmp_path: Path) -> Path:
    from gkp.application.catalog import build_model
    from gkp.application.checkpoints.io import save_checkpoint

    save_checkpoint(tmp_path / "m.ckpt", build_model("resnet8", num_classes=10))
    return tmp_path / "m.ckpt"


# ------------------------------------------------------------------------------------------- config


def test_an_unlabelled_attack_keeps_its_name_beside_a_labelled_one():
    attacks = [{"name": "fmn", "label": "fmn_l2", "norm": "l2"}, {"name": "fmn"}]
    assert [a.label for a in build_experiment(tiny_config(attacks=attacks)).attacks] == ["fmn_l2", "fmn"]
    twice = [{"name": "pgd", "label": "pgd"}, {"name": "pgd"}, {"name": "pgd"}]
    assert [a.label for a in build_experiment(tiny_config(attacks=twice)).attacks] == ["pgd", "pgd_1", "pgd_2"]


def test_set_reaches_an_attack_of_a_suite(tmp_path):
    path = write_config(tmp_path / "x.yaml", tiny_config(attacks=[{"suite": "paper-cifar"}]))
    exp = load_experiment(path, ["attacks.2.steps=20"])
    assert [a.label for a in exp.attacks] == ["fgsm_0.01", "fgsm_0.1", "pgd_3"] and exp.attacks[2].params.steps == 20
    assert exp.attacks[2].space == "normalized"  # the rest of the suite's setting stays


def test_the_first_n_images_instead_of_a_seeded_subset():
    first = load_data(DataConfig(name="digits", test_size=50, subset="first"), CPU)
    seeded = load_data(DataConfig(name="digits", test_size=50), CPU)
    full = load_data(DataConfig(name="digits"), CPU)
    index = torch.arange(50)
    (x_first, y_first), *_ = first.test.take(index, 50)
    (x_full, y_full), *_ = full.test.take(index, 50)
    assert (x_first == x_full).all() and (y_first == y_full).all()
    (x_seeded, _), *_ = seeded.test.take(index, 50)
    assert not (x_seeded == x_full).all()


# ------------------------------------------------------------------------------------------- command line


def test_gkp_list_names_every_registered_entry(capsys):
    from gkp.application.catalog import ATTACKS, DATASETS, LOSSES, MODELS, OPTIMIZERS, PRUNING_METHODS, SUITES

    assert main(["list"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    registries = (PRUNING_METHODS, ATTACKS, SUITES, MODELS, DATASETS, LOSSES, OPTIMIZERS)
    assert names == {name for registry in registries for name in registry.names()}
    assert (
        main(["list", "suites"]) == 0 and capsys.readouterr().out.splitlines()[0] == "attack suites (attacks[].suite):"
    )


def test_version_and_a_help_with_an_example_for_every_command(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("gkp ")
    assert main(["run"]) == 2  # a missing argument: one line, where to read more
    assert (
        capsys.readouterr().err
        == "gkp: error: gkp run: the following arguments are required: config (see gkp run --help)\n"
    )
    parser = build_parser()
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            parser.parse_args([command.name, "--help"])
        text = capsys.readouterr().out
        assert f"example:\n  gkp {command.name}" in text
        arguments = parser._subparsers._group_actions[0].choices[command.name]._actions
        assert all(action.help for action in arguments), command.name


# ------------------------------------------------------------------------------------------- compare


def _results(name: str, method: str | None, data: str, total: int, attacks: list[dict]) -> dict:
    entry = {"params": 10**6, "macs": 2 * 10**6, "benign": {"accuracy": 0.5, "total": total}, "attacks": attacks}
    worst = {"worst_case": {"accuracy": 0.25}}
    return {
        "name": name,
        "method": method,
        "rate": 0.5 if method else None,
        "data": data,
        "model": "final",
        **entry,
        **worst,
    }


def test_compare_names_rows_by_folder_says_what_each_is_and_keeps_median_norms_apart():
    pgd = {"label": "pgd", "accuracy": 0.25, "params": {"eps": 0.03, "norm": "linf"}}
    fmn = {"label": "fmn", "accuracy": 0.0, "params": {"eps": None, "norm": "l2"}, "median_norm": 0.4321}
    runs = [_results("same", "l1", "cifar10", 100, [pgd, fmn]), _results("same", "srgkp", "digits", 360, [pgd])]
    lines = results_table(*runs, names=["run_a", "run_b"]).splitlines()
    assert lines[0] == "run_a, run_b: accuracy (%)"
    header = "model method rate data params (M) MACs (M) benign pgd worst case fmn median l2"
    assert lines[1].split() == header.split()
    assert lines[2].split()[:4] == ["run_a/final", "l1", "0.5", "cifar10"] and lines[2].split()[-1] == "0.4321"
    assert lines[3].split()[:4] == ["run_b/final", "srgkp", "0.5", "digits"] and lines[3].split()[-1] == "-"


def test_compare_gives_its_rows_as_csv_and_json_records_with_raw_values(tmp_path, capsys):
    import csv
    import json

    from gkp.application.cli import main

    pgd = {"label": "pgd", "accuracy": 0.25, "params": {"eps": 0.03, "norm": "linf"}}
    fmn = {"label": "fmn", "accuracy": 0.0, "params": {"eps": None, "norm": "l2"}, "median_norm": 0.4321}
    runs = {"run_a": _results("a", "l1", "cifar10", 100, [pgd, fmn]), "run_b": _results("b", "cc", "cifar10", 100, [])}
    for folder, results in runs.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.json").write_text(json.dumps(results))
    folders = [str(tmp_path / folder) for folder in runs]
    assert main(["compare", *folders, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["run"], r["model"], r["method"], r["rate"]) for r in records] == [
        ("run_a", "final", "l1", 0.5),
        ("run_b", "final", "cc", 0.5),
    ]
    assert records[0]["macs"] == 2 * 10**6 and records[0]["benign"] == 0.5 and records[0]["pgd"] == 0.25
    assert records[0]["fmn median norm"] == 0.4321 and records[1]["pgd"] is None
    assert main(["compare", *folders, "--csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [row["run"] for row in rows] == ["run_a", "run_b"] and rows[0]["pgd"] == "0.25" and rows[1]["pgd"] == ""


def test_the_quick_start_tells_how_to_get_the_gkp_command():
    root = Path(__file__).resolve().parents[1]
    assert "bin/activate" in (root / "scripts" / "quickstart.sh").read_text()
    readme = (root / "README.md").read_text()
    assert readme.index("source ~/.cache/robust-gkp/venv/bin/activate") < readme.index("gkp run CONFIG")


def test_results_say_which_method_rate_and_data_they_are_and_training_is_drawn(tmp_path):
    config = tiny_config(train={"epochs": 1}, finetune={"epochs": 1}, attacks=[])
    results = run_experiment(build_experiment(config), out=tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 10_000
    assert (
        (results["method"], results["rate"], results["data"])
        == ("l1", 0.5, "synthetic")
        == (
            saved["method"],
            saved["rate"],
            saved["data"],
        )
    )


def test_finished_attacks_of_another_checkpoint_or_half_written_are_not_reused(tmp_path):
    from gkp.application.pipeline.rundir import RunDir
    from gkp.mechanisms.engine.evaluate import AttackOutcome

    run = RunDir(tmp_path)
    outcome = AttackOutcome(np.array([True, False]), None, 1.5)
    run.save_finished_attack("fp", "final", "pruned.ckpt 10 1", "pgd", outcome)
    assert set(run.finished_attacks("fp", "final", "pruned.ckpt 10 1")) == {"pgd"}
    assert run.finished_attacks("fp", "final", "finetuned.ckpt 12 2") == {}
    (tmp_path / "evaluations" / "fp" / "partial" / "final" / ".fgsm.npz.1.tmp.npz").write_bytes(b"half")
    assert set(run.finished_attacks("fp", "final", "pruned.ckpt 10 1")) == {"pgd"}


def test_restart_never_moves_a_folder_that_is_not_a_run_and_dotfiles_do_not_count(tmp_path):
    from gkp.foundation.errors import RunFolderError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    with pytest.raises(RunFolderError, match="is not a run folder"):
        run_experiment(build_experiment(tiny_config(**ONE_EPOCH)), out=mine, restart=True)
    assert (mine / "thesis.tex").is_file()
    dotted = tmp_path / "dotted"
    dotted.mkdir()
    (dotted / ".gitkeep").write_text("")
    run_experiment(build_experiment(tiny_config(**ONE_EPOCH)), out=dotted)
    assert (dotted / "dense.ckpt").is_file()


def test_results_of_a_run_from_before_evaluations_existed_are_kept_when_it_is_evaluated_again(tmp_path):
    config = tiny_config(**copy.deepcopy(EVAL_ONLY), model={"checkpoint": str(_checkpoint(tmp_path))})
    first = run_experiment(build_experiment(config), out=tmp_path / "run")
    import shutil

    shutil.rmtree(tmp_path / "run" / "evaluations")  # as a run folder made before them
    config["attacks"][1]["steps"] = 3
    run_experiment(build_experiment(config), out=tmp_path / "run")
    kept = json.loads((tmp_path / "run" / "evaluations" / first["evaluation"] / "results.json").read_text())
    assert kept == first and (tmp_path / "run" / "evaluations" / first["evaluation"] / "config.yaml").is_file()


def test_a_run_folder_of_an_earlier_fingerprint_version_is_refused_with_how_to_rerun(tmp_path, capsys):
    """Its stages cannot be compared with the config: not reused, not overwritten, one line and exit 2."""
    config = write_config(tmp_path / "tiny.yaml", tiny_config(stages=["train"], train={"epochs": 1}))
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    marker = tmp_path / "run" / "state" / "train.done"
    older = {k: v for k, v in json.loads(marker.read_text()).items() if k != "version"}  # as version 1 wrote it
    marker.write_text(json.dumps(older))
    from gkp.application.sweep import run_status

    assert run_status(tmp_path / "run", ["train"]) == "earlier version"  # a sweep does not count it as done
    dense = (tmp_path / "run" / "dense.ckpt").read_bytes()
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "made by an earlier version of gkp (run-folder version 1" in error
    assert "--out DIR for a new run, or --restart" in error
    assert (tmp_path / "run" / "dense.ckpt").read_bytes() == dense
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--restart"]) == 0


def test_gkp_plot_draws_the_best_per_metric_and_accuracy_against_the_rate(tmp_path, capsys):
    from gkp.application.reports.curves import _best_per_metric

    pgd = {"label": "pgd", "accuracy": 0.4, "params": {"eps": 0.03}}
    for name, method, rate, benign in (("a", "l1", 0.4375, 0.9), ("b", "l1", 0.625, 0.8), ("c", "srgkp", 0.4375, 0.92)):
        results = {"name": name, "method": method, "rate": rate, "model": "final", "benign": {"accuracy": benign}}
        results |= {
            "attacks": [pgd],
            "other_models": [{"model": "dense", "benign": {"accuracy": 0.99}, "attacks": [pgd]}],
        }
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    assert _best_per_metric(json.loads((tmp_path / "a" / "results.json").read_text())) == {"benign": 90.0, "pgd": 40.0}
    runs = [str(tmp_path / name) for name in "abc"]
    assert main(["plot", *runs, "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig_best.png").stat().st_size > 5000 and (tmp_path / "fig_sparsity.png").stat().st_size > 5000


def test_the_attacks_table_says_what_the_worst_case_is_over():
    """fmn 0 / 100 beside worst case 99 / 100 needs a word: a minimum-norm attack without eps bounds no
    threat model, so it is left out of the worst case, and the row says so."""
    from gkp.application.reports.results import attacks_table

    score = {"correct": 0, "total": 100, "seconds": 1.0}
    pgd = {"label": "pgd", **score, "correct": 99, "params": {"eps": 0.03, "norm": "linf"}}
    fmn = {"label": "fmn", **score, "params": {"eps": None, "norm": "l2"}, "median_norm": 0.4321}
    results = {"model": "final", "benign": score, "attacks": [pgd, fmn], "worst_case": {**score, "correct": 99}}
    worst = attacks_table(results).splitlines()[-1]
    assert worst.split()[:5] == ["worst", "case", "99", "/", "100"]
    assert worst.endswith("clean and under all of pgd; not fmn (minimum-norm, no eps)")
