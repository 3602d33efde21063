"""Bad input ends in one line naming the problem and the fix, exit 2, and nothing written: a table of the
inputs that used to end in a traceback (or be accepted silently), each tried through the command line."""

from __future__ import annotations

import json
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gkp.application.cli import main

from conftest import tiny_config, write_config

# ------------------------------------------------------------------------------------------- makers


def config_file(tmp: Path, text: str | bytes) -> str:
    path = tmp / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def tiny(tmp: Path, **sections) -> str:
    config = tiny_config(**{"stages": ["train"], "train": {"epochs": 1}, **sections})
    return str(write_config(tmp / "tiny.yaml", config))


def npz_with_labels(tmp: Path, labels: np.ndarray, side: int = 8) -> str:
    path = tmp / f"labels{side}.npz"
    np.savez(path, images=np.zeros((len(labels), side, side, 3), dtype=np.uint8), labels=labels)
    return str(path)


def zero_side_npz(tmp: Path) -> str:
    path = tmp / "zero.npz"
    np.savez(path, images=np.zeros((4, 0, 0, 3), dtype=np.uint8), labels=np.arange(4) % 2)
    return str(path)


class StoragePlaceholder:
    """Stands for a storage in a crafted pickle; its persistent id names the archive's entry."""


class CraftedTensor:
    def __init__(self, size, stride, offset=0):
        self.size, self.stride, self.offset = size, stride, offset

    def __reduce__(self):
        return (
            torch._utils._rebuild_tensor_v2,
            (StoragePlaceholder(), self.offset, self.size, self.stride, False, OrderedDict()),
        )


def crafted_archive(tmp: Path, size, stride, offset=0, values: int = 4, with_storage: bool = True) -> str:
    """A zip-format torch pickle of one tensor view over a storage of ``values`` floats, as torch.save lays
    it out, whose view the test chooses (out of bounds, huge, its storage missing)."""
    import io

    class Crafter(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", values) if isinstance(obj, StoragePlaceholder) else None

    buffer = io.BytesIO()
    Crafter(buffer, protocol=2).dump(CraftedTensor(size, stride, offset))
    path = tmp / "crafted.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        if with_storage:
            archive.writestr("archive/data/0", np.zeros(values, dtype=np.float32).tobytes())
    return str(path)


def safetensors_with_metadata(tmp: Path, metadata, header=None) -> str:
    header = header if header is not None else {"__metadata__": {"gkp": metadata}}
    text = json.dumps(header).encode()
    path = tmp / "odd.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    return str(path)


def checkpoint_with(tmp: Path, **changes) -> str:
    from gkp.application.catalog import build_model
    from gkp.application.checkpoints.io import checkpoint_payload

    payload = {**checkpoint_payload(build_model("resnet8")), **changes}
    path = tmp / "odd.ckpt"
    torch.save(payload, path)
    return str(path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run (train and eval) whose files the run-folder cases damage in copies."""
    folder = tmp_path_factory.mktemp("finished")
    config = tiny_config(stages=["train", "eval"], train={"epochs": 1}, eval={"models": ["dense"]})
    assert main(["run", str(write_config(folder / "tiny.yaml", config)), "--out", str(folder / "run")]) == 0
    return folder


def damaged_copy(finished: Path, tmp: Path, file: str, content: str) -> Path:
    import shutil

    copy = tmp / "run"
    shutil.copytree(finished / "run", copy)
    (copy / file).write_text(content)
    return copy


# ------------------------------------------------------------------------------------------- the cases

CASES = {
    # config
    "a config that is not UTF-8": lambda t, f: (
        ["check", config_file(t, b"model: {arch: resnet8}\n# \xff\n")],
        "is not UTF-8 text",
    ),
    "lr: 1e400": lambda t, f: (
        ["check", config_file(t, "model: {arch: resnet8}\ntrain: {lr: 1e400}\n")],
        "train.lr: must be a finite number",
    ),
    "--set prune.rate=1e400": lambda t, f: (
        ["check", tiny(t), "--set", "prune.rate=1e400"],
        "prune.rate: must be a finite number",
    ),
    "a YAML error in --set": lambda t, f: (
        ["check", tiny(t), "--set", "prune.rate=[1,"],
        "--set prune.rate: the value is not valid YAML",
    ),
    "a tag in --set": lambda t, f: (
        ["check", tiny(t), "--set", "name=!!python/name:os.system"],
        "could not determine a constructor",
    ),
    "a YAML error in a sweep spec": lambda t, f: (
        ["sweep", config_file(t, "base: x.yaml\ngrid: {a: [1,\n"), "--dry-run"],
        "is not valid YAML",
    ),
    "a tag in a sweep spec": lambda t, f: (
        ["sweep", config_file(t, "base: !!python/object:os.system {}\n"), "--dry-run"],
        "is not valid YAML",
    ),
    "a section given twice": lambda t, f: (
        ["check", config_file(t, "model: {arch: resnet8}\nprune: {method: l1}\nprune: {method: fpgm}\n")],
        "the key 'prune' is given twice (line 3",
    ),
    "a key given twice in a mapping": lambda t, f: (
        ["check", config_file(t, "model: {arch: resnet8, arch: vgg16}\n")],
        "the key 'arch' is given twice",
    ),
    "an unhashable key": lambda t, f: (
        ["check", config_file(t, "model: {arch: resnet8}\n? [a, b]\n: 1\n")],
        "found unhashable key",
    ),
    "a fraction of a fraction": lambda t, f: (
        ["check", tiny(t), "--set", "attacks.0.eps=1/3/4"],
        "must be a number such as 0.03 or 8/255, got '1/3/4'",
    ),
    "name: '..'": lambda t, f: (["run", tiny(t, name=".."), "--out", str(t / "out")], "not dots alone"),
    "lrf with fewer epochs than its search": lambda t, f: (
        ["run", tiny(t, stages=["train", "prune"], prune={"method": "lrf", "rate": 0.5}), "--out", str(t / "out")],
        "lrf: its search takes 32 epochs",
    ),
    "cc with a MACs target below what its caps allow": lambda t, f: (
        [
            "run",
            tiny(t, stages=["train", "prune"], prune={"method": "cc", "target_macs": 0.01}),
            "--out",
            str(t / "out"),
        ],
        "cc keeps at least",
    ),
    "gkp check with a missing CIFAR-10 folder": lambda t, f: (
        ["check", tiny(t, data={"name": "cifar10", "root": str(t / "nowhere")})],
        "cifar10 was not found",
    ),
    "gkp check with a rate that empties a layer": lambda t, f: (
        ["check", tiny(t, stages=["train", "prune"]), "--set", "prune.rate=0.99"],
        "prune.rate: rate 0.99 would remove all",
    ),
    # data
    "a truncated npz": lambda t, f: (
        [
            "run",
            tiny(t, data={"name": "npz", "path": truncated(t)}, stages=["eval"], model={"arch": "resnet8"}),
            "--out",
            str(t / "out"),
        ],
        "is not a readable npz file",
    ),
    "a uint64 label of 2^63 + 5": lambda t, f: (
        ["run", tiny(t, data=npz_data(t, np.array([0, 1, 2**63 + 5], dtype=np.uint64))), "--out", str(t / "out")],
        "its labels run up to 9223372036854775813",
    ),
    "a label of 2^40": lambda t, f: (
        ["run", tiny(t, data=npz_data(t, np.array([0, 1, 2**40]))), "--out", str(t / "out")],
        "classes are numbered 0..K-1",
    ),
    # checkpoints
    "an out-of-bounds view": lambda t, f: (
        ["import-checkpoint", crafted_archive(t, (4,), (8,)), str(t / "o.ckpt")],
        "does not fit its storage",
    ),
    "a storage missing from the archive": lambda t, f: (
        ["import-checkpoint", crafted_archive(t, (4,), (1,), with_storage=False), str(t / "o.ckpt")],
        "its archive does not hold",
    ),
    "a zero-stride view of 160 GB": lambda t, f: (
        ["import-checkpoint", crafted_archive(t, (200_000, 200_000), (0, 0)), str(t / "o.ckpt")],
        "does not fit its storage",
    ),
    "import into a folder": lambda t, f: (["import-checkpoint", crafted_archive(t, (4,), (1,)), str(t)], "is a folder"),
    "import over an existing file": lambda t, f: (
        ["import-checkpoint", crafted_archive(t, (4,), (1,)), config_file(t, "a file of mine")],
        "bad.yaml exists (a run's checkpoint, maybe); write to another file, or pass --force",
    ),
    "import over its own source, even forced": lambda t, f: (
        ["import-checkpoint", crafted_archive(t, (4,), (1,)), str(t / "crafted.pt"), "--force"],
        "crafted.pt is the file being read",
    ),
    "safetensors metadata {}": lambda t, f: (
        ["info", safetensors_with_metadata(t, "{}")],
        "is not a gkp checkpoint: expected keys",
    ),
    "safetensors metadata [1,2]": lambda t, f: (
        ["info", safetensors_with_metadata(t, "[1,2]")],
        "its gkp metadata is list",
    ),
    "a safetensors header that is a string": lambda t, f: (
        ["info", safetensors_with_metadata(t, None, header="just text")],
        "is not a safetensors file written by gkp export (Error while deserializing header",
    ),
    "arch_args a list": lambda t, f: (
        ["info", checkpoint_with(t, arch_args=[1, 2])],
        "its arch_args, state_dict and metadata must be mappings",
    ),
    "num_classes: -5": lambda t, f: (
        ["info", checkpoint_with(t, arch_args={"num_classes": -5})],
        "cannot rebuild its model",
    ),
    "--input-size -4": lambda t, f: (
        ["info", checkpoint_with(t), "--input-size", "-4"],
        "must be a whole number >= 1, got '-4'",
    ),
    "--input-size 0": lambda t, f: (
        ["info", checkpoint_with(t), "--input-size", "0"],
        "must be a whole number >= 1, got '0'",
    ),
    # run folders
    "a truncated state/train.done": lambda t, f: (
        ["run", str(f / "tiny.yaml"), "--out", str(damaged_copy(f, t, "state/train.done", '{"finger'))],
        "train.done is damaged or unreadable",
    ),
    "a truncated results.json": lambda t, f: (
        ["compare", str(damaged_copy(f, t, "results.json", '{"name": '))],
        "results.json is damaged or unreadable",
    ),
    "results.json a list": lambda t, f: (
        ["compare", str(damaged_copy(f, t, "results.json", "[1, 2]"))],
        "holds a list, not what gkp writes there",
    ),
    "a sweep whose every cell is invalid": lambda t, f: (["sweep", sweep_of_invalid_cells(t)], "2 cell(s) cannot run"),
    # found by a second battery (396 cases)
    "seed: 2**70": lambda t, f: (["check", tiny(t, seed=2**70)], "seed: must be a whole number from 0 to 2**63 - 1"),
    "data.std of zeros": lambda t, f: (
        ["check", tiny(t, data={"mean": [0.5] * 3, "std": [0, 0, 0]})],
        "model: resnet8 cannot be built for data 'synthetic' or run on its (3, 16, 16) images",
    ),
    "data.mean of 2 values for colour images": lambda t, f: (
        ["check", tiny(t, data={"mean": [0.5] * 2, "std": [0.2] * 2})],
        "check model.args, data.mean, data.std and the image size",
    ),
    "model.args.num_classes under the labels": lambda t, f: (
        ["check", tiny(t, model={"arch": "resnet8", "args": {"num_classes": 2}})],
        "model.args.num_classes: resnet8 predicts 2 classes, but data 'synthetic' has labels up to 9",
    ),
    "vgg16 on 8-pixel images": lambda t, f: (
        ["check", tiny(t, model={"arch": "vgg16"}, data={"image_size": 8})],
        "model: vgg16 cannot be built for data 'synthetic' or run on its (3, 8, 8) images",
    ),
    "a .npy file as data": lambda t, f: (["check", tiny(t, data=npy_data(t))], "holds one array (a .npy file)"),
    "image folders without class folders": lambda t, f: (
        ["check", tiny(t, data=image_folders(t, corrupt=False, classes=False))],
        "must hold one subfolder of images per class",
    ),
    "a corrupt image, read by a worker process": lambda t, f: (
        ["check", tiny(t, data=image_folders(t, corrupt=True, classes=True))],
        "bad.png cannot be read as an image",
    ),
    "a truncated results.json after a finished run": lambda t, f: (
        ["run", str(f / "tiny.yaml"), "--out", str(damaged_copy(f, t, "results.json", '{"name": '))],
        "results.json is damaged or unreadable",
    ),
    "eval of 'final' when the model a done stage saved was deleted": lambda t, f: (
        ["eval", str(f / "tiny.yaml"), "--out", str(deleted_copy(f, t, "dense.ckpt")), "--set", "eval.models=[final]"],
        "dense.ckpt is missing, though the train stage is done",
    ),
    "gkp check on a foreign folder": lambda t, f: (
        ["check", tiny(t), "--out", str(Path(config_file(t, "mine")).parent)],
        "holds other files and is not a run folder",
    ),
    "gkp check of another rate on a finished run": lambda t, f: (
        ["check", str(f / "tiny.yaml"), "--out", str(f / "run"), "--set", "train.lr=0.5"],
        "already holds stage(s) train, eval computed from a different config (train.lr: 0.05 -> 0.5)",
    ),
    "a conflict where config.yaml is damaged": lambda t, f: (
        [
            "run",
            str(f / "tiny.yaml"),
            "--out",
            str(damaged_copy(f, t, "config.yaml", "\x00: [")),
            "--set",
            "train.lr=0.5",
        ],
        "computed from a different config (its config.yaml is damaged, so the keys cannot be named)",
    ),
    "compare on a results.json of {}": lambda t, f: (
        ["compare", str(damaged_copy(f, t, "results.json", "{}"))],
        "results.json is not what gkp eval writes (no benign accuracy)",
    ),
    "compare on a results.json whose attacks are a string": lambda t, f: (
        ["compare", str(damaged_copy(f, t, "results.json", results_with(f, attacks="fgsm")))],
        "(no list of attacks with labels and accuracies)",
    ),
    "checkpoint metadata that is a list": lambda t, f: (
        ["info", checkpoint_with(t, metadata=[1, 2])],
        "arch_args, state_dict and metadata must be mappings",
    ),
    "a negative input_size in checkpoint metadata": lambda t, f: (
        ["info", checkpoint_with(t, metadata={"input_size": -4})],
        "its metadata's input_size must be a whole number >= 1, got -4",
    ),
    "lists nested 3000 deep": lambda t, f: (
        ["check", config_file(t, "model: {arch: resnet8}\ntrain: {epochs: " + "[" * 3000 + "]" * 3000 + "}\n")],
        "nests its lists or mappings too deeply to be read",
    ),
    "an alias bomb (9 aliases of 9, nine levels)": lambda t, f: (
        ["check", config_file(t, alias_bomb())],
        "train.epochs",
    ),
    "a model checkpoint where a resume checkpoint belongs": lambda t, f: (
        ["run", str(f / "tiny.yaml"), "--out", str(model_as_resume(f, t))],
        "state/train_last.ckpt is not the resume checkpoint of the train stage",
    ),
    "a sweep into a folder of other things": lambda t, f: (
        ["sweep", sweep_spec(t, {"out": str(Path(config_file(t, "mine")).parent)}), "--dry-run"],
        "holds other things than runs (bad.yaml, base.yaml)",
    ),
    "training images of 0 x 0 pixels": lambda t, f: (
        ["check", tiny(t, data={**npz_data(t, np.arange(4) % 2), "train_path": zero_side_npz(t)})],
        "holds no images, or images of no pixels",
    ),
    "training and test images of two sizes": lambda t, f: (
        [
            "check",
            tiny(t, data={**npz_data(t, np.arange(4) % 2), "train_path": npz_with_labels(t, np.arange(4) % 2, 16)}),
        ],
        "holds 16 x 16 images",
    ),
    "a folder as the config": lambda t, f: (["check", str(t)], "is a folder, not a file"),
    "a folder as the checkpoint": lambda t, f: (["info", str(t)], "is a folder, not a file"),
    "a date in a sweep's base": lambda t, f: (["sweep", sweep_spec(t, {}, seed="2024-01-01")], "1 cell(s) cannot run"),
    "a misspelt grid in a sweep spec": lambda t, f: (
        ["sweep", sweep_spec(t, {"gird": {"train.lr": [0.1]}}), "--dry-run"],
        "unknown key 'gird' (did you mean 'grid'?)",
    ),
    "a sweep's out a number": lambda t, f: (
        ["sweep", sweep_spec(t, {"out": 5}), "--dry-run"],
        "'out' must be a file or folder name",
    ),
}


def alias_bomb() -> str:
    """A YAML text of a few hundred bytes whose value, written out, would hold 9^9 items."""
    levels = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return f"model: {{arch: resnet8}}\ntrain: {{epochs: [{', '.join(levels)}]}}\n"


def model_as_resume(finished: Path, tmp: Path) -> Path:
    """A copy of the finished run whose train stage is unfinished and whose resume file is a model."""
    import shutil

    copy = deleted_copy(finished, tmp, "state/train.done")
    shutil.copy(copy / "dense.ckpt", copy / "state" / "train_last.ckpt")
    return copy


def results_with(finished: Path, **changes) -> str:
    return json.dumps({**json.loads((finished / "run" / "results.json").read_text()), **changes})


def deleted_copy(finished: Path, tmp: Path, file: str) -> Path:
    copy = damaged_copy(finished, tmp, file, "")
    (copy / file).unlink()
    return copy


def npy_data(tmp: Path) -> dict:
    path = tmp / "one.npz"
    with path.open("wb") as handle:
        np.save(handle, np.zeros((4, 8, 8, 3), dtype=np.uint8))
    return {"name": "npz", "train_path": str(path), "test_path": str(path), "train_size": None, "test_size": None}


def image_folders(tmp: Path, corrupt: bool, classes: bool) -> dict:
    """train/ and val/ under tmp/imgs: empty, or one class of PNGs whose validation one is not an image."""
    from PIL import Image

    for split in ("train", "val"):
        (tmp / "imgs" / split).mkdir(parents=True)
        if classes:
            (tmp / "imgs" / split / "c0").mkdir()
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp / "imgs" / split / "c0" / "ok.png")
    if corrupt:
        (tmp / "imgs" / "val" / "c0" / "ok.png").unlink()
        (tmp / "imgs" / "val" / "c0" / "bad.png").write_bytes(b"not an image")
    return {"name": "imagefolder", "root": str(tmp / "imgs"), "image_size": 16, "num_workers": 1}


def sweep_spec(tmp: Path, spec: dict, **base) -> str:
    (tmp / "base.yaml").write_text(
        yaml.safe_dump(tiny_config(stages=["train"], **base)).replace("'2024-01-01'", "2024-01-01")
    )
    return config_file(tmp, yaml.safe_dump({"base": "base.yaml", "out": str(tmp / "sweep"), **spec}))


def truncated(tmp: Path) -> str:
    path = Path(npz_with_labels(tmp, np.arange(4) % 2))
    path.write_bytes(path.read_bytes()[:50])
    return str(path)


def npz_data(tmp: Path, labels: np.ndarray) -> dict:
    train = npz_with_labels(tmp, labels)
    return {"name": "npz", "train_path": train, "test_path": train, "train_size": None, "test_size": None}


def sweep_of_invalid_cells(tmp: Path) -> str:
    (tmp / "base.yaml").write_text(yaml.safe_dump(tiny_config(stages=["train"])))
    spec = {
        "base": "base.yaml",
        "out": str(tmp / "sweep"),
        "cells": [{"name": "a", "prune.rate": 2}, {"name": "b", "train.lr": -1}],
    }
    return config_file(tmp, yaml.safe_dump(spec))


@pytest.mark.parametrize("flag", ["--time", "--gpus-per-run", "--cpus-per-gpu", "--mem-gb", "--max-parallel"])
def test_slurm_sizes_below_one_are_refused_before_anything_else(flag, tmp_path, capsys):
    assert main(["sweep", sweep_spec(tmp_path, {}), "--launcher", "slurm", flag, "0"]) == 2
    assert f"argument {flag}: must be a whole number >= 1, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("case", CASES)
def test_bad_input_ends_in_one_line_exit_2_and_nothing_written(case, tmp_path, finished, capsys):
    argv, message = CASES[case](tmp_path, finished)
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert message in error, error
    assert len(error.splitlines()) == 1 and error.startswith("gkp: error: ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.ckpt").exists()


def test_a_fraction_of_a_decimal_is_a_number():
    from gkp.application.config import build_experiment

    exp = build_experiment(tiny_config(attacks=[{"name": "fgsm", "eps": "0.5/255"}]))
    assert exp.attacks[0].params.eps == pytest.approx(0.5 / 255)


def test_a_merge_key_brings_defaults_that_the_mapping_may_override():
    """YAML anchors and merges (``<<: *recipe``) are how a long config shares a recipe; keys given again
    after a merge override it, as YAML means them to, and are not keys given twice."""
    from gkp.foundation.schema import load_yaml

    text = "recipe: &recipe {lr: 0.1, weight_decay: 0.0005}\nfinetune:\n  <<: *recipe\n  lr: 0.01\n"
    assert load_yaml(text, "x.yaml")["finetune"] == {"lr": 0.01, "weight_decay": 0.0005}


def test_plots_go_into_a_folder_made_for_them(finished, tmp_path, capsys):
    assert main(["plot", str(finished / "run"), "--out", str(tmp_path / "no" / "such" / "fig")]) == 0
    assert list((tmp_path / "no" / "such").glob("fig*.png"))
