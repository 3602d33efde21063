"""CC (baselines/cc.py) against small readable versions of its official code on hand-made inputs: the unit
scores, the exponential fit, the allocation, the step-wise removal and its output, and CC's own MACs
count; then end to end on synthetic data, and its MACs knob on trained ResNets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression

from baselines import cc
from gkp.application.catalog import build_model
from gkp.foundation.contracts import PruningContext
from gkp.foundation.errors import PruningError
from gkp.mechanisms.layers.restructured import FactorisedConv2d
from gkp.mechanisms.pruning.plan import FactorisedPlan, Plan
from gkp.mechanisms.pruning.surgery import apply


def hand_conv(out_channels=4, in_channels=3, seed=0) -> cc.Conv:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator, dtype=torch.float64)
    gradient = torch.randn(out_channels, in_channels, 3, 3, generator=generator, dtype=torch.float64)
    return cc.Conv("conv", weight, gradient, positions=16)


def without_channel(weight: torch.Tensor, channel: int) -> torch.Tensor:
    """A (C_out, C_in k k) matrix with input channel ``channel``'s k x k columns zeroed (k = 3)."""
    changed = weight.clone().view(weight.shape[0], -1, 9)
    changed[:, channel] = 0
    return changed.view_as(weight)


def readable_proxy(candidate, dense, gradient, n, gamma=0.9) -> float:
    """The code's ``cal_metric`` for one candidate weight, term by term, with its SVD."""
    u, s, vh = torch.linalg.svd(candidate, full_matrices=False)
    change = candidate - dense
    backward = torch.sum((gradient * change) ** 2)
    forward = torch.sum((gradient * change) ** 2 + 2 / (n - 1) * (2 * (gradient * gradient * change * -candidate)))
    spread = (u**2) @ torch.diag(s**2) @ (vh**2)
    forward += torch.sum((gradient * candidate) ** 2 + gradient**2 * spread) / (n - 1)
    return float(backward + gamma * forward)


def readable_step_scores(conv: cc.Conv, weight, pruned: list[int], zeroed: int) -> list[tuple[str, int, float]]:
    """Every remaining unit scored the code's way: a copy of the weight per unit, an SVD per copy."""
    n = conv.in_channels - len(pruned) + conv.rank - zeroed
    scores = [
        (cc.PRUNE, j, readable_proxy(without_channel(weight, j), conv.weight, conv.gradient, n))
        for j in range(conv.in_channels)
        if j not in pruned
    ]
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    for k in range(conv.rank - zeroed):
        kept = s.clone()
        kept[k] = 0
        scores.append((cc.TRUNCATE, k, readable_proxy(u @ torch.diag(kept) @ vh, conv.weight, conv.gradient, n)))
    return scores


# ------------------------------------------------------------------------------------------- scores


def test_the_first_scores_are_the_papers_unit_costs_on_a_4x3x3x3_conv():
    conv = hand_conv()
    w, g = conv.weight.view(4, 3, 3, 3), conv.gradient.view(4, 3, 3, 3)
    expected = [(cc.PRUNE, j, float(((g[:, j] * w[:, j]) ** 2).sum())) for j in range(3)]
    u, s, vh = torch.linalg.svd(conv.weight, full_matrices=False)
    for k in range(conv.rank):  # rank min(4, 3 x 3) = 4
        kept = s.clone()
        kept[k] = 0
        change = u @ torch.diag(kept) @ vh - conv.weight
        expected.append((cc.TRUNCATE, k, float(((conv.gradient * change) ** 2).sum())))
    scores = cc.first_scores(conv)
    assert [unit[:2] for unit in scores] == [unit[:2] for unit in expected]
    assert [unit[2] for unit in scores] == pytest.approx([unit[2] for unit in expected], rel=1e-10)


def test_the_spreads_from_updated_gram_eigenvectors_equal_the_ones_from_each_candidates_svd():
    conv = hand_conv(out_channels=5, in_channels=4, seed=3)
    weight = without_channel(conv.weight, 1)  # a channel already removed
    expected = []
    for j in (0, 2, 3):
        u, s, vh = torch.linalg.svd(without_channel(weight, j), full_matrices=False)
        expected.append(float((conv.gradient**2 * ((u**2 * s**2) @ vh**2)).sum()))
    assert cc.channel_spreads(weight, conv.gradient, conv, [0, 2, 3]).tolist() == pytest.approx(expected, rel=1e-9)


def test_each_step_scores_every_remaining_unit_as_the_codes_cal_metric():
    conv = hand_conv(out_channels=6, in_channels=4, seed=1)
    removal = cc.Removal(conv, gamma=0.9)
    for _ in range(3):  # after some units went, both kinds
        expected = readable_step_scores(conv, removal.weight, removal.pruned, removal.zeroed)
        scores = removal._scores()
        assert [unit[:2] for unit in scores] == [unit[:2] for unit in expected]
        assert [unit[2] for unit in scores] == pytest.approx([unit[2] for unit in expected], rel=1e-8)
        removal._step()


def test_the_step_wise_removal_takes_the_lowest_scored_unit_each_step_and_stops_at_its_target():
    conv = hand_conv(out_channels=6, in_channels=4, seed=2)
    removal = cc.Removal(conv, gamma=0.9)
    weight, pruned, zeroed, taken = conv.weight.clone(), [], 0, []
    for _ in range(5):  # per_step is 1: 1% of 4 + 6 units
        kind, index, _ = min(readable_step_scores(conv, weight, pruned, zeroed), key=lambda unit: unit[2])
        taken.append((kind, index))
        if kind == cc.PRUNE:
            pruned.append(index)
            weight = without_channel(weight, index)
        else:
            weight = cc.truncated(weight, index)
            zeroed += 1
    for _ in range(5):
        removal._step()
    assert removal.pruned == [index for kind, index in taken if kind == cc.PRUNE]
    assert removal.zeroed == sum(kind == cc.TRUNCATE for kind, _ in taken)
    # the plan for a target is the first state that saves it, and reads the dense weight's kept inputs
    target = conv.macs - removal.states[2].cost
    state = next(state for state in removal.states if conv.macs - state.cost >= target)
    plan = removal.plan(target)
    assert len(plan.keep_in) == conv.in_channels - state.pruned
    assert plan.rank == (None if state.zeroed == 0 else conv.rank - state.zeroed)
    assert removal.plan(0.0) is None


# ------------------------------------------------------------------------------------------- fit, allocation


def test_the_exponential_fit_is_the_codes_weighted_linear_regression_of_the_log_cost():
    saved = np.array([0.0, 0.1, 0.25, 0.2, 0.5, 0.7, 0.9])
    costs = np.array([0.0, 0.01, 0.05, 0.03, 0.2, 0.5, 2.0])
    p1, p2 = cc.exponential_fit(saved, costs, "conv")
    keep = saved > 0
    x, y = saved[keep][np.argsort(saved[keep])], costs[keep][np.argsort(saved[keep])] / costs.max()
    regression = LinearRegression().fit(x.reshape(-1, 1), np.log(y.reshape(-1, 1) + 1e-10), np.sqrt(y))
    assert p1 == pytest.approx(math.exp(regression.intercept_[0]), rel=1e-9)
    assert p2 == pytest.approx(regression.coef_[0][0], rel=1e-9)
    with pytest.raises(PruningError, match="mean gradient of 'conv' is zero"):
        cc.exponential_fit(saved, np.zeros_like(costs), "conv")


def test_the_allocation_equalises_marginal_costs_as_the_closed_form_on_two_layers():
    """Uncapped, layer i saves a_i log(b_i t) with a_i = F_i / p2_i, b_i = 1 / (p1_i p2_i), so the level
    meeting a saving y is log t = (y - sum a_i log b_i) / sum a_i."""
    fits, macs, target = [(0.01, 5.0), (0.02, 8.0)], [0.5, 0.3], 0.25
    a = [f / p2 for (_, p2), f in zip(fits, macs, strict=True)]
    b = [1 / (p1 * p2) for p1, p2 in fits]
    t = math.exp((target - sum(ai * math.log(bi) for ai, bi in zip(a, b, strict=True))) / sum(a))
    expected = [ai * math.log(bi * t) for ai, bi in zip(a, b, strict=True)]
    assert cc.layer_targets(fits, macs, target) == pytest.approx(expected, rel=1e-9)
    assert sum(cc.layer_targets(fits, macs, target)) == pytest.approx(target, rel=1e-9)
    # a layer past 0.95 of its MACs is capped there (the predictor counted 0.9 of it)
    capped = cc.layer_targets([(1e-6, 1.0), (0.02, 8.0)], [0.01, 0.3], 0.2)
    assert capped[0] == pytest.approx(0.95 * 0.01)
    with pytest.raises(PruningError, match="no allocation saves"):
        cc.layer_targets(fits, macs, 0.9 * sum(macs) + 0.01)


# ------------------------------------------------------------------------------------------- output, counting


def test_a_conv_keeps_its_dense_inputs_and_a_truncated_svd_or_the_input_pruned_conv():
    model = build_model("resnet20").eval()
    conv = model.layer2[1].conv1
    layers = {"layer2.1.conv1": FactorisedPlan((0, 3, 5, 9), 7), "layer2.1.conv2": FactorisedPlan((1, 2), None)}
    pruned = apply(model, Plan("cc", 0.5, layers))
    first, second = pruned.layer2[1].conv1, pruned.layer2[1].conv2
    u, s, vh = torch.linalg.svd(conv.weight.detach().double()[:, [0, 3, 5, 9]].flatten(1), full_matrices=False)
    assert torch.allclose(first.reduce.weight.double().flatten(1), s[:7, None].sqrt() * vh[:7], atol=1e-6)
    assert torch.allclose(first.expand.weight.double()[:, :, 0, 0], u[:, :7] * s[:7].sqrt(), atol=1e-6)
    assert isinstance(second.expand, torch.nn.Identity)
    assert torch.equal(second.reduce.weight, model.layer2[1].conv2.weight[:, [1, 2]])


def test_ccs_count_is_its_codes_on_the_dense_and_on_a_compressed_model():
    assert cc.cc_macs(build_model("resnet56"), 32) == 125_485_706  # the code's measure_flop_model, 125.486M
    model = build_model("resnet20")
    dense = cc.cc_macs(model, 32)
    layers = {"layer2.0.conv2": FactorisedPlan(tuple(range(8)), None)}
    compressed = cc.cc_macs(apply(model, Plan("cc", 0.5, layers)), 32)
    # every block conv is a compressed conv (its weights + kept inputs + 1, times its positions); the
    # stage's first block counts its second conv at the block input's 32 x 32, its first conv times the
    # fraction of outputs the second reads (8 of 32)
    inputs = {"layer1": 16, "layer2": 32, "layer3": 64}
    plain_blocks = 0
    for stage, side in (("layer1", 32), ("layer2", 16), ("layer3", 8)):
        for index in range(3):
            block = model.get_submodule(f"{stage}.{index}")
            if f"{stage}.{index}" == "layer2.0":
                continue
            entry = index == 0 and stage != "layer1"
            first = (block.conv1.weight.numel() + block.conv1.in_channels + 1) * side * side
            second_side = 2 * side if entry else side
            second = (block.conv2.weight.numel() + inputs[stage] + 1) * second_side * second_side
            plain_blocks += first + second
    entry_first = (16 * 32 * 9 + 16 + 1) * 16 * 16 * 8 / 32
    entry_second = (32 * 8 * 9 + 8 + 1) * 32 * 32
    stem_and_fc = 16 * 3 * 9 * 32 * 32 + 64 * 10 + 10
    assert compressed == stem_and_fc + plain_blocks + round(entry_first + entry_second)
    assert dense == 40_551_050  # plain: stem, 18 convs and the linear layer with its bias


# ------------------------------------------------------------------------------------------- the method


def calibration(n: int = 32, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator))]


def test_check_refuses_a_com_ratio_or_a_macs_target_beyond_the_caps_before_any_gradient():
    model = build_model("resnet20")
    with pytest.raises(PruningError, match="rates below 0.89"):
        cc.check(model, 0.95, cc.CCParams(), PruningContext())
    with pytest.raises(PruningError, match="keeps at least 0.060 of the MACs"):
        cc.check(model, 0.5, cc.CCParams(), PruningContext(target_macs=0.01))
    cc.check(model, 0.5, cc.CCParams(), PruningContext(target_macs=0.5))


def test_cc_runs_end_to_end_and_its_plan_records_its_own_count(tmp_path):
    """ResNet-8 on digits: the dense model, CC at com_ratio 0.3 on two calibration batches, one
    fine-tuning epoch with clipping and a crop padding of its own; the factorised model reloads from its plan."""
    from gkp.application.checkpoints.io import load_model
    from gkp.application.config import build_experiment
    from gkp.application.pipeline.run import run_experiment

    from conftest import tiny_config

    prune = {"method": "cc", "rate": 0.3, "calibration": {"batches": 2, "batch_size": 32}}
    finetune = {"epochs": 1, "clip_grad_norm": 1.0, "crop_padding": 2}
    digits = {"name": "digits", "batch_size": 64, "image_size": None, "train_size": 256, "test_size": 128}
    config = tiny_config(prune=prune, data=digits, train={"epochs": 1}, finetune=finetune, attacks=[])
    results = run_experiment(build_experiment(config), out=tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["layers"] and all(layer["type"] == "factorised" for layer in plan["layers"].values())
    assert results["method_macs"] == plan["metadata"]["pruned"]["method_macs"]  # the fine-tuned model's
    metadata = plan["metadata"]
    assert metadata["selection"]["com_ratio"] == 0.3
    assert metadata["pruned"]["method_macs"] == metadata["selection"]["cc_macs"]
    assert metadata["dense"]["method_macs"] == metadata["selection"]["dense_cc_macs"]
    # (ResNet-8's compressed count may exceed its dense one: two of its three blocks open a stage, whose
    # second conv CC's counter counts at twice the side)
    assert metadata["pruned"]["macs"] < 0.8 * metadata["dense"]["macs"]
    model, _ = load_model(tmp_path / "finetuned.ckpt", torch.device("cpu"))
    assert any(isinstance(m, FactorisedConv2d) for m in model.modules())


def trained_resnet(shared, depth: int) -> torch.nn.Module:
    from gkp.application.checkpoints.importers.akamaster import convert_akamaster
    from gkp.application.checkpoints.zoo import entry_named

    files = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}
    return convert_akamaster(shared / "checkpoints" / files[depth], entry_named(f"resnet{depth}-akamaster")).eval()


def real_batches(shared, count: int) -> list:
    with np.load(shared / "data" / "cifar10_train_prefix.npz") as arrays:
        images = torch.tensor(arrays["images"][:count]).permute(0, 3, 1, 2).float() / 255
        labels = torch.tensor(arrays["labels"][:count])
    return list(zip(images.split(128), labels.split(128), strict=True))


def knob_reaches_its_macs(shared, depth: int, target: float, images: int) -> None:
    model = trained_resnet(shared, depth)
    batches = real_batches(shared, images)
    selection = cc.select(model, 0.5, cc.CCParams(), PruningContext(calibration=lambda: batches, target_macs=target))
    pruned = apply(model, Plan("cc", None, selection.layers))
    kept = cc.cc_macs(pruned, 32) / cc.cc_macs(model, 32)
    print(
        f"cc resnet{depth}: com_ratio {selection.notes['com_ratio']:.4f} keeps {kept:.4f} of the MACs (target {target})"
    )
    assert abs(kept - target) <= 0.005 * target


def test_the_macs_target_is_met_within_half_a_percent_in_ccs_count_on_a_trained_resnet20(shared):
    knob_reaches_its_macs(shared, 20, 0.5, images=256)


@pytest.mark.slow
def test_the_macs_target_is_met_within_half_a_percent_in_ccs_count_on_a_trained_resnet56(shared):
    knob_reaches_its_macs(shared, 56, 69.837 / 125.486, images=4660)  # the paper's ResNet-56 row


# the paper's CC rows, MACs in CC's count (millions), Tables 9-12 and 17-19
PAPER_MACS = {"cc_resnet32": 39.261, "cc_resnet56": 69.837, "cc_resnet110": 144.414, "cc_vgg16": 178.107}


@pytest.mark.parametrize("stem", sorted(PAPER_MACS))
def test_each_paper_config_asks_for_the_papers_macs_in_ccs_count(stem):
    from pathlib import Path

    from gkp.application.config import load_experiment

    exp = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "paper" / f"{stem}.yaml")
    dense = cc.cc_macs(build_model(exp.model.arch), 32) / 1e6
    assert exp.prune.method == "cc" and exp.prune.target_macs * dense == pytest.approx(PAPER_MACS[stem], abs=0.01)
    assert exp.finetune.clip_grad_norm == 1.0 and exp.finetune.crop_padding == 8 and exp.data.crop_padding is None


@pytest.mark.slow
def test_cc_compresses_and_fine_tunes_a_trained_resnet20_on_real_cifar_images(tmp_path, shared, authors_checkpoint):
    """The authors' trained ResNet-20 and 4,660 real CIFAR-10 images (4,000 to train on, 660 held out):
    CC to half the dense MACs in its count from the gradient of all 4,000 training images, two
    fine-tuning epochs as CC's (clipping, crops padded by 8); the model stays far above chance on the
    held-out images (0.724 measured, the dense 0.997) and reloads from its plan."""
    from gkp.application.checkpoints.io import load_model
    from gkp.application.config import build_experiment
    from gkp.application.pipeline.run import run_experiment

    from conftest import shared_cifar_npz

    config = {
        "name": "cc",
        "device": "cpu",
        "stages": ["prune", "finetune", "eval"],
        "model": {"checkpoint": str(authors_checkpoint)},
        "data": shared_cifar_npz(shared, tmp_path),
        "prune": {"method": "cc", "target_macs": 0.5, "calibration": {"batches": 32, "batch_size": 125}},
        "finetune": {"epochs": 2, "lr": 0.01, "weight_decay": 1e-4, "clip_grad_norm": 1.0, "crop_padding": 8},
        "eval": {"models": ["final", "dense"]},
    }
    results = run_experiment(build_experiment(config), out=tmp_path / "run")
    dense = results["other_models"][0]
    print(f"cc: compressed {results['benign']['accuracy']:.4f}, dense {dense['benign']['accuracy']:.4f}")
    assert results["benign"]["accuracy"] > 0.5
    assert abs(results["method_macs"] / dense["method_macs"] - 0.5) <= 0.0025
    model, _ = load_model(tmp_path / "run" / "finetuned.ckpt", torch.device("cpu"))
    assert sum(isinstance(m, FactorisedConv2d) for m in model.modules()) == 18
