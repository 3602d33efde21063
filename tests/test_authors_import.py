"""The authors' released ResNet-20: imported without running its pickle, and classifying as published."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from gkp.application.checkpoints.authors import import_authors_resnet, our_name, unpickle_records
from gkp.application.checkpoints.io import load_model, read_checkpoint
from gkp.foundation.errors import CheckpointError

from conftest import TouchOnUnpickle, write_config

AUTHORS_FILE = "checkpoints/adv_robust_gkp_resnet20_cifar10.pt"


def test_import_maps_names_and_carries_the_authors_normalisation(authors_checkpoint):
    payload = read_checkpoint(authors_checkpoint)
    assert payload["arch"] == "resnet20" and payload["plan"] is None
    assert payload["arch_args"]["std"] == [0.2023, 0.1994, 0.2010]
    model, _ = load_model(authors_checkpoint)
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert our_name("stage_2.1.conv_b.weight") == "layer2.1.conv2.weight"
    assert our_name("conv_1_3x3.weight") == "conv1.weight" and our_name("classifier.bias") == "fc.bias"


def test_imported_weights_equal_the_pickles_tensors(shared, authors_checkpoint):
    records = unpickle_records(shared / AUTHORS_FILE)
    layer = records.state["_modules"]["stage_3"].state["_modules"]["2"].state["_modules"]["bn_b"]
    model, _ = load_model(authors_checkpoint)
    assert torch.equal(model.layer3[2].bn2.running_var, layer.state["_buffers"]["running_var"])


def test_gkp_eval_on_the_cifar_prefix_gives_the_published_accuracy(shared, authors_checkpoint, tmp_path):
    config = {
        "name": "authors",
        "device": "cpu",
        "stages": ["eval"],
        "model": {"checkpoint": str(authors_checkpoint)},
        "data": {"name": "npz", "path": str(shared / "data" / "cifar10_train_prefix.npz")},
    }
    path = write_config(tmp_path / "authors.yaml", config)
    out = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "-m", "gkp", "eval", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    results = json.loads((out / "results.json").read_text())
    assert (results["benign"]["correct"], results["benign"]["total"]) == (4647, 4660)
    assert "99.72" in completed.stdout


def _zip_with_pickle(path: Path, pickled: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/version", "3\n")


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "owned"
    evil = tmp_path / "evil.pt"
    _zip_with_pickle(evil, pickle.dumps(TouchOnUnpickle(marker), protocol=2))
    with pytest.raises(CheckpointError, match=r"asks the unpickler for '(posix|os)\.system'"):
        import_authors_resnet(evil, tmp_path / "out.ckpt")
    completed = subprocess.run(
        [sys.executable, "-m", "gkp", "import-checkpoint", str(evil), str(tmp_path / "out.ckpt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2 and "refusing to load it" in completed.stderr
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()


def test_other_refusals(tmp_path):
    _zip_with_pickle(tmp_path / "eval.pt", pickle.dumps(eval, protocol=2))
    with pytest.raises(CheckpointError, match=r"'(builtins|__builtin__)\.eval'"):
        unpickle_records(tmp_path / "eval.pt")
    (tmp_path / "flat.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="is not a complete zip-format torch file"):
        unpickle_records(tmp_path / "flat.pt")
    _zip_with_pickle(tmp_path / "dict.pt", pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="does not hold a pickled module"):
        unpickle_records(tmp_path / "dict.pt")
