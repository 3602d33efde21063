"""Plans that change a network's structure (removed residual blocks, factorised convs, 1x1 adapters) and
training-time methods that change it while they train: each plan kind rebuilt from ``plan.json`` alone by
surgery, equal to the masked dense model, counted in both MACs conventions; a method whose ``prepare``
swaps modules in trains them and ``finalize``s a plan; a method that changes shapes phase by phase resumes
bit-identically after an interruption mid-phase."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest
import torch
from torch import nn

from gkp.application.catalog import PRUNING_METHODS, build_model
from gkp.application.checkpoints.io import checkpoint_payload, load_model, model_from_payload, read_checkpoint
from gkp.application.config import build_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.foundation.contracts import Phase, PruningMethod, Selection, TrainingHooks, TrainingTime
from gkp.foundation.errors import ConfigError, PruningError
from gkp.foundation.schema import option
from gkp.mechanisms.counting import measure
from gkp.mechanisms.layers.restructured import AdaptedConv2d, FactorisedConv2d, RemovedBlock
from gkp.mechanisms.pruning.plan import AdaptersPlan, FactorisedPlan, Plan, RemovedBlockPlan
from gkp.mechanisms.pruning.surgery import apply, apply_mask, set_module

from conftest import run_interrupted_then_resumed, tiny_config
from test_pruning import randomise_batchnorm

REGULAR_BLOCK, ENTRY_BLOCK = 4_718_592, 3_538_944  # ResNet-20's convs of a 16-channel block, of layer2.0


def plan_of(layers: dict) -> Plan:
    return Plan.from_dict({"format": 1, "method": "test", "rate": None, "layers": layers})


def resnet20() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet20")
    randomise_batchnorm(model)
    return model.eval()


def reloaded(model: nn.Module) -> nn.Module:
    """The model rebuilt from its checkpoint's arch and plan, its weights loaded."""
    payload = checkpoint_payload(model)
    payload["plan"] = json.loads(json.dumps(payload["plan"]))  # as plan.json holds it
    return model_from_payload(payload).eval()


# ------------------------------------------------------------------------------------------- plan kinds


def test_removed_blocks_leave_their_shortcut_and_cost_what_their_convs_did():
    """A removed stage-entry block keeps its zero-pad shortcut, so the widths still add up."""
    model = resnet20()
    plan = plan_of({"layer1.1": {"type": "removed_block"}, "layer2.0": {"type": "removed_block"}})
    pruned, masked = apply(model, plan).eval(), apply_mask(model, plan).eval()
    assert isinstance(pruned.layer2[0], RemovedBlock) and pruned.layer2[0].shortcut.extra_channels == 16
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(pruned(x), masked(x), atol=1e-5) and torch.equal(reloaded(pruned)(x), pruned(x))
    assert measure(model, 32).macs - measure(pruned, 32).macs == REGULAR_BLOCK + ENTRY_BLOCK
    # the authors' count also loses the two BatchNorms of each block: 2 per output element
    norms = 2 * (2 * 16 * 32 * 32 + 2 * 32 * 16 * 16)
    assert (
        measure(model, 32, "authors").macs - measure(pruned, 32, "authors").macs == REGULAR_BLOCK + ENTRY_BLOCK + norms
    )


def test_a_factorised_conv_is_the_truncated_svd_of_its_kept_inputs():
    model = resnet20()
    conv = model.layer3[1].conv1  # 64 -> 64 at 8x8
    keep_in = list(range(0, 64, 2))
    pruned = apply(model, plan_of({"layer3.1.conv1": {"type": "factorised", "keep_in": keep_in, "rank": 12}})).eval()
    layer = pruned.layer3[1].conv1
    assert isinstance(layer, FactorisedConv2d) and layer.keep_in.tolist() == keep_in
    weight = conv.weight.detach().double()[:, keep_in].flatten(1)
    singular = torch.linalg.svdvals(weight)
    product = layer.expand.weight[:, :, 0, 0].double() @ layer.reduce.weight.double().flatten(1)
    # Eckart-Young: the best rank-12 approximation leaves exactly the other singular values
    assert torch.linalg.matrix_norm(weight - product).item() == pytest.approx(singular[12:].norm().item(), rel=1e-4)
    saved = 64 * 64 * 9 * 64 - (12 * 32 * 9 + 64 * 12) * 64  # the conv's MACs minus its factors', at 8x8
    assert measure(model, 32).macs - measure(pruned, 32).macs == saved
    x = torch.rand(2, 3, 32, 32)
    masked = apply_mask(model, plan_of({"layer3.1.conv1": {"type": "factorised", "keep_in": keep_in, "rank": 12}}))
    assert torch.allclose(pruned(x), masked.eval()(x), atol=1e-5) and torch.equal(reloaded(pruned)(x), pruned(x))


def test_without_a_rank_a_factorised_conv_is_the_input_pruned_conv():
    model = resnet20()
    layers = {"layer2.1.conv2": {"type": "factorised", "keep_in": [0, 5, 7], "rank": None}}
    plan = plan_of(layers)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))).layers["layer2.1.conv2"] == FactorisedPlan(
        (0, 5, 7), None
    )
    pruned = apply(model, plan).eval()
    layer = pruned.layer2[1].conv2
    assert torch.equal(layer.reduce.weight, model.layer2[1].conv2.weight[:, [0, 5, 7]])
    assert measure(model, 32).macs - measure(pruned, 32).macs == 32 * 29 * 9 * 16 * 16
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(pruned(x), apply_mask(model, plan).eval()(x), atol=1e-5)
    assert torch.equal(reloaded(pruned)(x), pruned(x))


def test_at_full_rank_a_factorised_conv_and_with_all_kept_adapters_equal_the_dense_model():
    model = resnet20()
    x = torch.rand(2, 3, 32, 32)
    full = {
        "layer1.0.conv1": {"type": "factorised", "keep_in": list(range(16)), "rank": 16},
        "layer2.1.conv2": {"type": "adapters", "keep_in": list(range(32)), "keep_out": list(range(32))},
    }
    assert torch.allclose(apply(model, plan_of(full)).eval()(x), model(x), atol=1e-5)


def test_adapters_sit_around_the_conv_and_keep_its_kept_weights():
    model = resnet20()
    layers = {"layer2.1.conv1": {"type": "adapters", "keep_in": [1, 3, 5, 7, 9], "keep_out": list(range(0, 32, 4))}}
    pruned = apply(model, plan_of(layers)).eval()
    layer = pruned.layer2[1].conv1
    assert isinstance(layer, AdaptedConv2d)
    assert (layer.pre.weight.shape, layer.conv.weight.shape, layer.post.weight.shape) == (
        (5, 32, 1, 1),
        (8, 5, 3, 3),
        (32, 8, 1, 1),
    )
    core = 16 * 16 * 8 * 5 * 9
    adapters = 16 * 16 * (5 * 32 + 32 * 8)
    assert measure(model, 32).macs - measure(pruned, 32).macs == 16 * 16 * 32 * 32 * 9 - core - adapters
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(pruned(x), apply_mask(model, plan_of(layers)).eval()(x), atol=1e-5)
    assert torch.equal(reloaded(pruned)(x), pruned(x))


def test_the_new_plan_kinds_round_trip_through_json_and_refuse_what_cannot_be_built():
    layers = {
        "layer1.0": RemovedBlockPlan(),
        "layer3.0.conv1": FactorisedPlan((0, 2), 3),
        "layer3.1.conv2": AdaptersPlan((0,), (1, 2)),
    }
    plan = Plan("test", None, layers)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))).layers == layers
    model = resnet20()
    with pytest.raises(PruningError, match="a layer of the block 'layer1.0' it also removes"):
        apply(
            model, plan_of({"layer1.0": {"type": "removed_block"}, "layer1.0.conv1": {"type": "filters", "kept": [0]}})
        )
    with pytest.raises(PruningError, match=r"rank of 'layer1.0.conv1' must be in \[1, 16\]"):
        apply(model, plan_of({"layer1.0.conv1": {"type": "factorised", "keep_in": [0, 1], "rank": 17}}))
    with pytest.raises(PruningError, match="'layer1' is not a residual block"):
        apply(model, plan_of({"layer1": {"type": "removed_block"}}))
    with pytest.raises(PruningError, match="VGG lists no residual blocks"):
        apply(build_model("vgg16"), plan_of({"features.0": {"type": "removed_block"}}))
    with pytest.raises(PruningError, match=r"rank must be a whole number >= 1"):
        plan_of({"layer1.0.conv1": {"type": "factorised", "keep_in": [0], "rank": 0}})


# ------------------------------------------------------------------------------------------- toy methods


class GatedNorm(nn.Module):
    """A BatchNorm whose output a learnt scalar gate scales (a block's branch, as GAL's masks do)."""

    def __init__(self, norm: nn.BatchNorm2d):
        super().__init__()
        self.norm, self.gate = norm, nn.Parameter(torch.ones(1, device=norm.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.gate


@dataclass(frozen=True)
class GateParams:
    remove: int = option(1, doc="blocks removed: those of the smallest gates")
    strength: float = option(0.05, doc="L1 weight on the gates")


class GateHooks(TrainingHooks):
    def __init__(self, strength: float):
        self.strength = strength

    def regularizer(self, model):
        return self.strength * sum(m.gate.abs().sum() for m in model.modules() if isinstance(m, GatedNorm))


def gate_blocks(model: nn.Module, hooks) -> nn.Module:
    for block in model.residual_blocks():
        norm = f"{block.name}.{block.last_norm}"
        set_module(model, norm, GatedNorm(model.get_submodule(norm)))
    return model


def remove_smallest_gates(model: nn.Module, hooks) -> tuple[nn.Module, Selection]:
    """Fold each gate into its BatchNorm, then remove the blocks of the smallest gates."""
    gates = {}
    for block in model.residual_blocks():
        name = f"{block.name}.{block.last_norm}"
        gated = model.get_submodule(name)
        gates[block.name] = gated.gate.item()
        with torch.no_grad():
            gated.norm.weight.mul_(gated.gate)
            gated.norm.bias.mul_(gated.gate)
        set_module(model, name, gated.norm)
    removed = sorted(gates, key=gates.get)[: hooks.remove]
    layers = {name: RemovedBlockPlan() for name in removed}
    return apply(model, Plan("toy_gates", None, layers)), Selection(layers, {"gates": gates})


def build_gates(model, rate, params: GateParams, context, recipe):
    hooks = GateHooks(params.strength)
    hooks.remove = params.remove
    return [Phase("", recipe)], hooks


@dataclass(frozen=True)
class AdapterParams:
    targets: tuple[str, ...] = option(("layer1.0.conv1", "layer2.0.conv1"), doc="convs adapted, one per phase")


class AdapterHooks(TrainingHooks):
    """At the start of phase k, conv k becomes adapters around its half of filters of largest L1 norm (so
    the structure depends on the training so far); the state records it and rebuilds it on resume."""

    def __init__(self, targets: tuple[str, ...]):
        self.targets, self.kept = targets, {}

    def start_phase(self, model, phase):
        name = self.targets[phase]
        conv = model.get_submodule(name)
        norms = conv.weight.detach().abs().flatten(1).sum(1)
        self.kept[name] = sorted(norms.argsort(descending=True)[: conv.out_channels // 2].tolist())
        self._adapt(model, name)

    def _adapt(self, model, name):
        conv = model.get_submodule(name)
        set_module(model, name, AdaptedConv2d.from_dense(conv, list(range(conv.in_channels)), self.kept[name]))

    def state_dict(self):
        return {"kept": self.kept}

    def load_state_dict(self, state, model):
        self.kept = dict(state["kept"])
        for name in self.kept:
            self._adapt(model, name)


def build_adapters(model, rate, params: AdapterParams, context, recipe):
    epochs = recipe.epochs // len(params.targets)
    return [Phase(name, replace(recipe, epochs=epochs)) for name in params.targets], AdapterHooks(params.targets)


def finalize_adapters(model, hooks) -> tuple[nn.Module, Selection]:
    layers = {}
    for name, kept in hooks.kept.items():
        inputs = model.get_submodule(name).pre.in_channels
        layers[name] = AdaptersPlan(tuple(range(inputs)), tuple(kept))
    return model, Selection(layers)


def refuse_select(*args):
    raise PruningError("this method selects through its finalize")


TOYS = {
    "toy_gates": PruningMethod(
        "toy_gates",
        GateParams,
        refuse_select,
        lambda *args: None,
        "gates on each block's branch, the blocks of the smallest removed",
        "removed_block",
        training=TrainingTime(build_gates, "finetune", prepare=gate_blocks, finalize=remove_smallest_gates),
    ),
    "toy_adapters": PruningMethod(
        "toy_adapters",
        AdapterParams,
        refuse_select,
        lambda *args: None,
        "adapters around a conv per phase",
        "adapters",
        training=TrainingTime(build_adapters, "finetune", finalize=finalize_adapters),
    ),
}


@pytest.fixture
def toys():
    for name, method in TOYS.items():
        PRUNING_METHODS.add(name, method)
    yield
    for name in TOYS:
        PRUNING_METHODS.remove(name)


def toy_config(method: str, stages=("train", "prune", "eval"), epochs: int = 2, **sections) -> dict:
    """Trained one epoch, then pruned by ``method`` while it fine-tunes ``epochs`` epochs."""
    return tiny_config(
        stages=list(stages),
        deterministic=True,
        train={"epochs": 1},
        prune={"method": method},
        finetune={"epochs": epochs, "eval_every": 0},
        attacks=[],
        **sections,
    )


def test_a_method_whose_prepare_swaps_modules_in_trains_them_and_finalizes_a_plan(tmp_path, toys):
    exp = build_experiment(toy_config("toy_gates"))
    results = run_experiment(exp, out=tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    gates = plan["metadata"]["selection"]["gates"]
    assert all(gate != 1.0 for gate in gates.values())  # the gates prepare put in were optimised
    assert [layer["type"] for layer in plan["layers"].values()] == ["removed_block"]
    assert not (tmp_path / "masked.ckpt").exists() and plan["metadata"]["trained"] == "finetune"
    pruned, _ = load_model(tmp_path / "pruned.ckpt")
    assert read_checkpoint(tmp_path / "pruned.ckpt")["plan"]["layers"] == plan["layers"]
    removed = next(iter(plan["layers"]))
    assert isinstance(pruned.get_submodule(removed), RemovedBlock)
    assert results["macs"] < measure(build_model("resnet8"), 16).macs and results["authors_macs"] > 0
    with pytest.raises(ConfigError, match="unknown model 'masked'"):
        build_experiment(toy_config("toy_gates", eval={"models": ["masked"]}))


def test_a_method_that_changes_shapes_phase_by_phase_resumes_bit_identically(tmp_path, toys, monkeypatch):
    config = build_experiment(toy_config("toy_adapters", stages=["train", "prune"], epochs=4))
    run_experiment(config, out=tmp_path / "straight")
    # interrupted after train's epoch, the first phase, mid second phase's second epoch
    run_interrupted_then_resumed(config, tmp_path / "interrupted", monkeypatch, [8 + 16 + 8 + 3])
    straight = read_checkpoint(tmp_path / "straight" / "pruned.ckpt")
    resumed = read_checkpoint(tmp_path / "interrupted" / "pruned.ckpt")
    assert straight["plan"] == resumed["plan"] and [layer["type"] for layer in straight["plan"]["layers"].values()] == [
        "adapters",
        "adapters",
    ]
    assert all(torch.equal(straight["state_dict"][k], resumed["state_dict"][k]) for k in straight["state_dict"])
    rows = lambda out: [r.split(",")[:4] for r in (out / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "straight") == rows(tmp_path / "interrupted")
    pruned, _ = load_model(tmp_path / "interrupted" / "pruned.ckpt")
    assert isinstance(pruned.layer2[0].conv1, AdaptedConv2d) and pruned.layer2[0].conv1.conv.out_channels == 16


def test_a_finalize_whose_model_its_plan_does_not_rebuild_is_refused(tmp_path, toys):
    def wrong(model, hooks):
        model, selection = finalize_adapters(model, hooks)
        layers = {name: AdaptersPlan(layer.keep_in[:1], layer.keep_out) for name, layer in selection.layers.items()}
        return model, Selection(layers)

    training = TrainingTime(build_adapters, "finetune", finalize=wrong)
    PRUNING_METHODS.add("toy_wrong", replace(TOYS["toy_adapters"], name="toy_wrong", training=training))
    try:
        with pytest.raises(PruningError, match="its finalize returned a model that its plan does not rebuild"):
            run_experiment(build_experiment(toy_config("toy_wrong", stages=["train", "prune"])), out=tmp_path)
    finally:
        PRUNING_METHODS.remove("toy_wrong")
