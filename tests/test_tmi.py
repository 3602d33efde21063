"""TMI-GKP: equal-size clusterings, the snapshot vote, and the whole pipeline on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gkp.application.checkpoints.io import load_model
from gkp.application.config import build_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.entries.grouped_kernels import clustering
from gkp.entries.grouped_kernels.tmigkp import group_order, majority, snapshot_winner, tmi_scores
from gkp.foundation.errors import ConfigError
from gkp.mechanisms.layers.grouped_conv import GroupedKernelConv2d

from conftest import tiny_config


@pytest.mark.parametrize("name", list(clustering.CLUSTERINGS))
def test_every_clustering_makes_equal_groups(name):
    filters = np.random.default_rng(0).normal(size=(32, 27))
    labels = clustering.CLUSTERINGS[name](filters, 8, 0)
    assert sorted(np.bincount(labels).tolist()) == [4] * 8
    assert np.array_equal(labels, clustering.CLUSTERINGS[name](filters, 8, 0))  # seeded


def test_equal_size_kmeans_separates_obvious_clusters():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(scale=0.1, size=(5, 2)) for c in centres])
    labels = clustering.equal_size_kmeans(points, 3, seed=0)
    assert all(len(set(labels[i * 5 : (i + 1) * 5])) == 1 for i in range(3)) and len(set(labels)) == 3


def test_tmi_scores_by_hand():
    trained = np.array([[[[1.0, -2.0]]], [[[0.5, 0.5]]]])
    snapshot = np.array([[[[-0.5, 1.0]]], [[[0.5, -1.5]]]])
    assert tmi_scores(trained, snapshot).tolist() == [0.5 + 1.0, 0.0 + 1.0]


def test_the_snapshot_vote():
    scores = np.array([1.0, 1.0, 2.0, 2.0, 9.0, 9.0])
    labels = {
        "kernel_pca": np.array([0, 0, 1, 1, 2, 2]),
        "spectral": np.array([0, 1, 2, 0, 1, 2]),
        "same_size_dbscan": np.array([0, 1, 2, 2, 1, 0]),
    }
    # Sorted cluster sums: 2 4 18 (gaps 2, 14), 3 10 11 (7, 1), 4 10 10 (6, 0). Mean gap ranks 2 1 0,
    # variance ranks 2 0 1 (a tie, in order): 0.5 * 2 + 2, 0.5 * 1 + 0, 0.5 * 0 + 1; spectral wins.
    assert snapshot_winner(labels, scores, 3) == "spectral"
    assert majority(["spectral", "kernel_pca", "kernel_pca", "spectral"]) == "kernel_pca"  # tie: longest run
    assert majority(["same_size_dbscan", "spectral", "same_size_dbscan"]) == "same_size_dbscan"
    assert group_order(np.array([2, 0, 2, 1, 0, 1])).tolist() == [0, 2, 1, 4, 3, 5]


TMI = tiny_config(
    model={"arch": "resnet8"},
    data={"name": "digits", "train_size": 384, "test_size": 96},
    train={"epochs": 3, "eval_every": 0},
    prune={"method": "tmigkp", "rate": 0.5, "params": {"groups": 4, "first_snapshot": 2, "last_snapshot": 3}},
    finetune={"epochs": 1, "eval_every": 0},
)


def test_tmi_gkp_runs_end_to_end_on_digits(tmp_path, pinned_forms):
    results = run_experiment(build_experiment(TMI), out=tmp_path)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["epoch_0002.ckpt", "epoch_0003.ckpt"]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["method"] == "tmigkp" and len(plan["layers"]) == 6
    assert all(layer["type"] == "grouped_kernels" and len(layer["kept"]) == 4 for layer in plan["layers"].values())
    model, _ = load_model(tmp_path / "finetuned.ckpt")
    assert sum(isinstance(m, GroupedKernelConv2d) for m in model.modules()) == 6
    assert results["benign"]["total"] == 96 and results["attacks"][0]["name"] == "fgsm"


def test_tmi_gkp_without_snapshots_fails_before_any_compute(tmp_path):
    run_experiment(
        build_experiment({**TMI, "stages": ["train"], "train": {**TMI["train"], "epochs": 1}}), out=tmp_path / "short"
    )
    checkpoint = str(tmp_path / "short" / "dense.ckpt")
    config = {**TMI, "stages": ["prune"], "model": {"checkpoint": checkpoint}}
    with pytest.raises(ConfigError, match=r"tmigkp reads training snapshots of epochs 2..3, and .* lacks 2 of them"):
        run_experiment(build_experiment(config), out=tmp_path / "prune")
    with pytest.raises(ConfigError, match="first_snapshot: 5 is after last_snapshot 3"):
        build_experiment({**TMI, "prune": {"method": "tmigkp", "params": {"first_snapshot": 5, "last_snapshot": 3}}})
