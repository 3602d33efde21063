"""Checkpoints round-trip (dense and pruned), load without running code, and fail clearly when foreign."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from baselines import l1
from gkp.application.catalog import build_model
from gkp.application.checkpoints.io import load_model, read_checkpoint, save_checkpoint
from gkp.foundation.contracts import model_spec
from gkp.foundation.errors import CheckpointError
from gkp.mechanisms.pruning.plan import Plan
from gkp.mechanisms.pruning.surgery import apply

from conftest import TouchOnUnpickle


def test_dense_and_pruned_checkpoints_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10).eval()
    pruned = apply(model, Plan("l1", 0.5, l1.L1.select(model, 0.5, l1.L1Params()).layers))
    x = torch.rand(2, 3, 32, 32)
    for name, original in (("dense", model), ("pruned", pruned)):
        path = tmp_path / f"{name}.ckpt"
        save_checkpoint(path, original, {"note": name})
        loaded, metadata = load_model(path)
        assert metadata == {"note": name}
        assert model_spec(loaded) == model_spec(original)
        with torch.no_grad():
            assert torch.equal(loaded(x), original(x))
    assert read_checkpoint(tmp_path / "pruned.ckpt")["plan"]["method"] == "l1"
    assert load_model(tmp_path / "pruned.ckpt")[0].layer2[0].conv1.out_channels == 16


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, build_model("resnet8"))
    save_checkpoint(path, build_model("resnet8"))
    assert os.listdir(tmp_path) == ["m.ckpt"]


def test_missing_corrupt_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or not a torch checkpoint"):
        read_checkpoint(tmp_path / "junk.ckpt")
    torch.save(build_model("resnet8").state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a gkp checkpoint: expected keys arch, arch_args"):
        read_checkpoint(tmp_path / "plain.pt")
    torch.save(build_model("resnet8"), tmp_path / "module.pt")
    with pytest.raises(
        CheckpointError, match="asks to rebuild 'gkp.entries.models.resnet.CifarResNet'.*gkp import-checkpoint"
    ):
        read_checkpoint(tmp_path / "module.pt")


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, build_model("resnet8"))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(path)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, build_model("resnet8"))
    payload = torch.load(path, weights_only=True)
    payload["arch"] = "resnet20"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="weights do not fit resnet20"):
        load_model(path)


def test_loading_never_unpickles_code(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"arch": TouchOnUnpickle(marker)}, tmp_path / "evil.ckpt")  # a zip-format torch file
    with pytest.raises(CheckpointError, match=r"asks to rebuild '(posix|os)\.system', which is refused"):
        read_checkpoint(tmp_path / "evil.ckpt")
    with open(tmp_path / "evil.pickle", "wb") as handle:
        pickle.dump({"arch": TouchOnUnpickle(marker)}, handle)
    with pytest.raises(CheckpointError, match="not a zip archive"):
        read_checkpoint(tmp_path / "evil.pickle")
    assert not marker.exists()
