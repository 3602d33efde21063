"""ThiNet: the greedy removal against the paper's loop, the least-squares scales, the sampled
contributions against the consumer's own output, and surgery with scales (pruned == masked)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines import thinet
from baselines.thinet import (
    ThiNetParams,
    contributions,
    least_squares_scales,
    reconstruction_error,
    removal_order,
    removal_scores,
    sample_entries,
)
from gkp.application.catalog import build_model
from gkp.foundation.contracts import PruningContext
from gkp.foundation.errors import PruningError
from gkp.mechanisms.pruning.plan import FilterPlan, Plan, keep_top_k
from gkp.mechanisms.pruning.surgery import apply, apply_mask

from test_pruning import randomise_batchnorm

# VGG-16's layout at an eighth of the width: the same 13 convs, pools and linear classifier.
NARROW_VGG16 = (8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64)


def paper_greedy(x: np.ndarray, count: int) -> list[int]:
    """ThiNet's value_sum, written as in the paper: add to T the channel j minimising ||sum_{T+j} x||^2."""
    removed: list[int] = []
    total = np.zeros(x.shape[0])
    for _ in range(count):
        best, best_value = -1, np.inf
        for j in range(x.shape[1]):
            if j not in removed and np.sum((total + x[:, j]) ** 2) < best_value:
                best, best_value = j, np.sum((total + x[:, j]) ** 2)
        removed.append(best)
        total = total + x[:, best]
    return removed


def random_contributions(samples: int, channels: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Channels of different magnitudes, and correlated ones, so the greedy's choices are not trivial.
    base = torch.randn(samples, channels, generator=generator, dtype=torch.float64)
    mixed = base @ torch.randn(channels, channels, generator=generator, dtype=torch.float64) * 0.3
    return (base + mixed) * torch.linspace(0.2, 2.0, channels, dtype=torch.float64)


def test_greedy_matches_the_papers_loop_for_every_removal_count():
    x = random_contributions(30, 9)
    order = removal_order(x)
    assert sorted(order) == list(range(9))
    for count in range(1, 9):
        reference = paper_greedy(x.numpy(), count)
        assert order[:count] == reference
        # Keeping the top-(n - count) scores keeps exactly the channels the greedy did not remove.
        assert keep_top_k(removal_scores(x), 9 - count) == tuple(sorted(set(range(9)) - set(reference)))


def test_greedy_on_hand_made_contributions():
    v = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    w = torch.tensor([2.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    # Channel 1 never contributes: removed first. Channels 0 and 2 cancel: once 0 is gone (the tie with
    # 2 goes to the lower index), removing 2 as well costs nothing. Channel 3 (||2w||^2 = 28 > 14.25) last.
    x = torch.stack([v, torch.zeros(4, dtype=torch.float64), -v, 2 * w], dim=1)
    assert removal_order(x) == [1, 0, 2, 3] == paper_greedy(x.numpy(), 4)
    assert removal_scores(x).tolist() == [1.0, 0.0, 2.0, 3.0]


def test_least_squares_recovers_a_kept_only_output_exactly():
    x = random_contributions(20, 6)
    # The removed channels contribute nothing: the kept ones reproduce y with scale 1.
    zeroed = x.clone()
    zeroed[:, [1, 4]] = 0
    kept = (0, 2, 3, 5)
    scales = least_squares_scales(zeroed, kept)
    assert torch.allclose(scales, torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert reconstruction_error(zeroed, kept, scales) < 1e-20
    # A removed channel that is a combination of kept ones is absorbed into their scales exactly.
    combined = x.clone()
    combined[:, 1] = 0.5 * x[:, 0] - 2.0 * x[:, 3]
    scales = least_squares_scales(combined, (0, 2, 3, 4, 5))
    assert torch.allclose(scales, torch.tensor([1.5, 1.0, -1.0, 1.0, 1.0], dtype=torch.float64), atol=1e-10)
    assert reconstruction_error(combined, (0, 2, 3, 4, 5), scales) < 1e-18


def test_reconstruction_error_does_not_grow_as_channels_are_kept():
    x = random_contributions(40, 10, seed=1)
    scores = removal_scores(x)
    errors = []
    for k in range(1, 11):
        kept = keep_top_k(scores, k)
        scales = least_squares_scales(x, kept)
        errors.append(reconstruction_error(x, kept, scales))
        # The least-squares scales never do worse than leaving the weights alone.
        assert errors[-1] <= reconstruction_error(x, kept, torch.ones(k, dtype=torch.float64)) + 1e-9
    assert all(later <= earlier + 1e-9 for earlier, later in zip(errors[:-1], errors[1:], strict=True))
    assert errors[0] > 1.0 and errors[-1] < 1e-18


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(3, 5, 3, stride=2, padding=1),
        nn.Conv2d(3, 4, (3, 2), stride=(1, 2), padding=(2, 1), dilation=2, padding_mode="reflect"),
        nn.Linear(3, 6),
    ],
    ids=["conv-stride2", "conv-dilated-reflect", "linear"],
)
def test_contributions_split_the_consumers_output_by_input_channel(layer):
    torch.manual_seed(0)
    inputs = torch.randn(2, 3, 7, 9) if isinstance(layer, nn.Conv2d) else torch.randn(2, 3)
    entries = sample_entries(layer, inputs, 25, np.random.default_rng(0))
    x = contributions(layer, inputs, entries)
    assert x.shape == (50, 3) and x.dtype == torch.float64
    with torch.no_grad():
        for c in range(3):  # the consumer, bias excluded, applied to channel c alone
            alone = torch.zeros_like(inputs, dtype=torch.float64)
            alone[:, c] = inputs[:, c]
            if isinstance(layer, nn.Linear):
                out = F.linear(alone, layer.weight.double())
            else:
                out = F.conv2d(
                    F.pad(alone, (layer.padding[1],) * 2 + (layer.padding[0],) * 2, mode="reflect")
                    if layer.padding_mode == "reflect"
                    else alone,
                    layer.weight.double(),
                    None,
                    layer.stride,
                    0 if layer.padding_mode == "reflect" else layer.padding,
                    layer.dilation,
                )
            assert torch.allclose(x[:, c], out[entries], atol=1e-12)
        full = layer(inputs).double() - layer.bias.double().view(1, -1, *([1] * (inputs.dim() - 2)))
        assert torch.allclose(x.sum(dim=1), full[entries], atol=1e-5)


def test_plan_scales_round_trip_and_are_validated():
    plan = Plan("thinet", 0.5, {"layer1.0.conv1": FilterPlan((0, 2), (1.5, -0.25)), "x": FilterPlan((1,))})
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["layers"]["layer1.0.conv1"]["scales"] == [1.5, -0.25] and "scales" not in data["layers"]["x"]
    assert Plan.from_dict(data) == plan
    for bad in ([1.0], [1.0, "2"], [1.0, True], "1,2"):
        with pytest.raises(PruningError, match="scales must be a list of 2 finite numbers"):
            Plan.from_dict({"format": 1, "layers": {"a": {"type": "filters", "kept": [0, 1], "scales": bad}}})
    with pytest.raises(PruningError, match="1 scales for 2 kept channels"):
        apply(build_model("resnet8"), Plan("hand", None, {"layer1.0.conv1": FilterPlan((0, 1), (2.0,))}))


CASES = [
    ("resnet8", {}, "layer2.0.conv1", "layer2.0.conv2"),
    ("vgg16", {"layout": NARROW_VGG16}, "features.40", "classifier"),
]


@pytest.mark.parametrize("arch, args, layer, consumer", CASES, ids=["resnet8", "vgg16-narrow"])
def test_thinet_pruned_model_equals_the_masked_model_with_scales(arch, args, layer, consumer):
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model(arch, **args))
    calibration = [(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))]
    layers = thinet.ENTRY.select(model, 0.5, ThiNetParams(), PruningContext(calibration=lambda: calibration)).layers
    plan = Plan("thinet", 0.5, layers)
    assert set(layers) == {g.conv for g in model.filter_pruning_groups()}
    chosen = layers[layer]
    assert chosen.scales is not None and len(chosen.scales) == len(chosen.kept)
    assert max(abs(s - 1.0) for s in chosen.scales) > 1e-3  # the rescaling is not a no-op
    pruned, masked = apply(model, plan), apply_mask(model, plan)
    kept = torch.tensor(chosen.kept)
    dense = model.get_submodule(consumer).weight.detach()
    shape = (1, -1) + (1,) * (dense.dim() - 2)
    expected = dense[:, kept] * torch.tensor(chosen.scales, dtype=dense.dtype).view(shape)
    assert torch.equal(pruned.get_submodule(consumer).weight, expected)
    assert torch.equal(masked.get_submodule(consumer).weight[:, kept], expected)
    unscaled = Plan("thinet", 0.5, {name: FilterPlan(p.kept) for name, p in layers.items()})
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(pruned(x), apply_mask(model, unscaled)(x), atol=1e-3)
    # The plan, scales included, survives plan.json.
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_select_is_deterministic_for_a_seed_and_needs_calibration():
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model("resnet8"))
    calibration = [(torch.rand(3, 3, 16, 16), torch.zeros(3, dtype=torch.long))]

    def select(seed: int) -> dict:
        context = PruningContext(calibration=lambda: calibration)
        return thinet.ENTRY.select(model, 0.5, ThiNetParams(4, seed), context).layers

    first = select(0)
    assert first == select(0) and first != select(1)
    assert thinet.ENTRY.calibrated and "thinet" == thinet.ENTRY.name
    with pytest.raises(PruningError, match="calibration"):
        thinet.ENTRY.select(model, 0.5, ThiNetParams())
