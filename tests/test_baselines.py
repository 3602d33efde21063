"""The filter-pruning baselines through their common interface, parametrised over every method: valid,
exact and deterministic plans; pruned models that run, match their masked reference and cost what the
counter measures; MACs targets; rate maps; Li et al.'s presets; calibration recorded in plan.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines.allocation import MacsModel, global_counts, layer_rates
from gkp.application.catalog import PRUNING_METHODS, build_model
from gkp.application.config import build_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.foundation.contracts import PruningContext
from gkp.foundation.errors import ConfigError, PruningError
from gkp.mechanisms.counting import measure
from gkp.mechanisms.data.splits import TensorSplit, calibration_batches
from gkp.mechanisms.pruning.dependencies import filter_groups
from gkp.mechanisms.pruning.plan import Plan, keep_count
from gkp.mechanisms.pruning.surgery import apply, apply_mask

from conftest import tiny_config
from test_pruning import randomise_batchnorm

BASELINES = {name: m for name, m in PRUNING_METHODS.items() if m.kind == "filters" and m.training is None}
METHODS = sorted(name for name in BASELINES if not name.startswith("l1_"))
RATE = 0.5


def calibration(count: int = 2, size: int = 32):
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.rand(4, 3, size, size, generator=generator), torch.randint(0, 10, (4,), generator=generator))]
    return lambda: batches * count


def select(model, name: str, rate: float = RATE, **context) -> tuple[Plan, dict]:
    """The plan of method ``name`` and its selection notes."""
    method = BASELINES[name]
    selection = method.select(model, rate, method.params(), PruningContext(calibration=calibration(), **context))
    return Plan(name, rate, selection.layers), selection.notes


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return randomise_batchnorm(build_model("resnet20"))


def is_global(name: str) -> bool:
    return "rates" not in BASELINES[name].budgets


@pytest.mark.parametrize("name", METHODS)
def test_the_plan_keeps_exactly_the_requested_channels(name, resnet20):
    plan, _ = select(resnet20, name)
    groups = filter_groups(resnet20)
    sizes = {layer: resnet20.get_submodule(layer).out_channels for layer in groups}
    kept = {layer: len(plan.layers[layer].kept) if layer in plan.layers else sizes[layer] for layer in groups}
    if is_global(name):
        assert sum(sizes.values()) - sum(kept.values()) == int(RATE * sum(sizes.values()))
    else:
        assert kept == {layer: keep_count(size, RATE, layer) for layer, size in sizes.items()}
    for layer, layer_plan in plan.layers.items():
        assert list(layer_plan.kept) == sorted(set(layer_plan.kept)) and 0 <= layer_plan.kept[0]
        assert layer_plan.kept[-1] < sizes[layer]


@pytest.mark.parametrize("name", METHODS)
def test_plans_are_deterministic_and_leave_the_model_unchanged(name, resnet20):
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    first, _ = select(resnet20, name)
    second, _ = select(resnet20, name)
    assert first.to_dict() == second.to_dict()
    assert all(torch.equal(before[k], v) for k, v in resnet20.state_dict().items())
    assert not resnet20.training and all(p.grad is None for p in resnet20.parameters())


@pytest.mark.parametrize("name", METHODS)
def test_the_pruned_model_runs_matches_its_mask_and_costs_what_the_counter_says(name, resnet20):
    plan, _ = select(resnet20, name)
    pruned, masked = apply(resnet20, plan), apply_mask(resnet20, plan)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked(x), atol=1e-5, rtol=1e-5)
    pruned.train()
    F.cross_entropy(pruned(x), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pruned.parameters())
    counts = {layer: len(layer_plan.kept) for layer, layer_plan in plan.layers.items()}
    assert MacsModel(resnet20, filter_groups(resnet20), 32).macs(counts) == measure(pruned, 32).macs
    assert measure(pruned, 32).params == sum(p.numel() for p in pruned.parameters())


@pytest.mark.parametrize("arch", ["resnet56", "vgg16"])
@pytest.mark.parametrize("name", METHODS)
def test_target_macs_is_hit_within_half_a_percent(name, arch):
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model(arch))
    plan, notes = select(model, name, target_macs=0.57)
    fraction = measure(apply(model, plan), 32).macs / measure(model, 32).macs
    assert abs(fraction - 0.57) <= 0.005 * 0.57
    assert notes["macs_fraction"] == pytest.approx(fraction, abs=1e-6)


def test_rate_maps_match_the_longest_prefix():
    layers = ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer20.0.conv1"]
    rates = layer_rates(layers, 0.3, {"layer1": 0.5, "layer1.1.conv1": 0.0, "layer2": 0.1})
    assert rates == {"layer1.0.conv1": 0.5, "layer1.1.conv1": 0.0, "layer2.0.conv1": 0.1, "layer20.0.conv1": 0.3}


def test_a_rate_map_prunes_per_stage_and_leaves_rate_zero_layers_whole(resnet20):
    plan, _ = select(resnet20, "l1", rates={"layer1": 0.75, "layer3": 0.0, "layer2.1": 0.0})
    assert {len(plan.layers[f"layer1.{i}.conv1"].kept) for i in range(3)} == {4}
    assert {len(plan.layers[f"layer2.{i}.conv1"].kept) for i in (0, 2)} == {16}
    assert not any(name.startswith(("layer3", "layer2.1")) for name in plan.layers)


def test_a_rate_map_naming_no_layer_or_removing_everything_is_refused(resnet20):
    with pytest.raises(PruningError, match="names no prunable layer"):
        select(resnet20, "l1", rates={"layer4": 0.5})
    with pytest.raises(PruningError, match="would remove all"):
        select(resnet20, "l1", rates={"layer1.0": 0.99})


def test_global_ranking_never_empties_a_layer():
    scores = {"a": np.array([0.0, 0.1, 5.0]), "b": np.array([0.2, 0.3])}
    assert global_counts(scores, 3) == {"a": 1, "b": 1}
    assert global_counts(scores, 10) == {"a": 1, "b": 1}
    assert global_counts(scores, 1) == {"a": 2, "b": 2}


@pytest.mark.parametrize(
    "variant, macs_cut, params_cut, whole",
    [
        ("l1_a", 0.104, 0.093, ("layer1.7", "layer2.0", "layer3.0", "layer3.8")),
        ("l1_b", 0.276, 0.138, ("layer1.7", "layer1.8", "layer2.0", "layer2.7", "layer3.0", "layer3.8")),
    ],
)
def test_li_et_al_presets_give_the_papers_resnet56_reductions(variant, macs_cut, params_cut, whole):
    """Li et al. (ICLR 2017), Table 1: ResNet-56-A cuts 10.4% of the FLOPs and 9.4% of the parameters,
    ResNet-56-B 27.6% and 13.7% (here: counted on the physically pruned model, rounded to 3 places)."""
    model = build_model("resnet56")
    plan, notes = select(model, variant)
    dense, pruned = measure(model, 32), measure(apply(model, plan), 32)
    assert round(1 - pruned.macs / dense.macs, 3) == macs_cut
    assert round(1 - pruned.params / dense.params, 3) == params_cut
    assert not any(layer.startswith(tuple(f"{w}." for w in whole)) for layer in plan.layers)
    assert notes["rates"]["layer1.7"] == 0.0


def test_presets_refuse_other_architectures():
    with pytest.raises(PruningError, match="preset for resnet56 and resnet110"):
        select(build_model("resnet20"), "l1_a")


@pytest.mark.parametrize(
    "prune, message",
    [
        ({"method": "srgkp", "target_macs": 0.57}, "does not take it"),
        ({"method": "l1", "rates": {"layer1": 0.5}, "target_macs": 0.57}, "either prune.rates or prune.target_macs"),
        ({"method": "l1", "rates": {"layer1": 1.2}}, r"prune.rates.layer1: must be in \[0, 1\)"),
        ({"method": "l1", "target_macs": 1.5}, "prune.target_macs"),
        ({"method": "l1", "calibration": {"batches": 0}}, "prune.calibration.batches"),
    ],
)
def test_bad_budgets_are_config_errors(prune, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment({"model": {"arch": "resnet20"}, "prune": prune})


def test_data_dependent_methods_record_their_calibration_in_the_plan(tmp_path):
    calibrated = sorted(name for name in METHODS if BASELINES[name].calibrated)
    if not calibrated:
        pytest.skip("no data-dependent baseline is registered")
    config = tiny_config(
        stages=["train", "prune"],
        train={"epochs": 1, "eval_every": 0},
        prune={"method": calibrated[0], "rate": 0.5, "calibration": {"batches": 3, "batch_size": 16}},
    )
    run_experiment(build_experiment(config), out=tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["metadata"]["selection"]["calibration"] == {"batches": 3, "images": 48}


def test_a_macs_target_is_solved_and_recorded_in_the_plan(tmp_path):
    config = tiny_config(stages=["train", "prune"], train={"epochs": 1, "eval_every": 0})
    config["prune"] = {"method": "fpgm", "target_macs": 0.6}
    run_experiment(build_experiment(config), out=tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    fraction = plan["metadata"]["pruned"]["macs"] / plan["metadata"]["dense"]["macs"]
    assert plan["rate"] is None and plan["metadata"]["selection"]["target_macs"] == 0.6
    assert plan["metadata"]["selection"]["macs_fraction"] == pytest.approx(fraction, abs=1e-6)


def test_calibration_batches_are_seeded_distinct_unaugmented_training_samples():
    images = torch.arange(20, dtype=torch.uint8).reshape(20, 1, 1, 1).expand(20, 3, 4, 4).contiguous()
    split = TensorSplit(images, torch.arange(20), augment_kind="crop_flip")
    first = calibration_batches(split, 3, 4, seed=7)
    assert [len(y) for _, y in first] == [4, 4, 4] and len(set(torch.cat([y for _, y in first]).tolist())) == 12
    for x, y in first:
        assert torch.equal(x, images[y].float() / 255)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, calibration_batches(split, 3, 4, seed=7), strict=True))
    assert not torch.equal(first[0][1], calibration_batches(split, 3, 4, seed=8)[0][1])
    assert sum(len(y) for _, y in calibration_batches(split, 10, 4, seed=7)) == 20


def test_slimming_sparsity_training_adds_the_l1_subgradient_to_every_batchnorm_scale():
    from gkp.mechanisms.engine.hooks import BatchNormSparsity

    model = build_model("resnet8")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(-1, 1)
            module.weight.grad = torch.zeros_like(module.weight)
    BatchNormSparsity(1e-4).after_backward(model)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.equal(module.weight.grad, 1e-4 * torch.sign(module.weight.detach()))
    config = {"model": {"arch": "resnet8"}, "stages": ["train"], "train": {"bn_sparsity": 1e-5}}
    assert build_experiment(config).train.bn_sparsity == 1e-5
