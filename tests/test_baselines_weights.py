"""The weights-only filter-pruning baselines (L2, FPGM, random, LAMP, DepGraph group norm, slimming):
each score against a plain loop written from its paper, on hand-made weights with known answers, and
through ``METHOD.select`` on a small CIFAR ResNet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from baselines import fpgm, group_norm, l2, lamp, random, slimming
from baselines.filter_method import filter_method
from gkp.application.catalog import build_model
from gkp.entries.models.vgg16 import VGG
from gkp.foundation.contracts import PruningContext
from gkp.foundation.errors import ConfigError, PruningError
from gkp.foundation.schema import build
from gkp.mechanisms.pruning.dependencies import filter_groups
from gkp.mechanisms.pruning.plan import Plan
from gkp.mechanisms.pruning.surgery import apply

METHODS = [l2.ENTRY, fpgm.ENTRY, random.ENTRY, lamp.ENTRY, group_norm.ENTRY, slimming.ENTRY]
LAYERS = ("layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1")  # resnet8's filter groups
SIZES = (16, 32, 64)


def select(method, model: nn.Module, rate: float) -> dict[str, tuple[int, ...]]:
    selection = method.select(model, rate, method.params(), PruningContext())
    return {name: plan.kept for name, plan in selection.layers.items()}


def kept_sizes(kept: dict[str, tuple[int, ...]]) -> list[int]:
    """Channels each of resnet8's layers keeps (a layer absent from the plan keeps all)."""
    return [len(kept[name]) if name in kept else size for name, size in zip(LAYERS, SIZES, strict=True)]


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, BatchNorm scales included (they are ones after initialisation)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def flat(weight: torch.Tensor, j: int) -> list[float]:
    return [float(x) for x in weight[j].flatten().tolist()]


# ---------------------------------------------------------------- the paper's criteria as plain loops


def loop_l2(weight: torch.Tensor) -> list[float]:
    return [math.sqrt(sum(x * x for x in flat(weight, j))) for j in range(weight.shape[0])]


def loop_fpgm(weight: torch.Tensor) -> list[float]:
    filters = [flat(weight, j) for j in range(weight.shape[0])]
    return [sum(math.dist(f, g) for g in filters) for f in filters]


def loop_lamp(magnitudes: list[float]) -> list[float]:
    order = sorted(range(len(magnitudes)), key=lambda c: magnitudes[c])
    scores = [0.0] * len(magnitudes)
    for u, c in enumerate(order):
        scores[c] = magnitudes[c] / sum(magnitudes[v] for v in order[u:])
    return scores


def loop_group_norm(model: nn.Module, group) -> list[float]:
    conv = model.get_submodule(group.conv).weight.detach()
    bn = model.get_submodule(group.bn).weight.detach()
    consumers = [model.get_submodule(name).weight.detach() for name in group.consumers]
    importance = []
    for k in range(conv.shape[0]):
        members = [sum(x * x for x in flat(conv, k)), float(bn[k]) ** 2]
        members += [sum(x * x for x in flat(weight.transpose(0, 1), k)) for weight in consumers]
        importance.append(sum(members) / len(members))
    mean = sum(importance) / len(importance)
    return [value / mean for value in importance]


# ---------------------------------------------------------------- L2


def test_l2_scores_are_filter_norms_not_l1():
    weight = torch.tensor([[3.0, 0, 0, 0], [1, 1, 1, 1], [0, -2, 0, 0], [0, 0, 0, 0]]).reshape(4, 1, 2, 2)
    assert l2.l2_scores(weight).tolist() == [3.0, 2.0, 2.0, 0.0]  # L1 would rank filter 1 (4) above filter 0 (3)
    random = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    assert np.allclose(l2.l2_scores(random), loop_l2(random), rtol=1e-12)
    assert l2.l2_scores(random).dtype == np.float64


def test_l2_keeps_the_largest_norm_filters_of_each_layer():
    model = build_model("resnet8")
    with torch.no_grad():
        conv = model.layer1[0].conv1.weight
        conv.zero_()
        for j in range(16):
            conv[j, j % 4, 1, 1] = (-1) ** j * (j % 5)  # ||W_j||_2 = j mod 5, signs alternate
    kept = select(l2.ENTRY, model, 0.75)
    assert kept["layer1.0.conv1"] == (3, 4, 9, 14)  # the three 4s, then the first 3 (ties to the lower index)
    assert kept_sizes(kept) == [4, 8, 16]


# ---------------------------------------------------------------- FPGM


def test_fpgm_scores_the_filters_nearest_the_geometric_median_lowest():
    weight = torch.tensor([0.0, 1.0, 2.0, 10.0]).reshape(4, 1, 1, 1)
    assert fpgm.fpgm_scores(weight).tolist() == [13.0, 11.0, 11.0, 27.0]
    random = torch.randn(10, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    assert np.allclose(fpgm.fpgm_scores(random), loop_fpgm(random), rtol=1e-12)


def test_fpgm_prunes_the_middle_of_the_layer_not_the_small_filters():
    model = build_model("resnet8")
    values = [*range(15), 100]
    with torch.no_grad():
        for j, value in enumerate(values):
            model.layer1[0].conv1.weight[j].fill_(value)
    # g(j) = 12 * sum_i |v_j - v_i|: 205 191 179 169 161 155 151 149 149 151 155 161 169 179 191 1395 (x12).
    assert loop_fpgm(model.layer1[0].conv1.weight) == [
        12.0 * g for g in (205, 191, 179, 169, 161, 155, 151, 149, 149, 151, 155, 161, 169, 179, 191, 1395)
    ]
    assert select(fpgm.ENTRY, model, 0.5)["layer1.0.conv1"] == (0, 1, 2, 3, 12, 13, 14, 15)


# ---------------------------------------------------------------- random


def test_random_plans_depend_only_on_the_seed():
    model = build_model("resnet20")
    method = random.ENTRY

    def plan(seed: int, model: nn.Module = model) -> dict:
        return method.select(model, 0.5, random.RandomParams(seed=seed), PruningContext()).layers

    assert plan(0) == plan(0) and plan(3) == plan(3)
    assert plan(0) != plan(1)
    assert plan(0) == plan(0, randomised(build_model("resnet20"), seed=5))  # the weights play no part
    scores = random.random_scores(16, 0, "layer1.0.conv1")
    assert sorted(scores.tolist()) == list(range(16)) and scores.tolist() != list(range(16))
    assert scores.tolist() != random.random_scores(16, 0, "layer1.1.conv1").tolist()  # layers differ
    with pytest.raises(ConfigError, match="prune.params.seed: must be >= 0"):
        build(random.RandomParams, {"seed": -1}, "prune.params")


# ---------------------------------------------------------------- LAMP


def test_lamp_hand_computed_four_channel_example():
    # Squared norms 1, 4, 2, 3; sorted 1 2 3 4 with tail sums 10 9 7 4.
    weight = torch.tensor([[1.0, 0, 0], [2, 0, 0], [1, 1, 0], [1, 1, 1]]).reshape(4, 3, 1, 1)
    assert np.allclose(lamp.lamp_scores(weight), [1 / 10, 4 / 4, 2 / 9, 3 / 7], rtol=0, atol=1e-15)
    assert lamp.lamp_normalise(np.array([2.0, 2.0, 0.0])).tolist() == [1.0, 0.5, 0.0]  # ties: higher index lower
    assert lamp.lamp_normalise(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    magnitudes = np.random.default_rng(3).random(12)
    assert np.allclose(lamp.lamp_normalise(magnitudes), loop_lamp(magnitudes.tolist()), rtol=1e-12)


def test_lamp_largest_channel_scores_one_and_layers_are_scale_invariant():
    model = randomised(build_model("resnet20"))
    groups = filter_groups(model)
    scores = lamp.score(model, groups, lamp.LAMPParams(), PruningContext())
    assert all(values.max() == 1.0 and np.sum(values == 1.0) == 1 for values in scores.values())
    with torch.no_grad():
        model.layer2[1].conv1.weight.mul_(1e-3)
        model.layer3[0].conv1.weight.mul_(7.3)
    rescaled = lamp.score(model, groups, lamp.LAMPParams(), PruningContext())
    assert all(np.allclose(rescaled[name], scores[name], rtol=1e-9) for name in groups)


def test_lamp_ranks_globally_and_ignores_a_layer_scale():
    model = randomised(build_model("resnet8"))
    kept = select(lamp.ENTRY, model, 0.6)
    assert sum(kept_sizes(kept)) == 112 - 67  # floor(60% of all 112 channels), spread unevenly
    assert len({size / total for size, total in zip(kept_sizes(kept), SIZES, strict=True)}) > 1
    with torch.no_grad():
        model.layer3[0].conv1.weight.mul_(1e-3)
    assert select(lamp.ENTRY, model, 0.6) == kept
    global_l2 = filter_method("global_l2", l2.L2Params, l2.score, "global L2, for contrast", allocation="global")
    assert kept_sizes(select(global_l2, model, 0.6))[2] == 1  # a global magnitude ranking empties layer3


# ---------------------------------------------------------------- DepGraph group norm


def test_group_norm_hand_computed():
    model = build_model("resnet8")
    block = model.layer1[0]
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.conv2.weight.zero_()
        for k in range(16):
            block.conv1.weight[k, k, 0, 0] = k  # ||conv1 filter k||^2 = k^2
            block.conv2.weight[(5 * k) % 16, k, 2, 1] = 1.0  # ||conv2 input channel k||^2 = 1
        block.bn1.weight.fill_(1.0)  # gamma_k^2 = 1; beta does not count
        block.bn1.bias.fill_(50.0)
    # I(k) = (k^2 + 1 + 1) / 3, mean over k (sum k^2 = 1240): (77.5 + 2) / 3, so I(k) / mean = (k^2 + 2) / 79.5.
    scores = group_norm.score(model, filter_groups(model), group_norm.GroupNormParams(), PruningContext())
    assert np.allclose(scores["layer1.0.conv1"], [(k * k + 2) / 79.5 for k in range(16)], rtol=1e-12)


@pytest.mark.parametrize("model", [build_model("resnet8"), VGG(layout=(8, "M", 12, 16))], ids=["resnet8", "vgg"])
def test_group_norm_equals_the_loop_for_conv_and_linear_consumers(model):
    model = randomised(model, seed=4)
    groups = filter_groups(model)
    scores = group_norm.score(model, groups, group_norm.GroupNormParams(), PruningContext())
    assert all(np.allclose(scores[name], loop_group_norm(model, group), rtol=1e-12) for name, group in groups.items())
    assert all(abs(values.mean() - 1.0) < 1e-12 for values in scores.values())


def test_group_norm_global_plan_ignores_a_whole_group_scale():
    model = randomised(build_model("resnet8"), seed=6)
    kept = select(group_norm.ENTRY, model, 0.4)
    assert sum(kept_sizes(kept)) == 112 - 44
    with torch.no_grad():
        for parameter in (model.layer2[0].conv1.weight, model.layer2[0].bn1.weight, model.layer2[0].conv2.weight):
            parameter.mul_(0.01)
    assert select(group_norm.ENTRY, model, 0.4) == kept


# ---------------------------------------------------------------- slimming


def test_slimming_thresholds_abs_gamma_across_layers():
    model = build_model("resnet8")
    with torch.no_grad():
        model.layer1[0].bn1.weight.copy_(torch.ones(16))
        model.layer1[0].bn1.weight[[3, 7]] = torch.tensor([0.001, -0.002])
        model.layer2[0].bn1.weight.copy_(torch.ones(32))
        model.layer2[0].bn1.weight[:4] = torch.tensor([-0.01, 0.02, -0.03, 0.04])
        model.layer2[0].bn1.weight[5] = -5.0  # negative but large: kept
        model.layer3[0].bn1.weight.copy_(torch.ones(64))
        model.layer3[0].bn1.weight[10] = 0.003
        model.layer1[0].conv1.weight.zero_()  # the conv weights play no part
    scores = slimming.score(model, filter_groups(model), slimming.SlimmingParams(), PruningContext())
    assert scores["layer2.0.conv1"][:6].tolist() == pytest.approx([0.01, 0.02, 0.03, 0.04, 1.0, 5.0], rel=1e-6)
    kept = select(slimming.ENTRY, model, 7 / 112)  # the 7 smallest |gamma| of all 112 channels
    assert kept["layer1.0.conv1"] == tuple(c for c in range(16) if c not in (3, 7))
    assert kept["layer2.0.conv1"] == tuple(range(4, 32))
    assert kept["layer3.0.conv1"] == tuple(c for c in range(64) if c != 10)


def test_slimming_keeps_one_channel_of_a_collapsed_layer():
    model = build_model("resnet8")
    with torch.no_grad():
        model.layer1[0].bn1.weight.fill_(1e-4)
        model.layer1[0].bn1.weight[9] = 2e-4
    assert select(slimming.ENTRY, model, 0.2)["layer1.0.conv1"] == (9,)


@pytest.mark.parametrize("method", [slimming.ENTRY, group_norm.ENTRY], ids=lambda m: m.name)
def test_gamma_methods_reject_batchnorm_without_scale(method):
    model = build_model("resnet8")
    model.layer2[0].bn1 = nn.BatchNorm2d(32, affine=False)
    with pytest.raises(PruningError, match="'layer2.0.bn1' has no learnable scale"):
        method.check(model, 0.5, method.params())


# ---------------------------------------------------------------- all six through the framework


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_every_method_gives_a_plan_surgery_can_apply(method):
    model = randomised(build_model("resnet8"), seed=7).eval()
    plan = Plan(method.name, 0.5, method.select(model, 0.5, method.params(), PruningContext()).layers)
    sizes = kept_sizes({name: layer.kept for name, layer in plan.layers.items()})
    if "rates" in method.budgets:  # layerwise: half of every layer
        assert sizes == [8, 16, 32]
    else:  # global: half of all 112 channels
        assert sum(sizes) == 56
    with torch.no_grad():
        assert apply(model, plan)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
