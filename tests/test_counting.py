"""Params and MACs against hand counts: dense ResNet-20, and ResNet-20 after L1 filter pruning."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from baselines import l1
from gkp.application.catalog import PRUNING_METHODS, build_model
from gkp.mechanisms.counting import count_macs, count_params, measure
from gkp.mechanisms.pruning.plan import AdaptersPlan, FactorisedPlan, FilterPlan, Plan, RemovedBlockPlan
from gkp.mechanisms.pruning.surgery import apply


def cifar_resnet_by_hand(inner: list[list[int]], classes: int = 10) -> tuple[int, int]:
    """(params, MACs) of a 32x32 CIFAR ResNet whose block i of stage s has ``inner[s][i]`` inner channels."""
    params, macs = 3 * 16 * 9 + 2 * 16, 32 * 32 * 16 * 3 * 9
    in_planes = 16
    for width, side, stage in zip((16, 32, 64), (32, 16, 8), inner, strict=True):
        for k in stage:
            params += in_planes * k * 9 + 2 * k + k * width * 9 + 2 * width
            macs += side * side * (k * in_planes * 9 + width * k * 9)
            in_planes = width
    return params + 64 * classes + classes, macs + 64 * classes


def test_dense_resnet20_matches_the_hand_count():
    model = build_model("resnet20")
    assert cifar_resnet_by_hand([[16] * 3, [32] * 3, [64] * 3]) == (269_722, 40_551_040)
    assert (count_params(model), count_macs(model, 32)) == (269_722, 40_551_040)


def test_pruned_resnet20_matches_the_hand_count():
    model = build_model("resnet20")
    kept = {0: [8, 16, 32], 1: [4, 20, 50], 2: [16, 1, 64]}  # (per block index) inner widths per stage
    layers = {f"layer{s + 1}.{i}.conv1": FilterPlan(tuple(range(kept[i][s]))) for s in range(3) for i in range(3)}
    pruned = apply(model, Plan("hand", None, layers))
    inner = [[kept[i][s] for i in range(3)] for s in range(3)]
    assert (measure(pruned, 32).params, measure(pruned, 32).macs) == cifar_resnet_by_hand(inner)


def test_l1_at_half_rate_matches_the_hand_count():
    model = build_model("resnet20")
    pruned = apply(model, Plan("l1", 0.5, l1.L1.select(model, 0.5, l1.L1Params()).layers))
    assert (count_params(pruned), count_macs(pruned, 32)) == cifar_resnet_by_hand([[8] * 3, [16] * 3, [32] * 3])


def test_macs_scale_with_the_input_side_and_leave_the_model_as_it_was():
    model = build_model("resnet20").train()
    assert count_macs(model, 64) - 64 * 10 == 4 * (count_macs(model, 32) - 64 * 10)
    assert model.training
    assert count_macs(model, (32, 64)) == count_macs(model, (64, 32))


def test_vgg16_matches_the_papers_parameter_count():
    assert count_params(build_model("vgg16")) == 14_728_266  # 14.728M in the SR-GKP paper's Table 12
    assert torch.is_tensor(next(build_model("vgg16").parameters()))


STRUCTURES = ["resnet20", "vgg16", "resnet50", "grouped kernels", "filters", "removed, factorised, adapted"]


@functools.cache
def structures() -> dict[str, tuple]:
    """A model of every kind a plan makes, with its input side."""
    resnet = build_model("resnet20").eval()
    grouped = PRUNING_METHODS.get("gkp_random")
    filters = PRUNING_METHODS.get("l1")
    changed = {
        "layer1.1": RemovedBlockPlan(),
        "layer2.1.conv1": FactorisedPlan(tuple(range(0, 32, 2)), 10),
        "layer2.2.conv2": FactorisedPlan((1, 2, 3), None),
        "layer3.1.conv2": AdaptersPlan(tuple(range(40)), tuple(range(0, 64, 3))),
    }
    return {
        "resnet20": (resnet, 32),
        "vgg16": (build_model("vgg16").eval(), 32),
        "resnet50": (build_model("resnet50").eval(), 64),
        "grouped kernels": (apply(resnet, Plan("g", 0.5, grouped.select(resnet, 0.5, grouped.params()).layers)), 32),
        "filters": (apply(resnet, Plan("l1", 0.5, filters.select(resnet, 0.5, filters.params()).layers)), 32),
        "removed, factorised, adapted": (apply(resnet, Plan("mix", None, changed)), 32),
    }


@pytest.mark.parametrize("name", STRUCTURES)
def test_the_physical_macs_are_half_of_torchs_flop_count(name):
    """torch's own FlopCounterMode counts 2 FLOPs per multiply-accumulate of every conv and matrix product:
    our physical count agrees on dense, grouped, filter-pruned and restructured models."""
    model, side = structures()[name]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    assert count_macs(model, side) == counter.get_total_flops() // 2
