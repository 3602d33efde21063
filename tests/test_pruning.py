"""Plans, the L1 criterion and surgery: the physically pruned model equals the masked dense one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines import l1
from gkp.application.catalog import PRUNING_METHODS, build_model
from gkp.foundation.contracts import model_spec
from gkp.foundation.errors import PruningError
from gkp.mechanisms.counting import measure
from gkp.mechanisms.pruning.plan import FilterPlan, Plan, keep_count, keep_top_k
from gkp.mechanisms.pruning.surgery import apply, apply_mask


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so a wrongly sliced channel shows in the logits."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


CASES = [("resnet20", {}, 32), ("resnet56", {}, 32), ("vgg16", {}, 32), ("resnet50", {"stem": "small"}, 32)]


@pytest.mark.parametrize("arch, args, side", CASES, ids=[c[0] for c in CASES])
def test_l1_pruned_model_equals_the_masked_dense_model(arch, args, side):
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model(arch, **args))
    plan = Plan("l1", 0.5, PRUNING_METHODS.get("l1").select(model, 0.5, l1.L1Params()).layers)
    pruned, masked = apply(model, plan), apply_mask(model, plan)
    x = torch.rand(4, 3, side, side)
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked(x), atol=1e-5, rtol=1e-5)
    dense = measure(model, side)
    assert measure(pruned, side).params < dense.params and measure(pruned, side).macs < dense.macs


def test_surgery_keeps_the_input_model_and_records_the_plan():
    model = build_model("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = Plan("l1", 0.5, l1.L1.select(model, 0.5, l1.L1Params()).layers)
    pruned = apply(model, plan)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.layer1[0].conv1.out_channels == 16 and pruned.layer1[0].conv1.out_channels == 8
    assert pruned.layer1[0].bn1.num_features == 8 and pruned.layer1[0].conv2.in_channels == 8
    assert model_spec(pruned).plan == plan.to_dict() and model_spec(model).plan is None


def test_l1_keeps_the_largest_filters():
    model = build_model("resnet8")
    conv = model.layer1[0].conv1
    with torch.no_grad():
        conv.weight.zero_()
        for j in range(16):
            conv.weight[j, 0, 0, 0] = (-1) ** j * (j % 5)  # |W_j|_1 = j mod 5
    layers = l1.L1.select(model, 0.75, l1.L1Params()).layers
    # Scores 0,1,2,3,4,0,1,2,3,4,...: the four largest are the 4s at 4, 9, 14 and then the 3 at index 3.
    assert layers["layer1.0.conv1"].kept == (3, 4, 9, 14)


def test_keep_count_and_top_k():
    assert keep_count(16, 0.4375, "x") == 9 and keep_count(10, 0.3, "x") == 7 and keep_count(64, 0.625, "x") == 24
    with pytest.raises(PruningError, match="would remove all 16 channels of 'conv'; rates up to 0.9375"):
        keep_count(16, 0.95, "conv")
    assert keep_top_k([1.0, 3.0, 3.0, 2.0], 2) == (1, 2)
    assert keep_top_k([5.0, 5.0, 5.0], 2) == (0, 1)


def test_l1_check_rejects_an_impossible_rate():
    with pytest.raises(PruningError, match="layer1.0.conv1"):
        l1.L1.check(build_model("resnet20"), 0.97, l1.L1Params())


def test_plan_round_trips_and_rejects_malformed_input():
    plan = Plan("l1", 0.5, {"layer1.0.conv1": FilterPlan((0, 2))}, {}, {"note": 1})
    assert Plan.from_dict(plan.to_dict()) == plan
    with pytest.raises(PruningError, match="not a pruning plan"):
        Plan.from_dict({"layers": {}})
    with pytest.raises(PruningError, match="unknown type 'kernels'"):
        Plan.from_dict({"format": 1, "layers": {"a": {"type": "kernels"}}})
    with pytest.raises(PruningError, match="must be a list of channel indices"):
        Plan.from_dict({"format": 1, "layers": {"a": {"type": "filters", "kept": "0,1"}}})


@pytest.mark.parametrize(
    "layers, message",
    [
        ({"layer1.0.conv1": FilterPlan((3, 1))}, "must be sorted, unique and in \\[0, 16\\)"),
        ({"layer1.0.conv1": FilterPlan((0, 16))}, "must be sorted, unique and in \\[0, 16\\)"),
        ({"layer1.0.conv1": FilterPlan(())}, "keeps no channel"),
        ({"layer1.0.conv2": FilterPlan((0,))}, "'layer1.0.conv2' is not filter-prunable"),
    ],
)
def test_surgery_rejects_invalid_plans(layers, message):
    with pytest.raises(PruningError, match=message):
        apply(build_model("resnet20"), Plan("hand", None, layers))
