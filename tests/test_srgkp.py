"""SR-GKP: the golden selections of the authors' code, the loop oracle at other settings, and errors."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from gkp.application.catalog import build_model
from gkp.entries.grouped_kernels import branch_sums
from gkp.entries.grouped_kernels import loop_reference as oracle
from gkp.entries.grouped_kernels.search import SearchSettings, beam_search
from gkp.entries.grouped_kernels.smoothness import filter_smoothness, grouped_kernel_smoothness, snake_order
from gkp.entries.grouped_kernels.srgkp import ENTRY as SRGKP
from gkp.entries.grouped_kernels.srgkp import SRGKPParams
from gkp.foundation.errors import PruningError


def test_the_authors_resnet20_gives_the_golden_selection(shared, authors_checkpoint):
    from gkp.application.checkpoints.io import load_model

    golden = json.loads((shared / "golden" / "srgkp_resnet20_default.json").read_text())
    assert golden["settings"] == {
        "rate": 0.4375,
        "groups": 8,
        "beam_width": 2,
        "check_every": 3,
        "alpha": 0.9,
        "outer_in_beam": True,
        "final_select": "cost",
        "metric": "euclidean",
    }
    model, _ = load_model(authors_checkpoint)
    layers = SRGKP.select(model, 0.4375, SRGKPParams()).layers
    assert list(layers) == list(golden["layers"])
    for name, expected in golden["layers"].items():
        assert layers[name].to_dict()["filter_order"] == expected["filter_order"], name
        assert layers[name].to_dict()["kept"] == expected["kept"], name


def random_weight(c_out: int, c_in: int, seed: int, k: int = 3) -> np.ndarray:
    return torch.randn(c_out, c_in, k, k, generator=torch.Generator().manual_seed(seed)).numpy() * 0.1


def test_smoothness_and_snaking_match_the_oracle_bit_for_bit():
    weight = random_weight(16, 12, seed=1).astype(np.float64)
    assert filter_smoothness(weight).tolist() == [oracle.smoothness_of(weight[f].tolist()) for f in range(16)]
    order = snake_order(filter_smoothness(weight), 4)
    assert order.tolist() == oracle.snake_order(filter_smoothness(weight).tolist(), 4)
    members = order.reshape(4, -1)
    expected = [[oracle.smoothness_of([weight[f, j].tolist() for f in group]) for j in range(12)] for group in members]
    assert grouped_kernel_smoothness(weight, members).tolist() == expected


def test_kernel_smoothness_by_hand():
    kernel = np.array([[[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0]]]])
    # |1 - 0| is seen from the 1's 5 neighbours and by each of them: 10; |4 - 0| likewise from 3 sides: 6 * 4.
    assert filter_smoothness(kernel).tolist() == [10.0 + 24.0]


def test_snake_order_by_hand():
    # Ascending scores: filters 5, 4, 3, 2, 1, 0 get labels 0, 1, 1, 0, 0, 1 with 2 groups.
    assert snake_order(np.array([6.0, 5, 4, 3, 2, 1]), 2).tolist() == [1, 2, 5, 0, 3, 4]


SETTINGS = [
    dict(rate=0.4375, groups=4),
    dict(rate=0.625, groups=2),
    dict(rate=0.25, groups=8, beam_width=3),
    dict(rate=0.5, groups=4, check_every=1),
    dict(rate=0.5, groups=4, check_every=4, alpha=0.5),
    dict(rate=0.4375, groups=4, alpha=0.0),
    dict(rate=0.4375, groups=4, alpha=1.0, beam_width=1),
    dict(rate=0.4375, groups=4, outer_in_beam=False),
    dict(rate=0.4375, groups=4, final_select="smoothness"),
    dict(rate=0.8, groups=2, check_every=2),
    dict(rate=0.05, groups=4),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_the_vectorised_search_equals_the_oracle(settings):
    settings = dict(settings)
    rate = settings.pop("rate")
    params = replace(SRGKPParams(), **settings)
    model = build_model("resnet8")
    weight = random_weight(16, 16, seed=len(SETTINGS[0]) + sum(map(ord, str(settings))))
    with torch.no_grad():
        model.layer1[0].conv1.weight.copy_(torch.from_numpy(weight))
    ours = SRGKP.select(model, rate, params).layers["layer1.0.conv1"].to_dict()
    expected = oracle.srgkp_layer(
        weight,
        rate,
        params.groups,
        params.beam_width,
        params.check_every,
        params.alpha,
        params.outer_in_beam,
        params.final_select,
    )
    assert ours["filter_order"] == expected["filter_order"]
    assert ours["kept"] == expected["kept"]


def test_ties_between_identical_grouped_kernels_follow_the_reference():
    weight = np.repeat(random_weight(8, 4, seed=3), 3, axis=1)  # every grouped kernel appears three times
    expected = oracle.srgkp_layer(weight, 0.5, 2)
    model = build_model("resnet8")
    conv = torch.nn.Conv2d(12, 8, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
    model.layer1[0].conv1 = conv
    model.layer1[0].bn1 = torch.nn.BatchNorm2d(8)
    model.grouped_kernel_targets = lambda scope="3x3": ["layer1.0.conv1"]
    ours = SRGKP.select(model, 0.5, SRGKPParams(groups=2)).layers["layer1.0.conv1"].to_dict()
    assert (ours["filter_order"], ours["kept"]) == (expected["filter_order"], expected["kept"])


def test_beam_search_validates_keep():
    with pytest.raises(ValueError, match="keep must be in"):
        beam_search(np.zeros((1, 4, 4)), np.zeros((1, 4)), SearchSettings(keep=5))


def test_groups_must_divide_every_layer():
    with pytest.raises(
        PruningError,
        match=r"groups=3 does not divide the 16 filters of 'layer1.0.conv1'; "
        r"valid group counts: 1, 2, 4, 8, 16",
    ):
        SRGKP.check(build_model("resnet20"), 0.4375, SRGKPParams(groups=3))


def test_a_rate_that_keeps_nothing_is_refused():
    with pytest.raises(PruningError, match=r"rate 0.97 keeps 0 of the 16 input channels per group of 'layer1.0.conv1'"):
        SRGKP.check(build_model("resnet20"), 0.97, SRGKPParams())


def random_beams(rng, n: int, rows: int, prefix: int, levels: tuple[int, ...]) -> list[np.ndarray]:
    """Member columns of re-ranked beams: 2 branches of ``prefix`` distinct members per row, then
    columns of ``levels`` entries (children follow their parent)."""
    kept = np.stack([rng.permutation(n)[:prefix] for _ in range(2 * rows)], 1).reshape(prefix, 2, rows)
    return list(kept) + [rng.integers(0, n, (level, rows)) for level in levels]


def branch_members(columns: list[np.ndarray], branch: int, row: int) -> list[int]:
    branches = columns[-1].shape[0]
    return [int(c[branch // (branches // c.shape[0]), row]) for c in columns]


BRANCH_SUMS = {  # the CPU's compiled loops, and the torch operations every other device runs
    "compiled": (branch_sums.pair_sums, branch_sums.outside_sums, "cpu"),
    "device-on-cpu": (branch_sums._device_pair_sums, branch_sums._device_outside_sums, "cpu"),
    "device-on-cuda": (branch_sums.pair_sums, branch_sums.outside_sums, "cuda"),
}
NEEDS_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize(
    "implementation", [pytest.param(name, marks=NEEDS_CUDA if "cuda" in name else ()) for name in BRANCH_SUMS]
)
def test_branch_sums_add_left_to_right(implementation):
    # Similarities on a coarse grid (many equal terms, as between identical GKs) and of mixed magnitudes,
    # so that any other order of the adds gives other last bits on some branch.
    pair_sums, outside_sums, device = BRANCH_SUMS[implementation]
    rng = np.random.default_rng(5)
    n, rows, groups = 40, 6, 2
    sim = np.round(rng.normal(size=(groups, n, n)), 1) * 10.0 ** rng.integers(-8, 3, (groups, n, n))
    group = np.arange(rows) % groups
    columns = random_beams(rng, n, rows, prefix=21, levels=(4, 8, 16))
    as_tensors = [torch.from_numpy(c).to(device) for c in columns]
    inner = pair_sums(torch.from_numpy(sim.reshape(-1)).to(device), n, torch.from_numpy(group).to(device), as_tensors)
    values = sim[group][None].repeat(16, axis=0)[:, :, 0] + rng.normal(size=(16, rows, n))
    inner, outer = inner.cpu().numpy(), outside_sums(torch.from_numpy(values).to(device), as_tensors).cpu().numpy()
    reordered = 0
    for branch, row in itertools.product(range(16), range(rows)):
        members = branch_members(columns, branch, row)
        expected = 0.0
        for a, b in itertools.combinations(range(len(members)), 2):
            expected += sim[group[row], members[a], members[b]]
        assert inner[branch, row] == expected
        reordered += math.fsum(sim[group[row], a, b] for a, b in itertools.combinations(members, 2)) != expected
        expected = 0.0
        for p in range(n):
            if p not in members:
                expected += values[branch, row, p]
        assert outer[branch, row] == expected
    assert reordered  # the test can tell the order of the adds


def test_the_search_on_a_gpu_adds_as_on_the_cpu(monkeypatch, shared, authors_checkpoint):
    """The torch sums a GPU runs, put in place of the compiled ones on the CPU, give the golden selection."""
    from gkp.application.checkpoints.io import load_model
    from gkp.entries.grouped_kernels import search

    monkeypatch.setattr(search, "pair_sums", branch_sums._device_pair_sums)
    monkeypatch.setattr(search, "outside_sums", branch_sums._device_outside_sums)
    golden = json.loads((shared / "golden" / "srgkp_resnet20_default.json").read_text())
    model, _ = load_model(authors_checkpoint)
    layers = SRGKP.select(model, 0.4375, SRGKPParams()).layers
    assert {name: plan.to_dict()["kept"] for name, plan in layers.items()} == {
        name: expected["kept"] for name, expected in golden["layers"].items()
    }


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_search_runs_on_the_models_gpu_with_the_cpus_selection():
    model = build_model("resnet20")
    on_cpu = SRGKP.select(model, 0.4375, SRGKPParams()).layers
    on_gpu = SRGKP.select(model.cuda(), 0.4375, SRGKPParams()).layers
    assert {k: v.to_dict() for k, v in on_gpu.items()} == {k: v.to_dict() for k, v in on_cpu.items()}


@pytest.mark.slow
def test_vgg16_layers_of_64_inputs_equal_the_oracle():
    names = ["features.3", "features.7"]  # the plain-Python oracle takes hours on the wider layers
    model = build_model("vgg16")
    model.grouped_kernel_targets = lambda scope="3x3": names
    layers = SRGKP.select(model, 0.4375, SRGKPParams()).layers
    for name in names:
        expected = oracle.srgkp_layer(model.get_submodule(name).weight.detach().numpy())
        got = layers[name].to_dict()
        assert (got["filter_order"], got["kept"]) == (expected["filter_order"], expected["kept"]), name
