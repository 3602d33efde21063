"""Every entry of every registry against its contract in ``gkp.foundation.contracts``: a model, dataset,
pruning method (one-shot or training-time), attack, loss or optimizer added as a file of its registry's
package is found by name and checked here with no test to write by hand; and the stages' table
(``gkp.application.pipeline.stages``) against the pipeline that runs them."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_data import _png_tree, _write_npz

from gkp.application import catalog
from gkp.application.catalog import (
    ATTACKS,
    DATASETS,
    LOSSES,
    MODELS,
    OPTIMIZERS,
    PRUNING_METHODS,
    build_model,
    load_data,
)
from gkp.application.checkpoints.io import checkpoint_payload, model_from_payload
from gkp.application.config import Experiment
from gkp.application.pipeline.stages import STAGES
from gkp.foundation.contracts import (
    AttackParams,
    CountedAsPooling,
    GroupedKernelParams,
    PrunableModel,
    PruningContext,
    Recipe,
    Selection,
    StepContext,
    model_spec,
)
from gkp.foundation.errors import ConfigError, DataError, PruningError
from gkp.foundation.schema import build
from gkp.foundation.settings import DataConfig
from gkp.mechanisms.data.splits import TensorSplit
from gkp.mechanisms.engine.train import Data, LoopSettings, fit
from gkp.mechanisms.layers.normalize import Normalize
from gkp.mechanisms.pruning.masks import mask_targets, zeroed_filters
from gkp.mechanisms.pruning.plan import LAYER_TYPES, Plan
from gkp.mechanisms.pruning.surgery import apply, apply_mask

from conftest import MemoryStore
from test_grouped import assert_same_logits
from test_pruning import randomise_batchnorm

CPU = torch.device("cpu")


def side(arch: str) -> int:
    """The image side an arch is tested at: its own, at most 64 (bottleneck ResNets at Tiny-ImageNet's)."""
    return min(MODELS.get(arch).input_size, 64)


# ------------------------------------------------------------------------------------------- models


def built(arch: str, **args) -> torch.nn.Module:
    return build_model(arch, **{**MODELS.get(arch).data_args(side(arch)), **args})


@pytest.mark.parametrize("arch", MODELS.names())
def test_every_arch_runs_forward_and_backward(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7)
    x = torch.rand(2, 3, side(arch), side(arch))
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model_spec(model).arch == arch and model_spec(model).args == {"num_classes": 7}


@pytest.mark.parametrize("arch", MODELS.names())
def test_every_arch_normalises_its_inputs_first(arch):
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
    model = built(arch, num_classes=3, mean=mean, std=std).eval()
    assert isinstance(model, PrunableModel) and isinstance(model.normalize, Normalize)
    assert model.normalize.mean.flatten().tolist() == pytest.approx(mean)
    assert model.normalize.std.flatten().tolist() == pytest.approx(std)
    seen = []
    model.normalize.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
    assert len(seen) == 1 and seen[0] is x  # the [0, 1] image goes into the Normalize, untouched


@pytest.mark.parametrize("arch", MODELS.names())
def test_every_arch_declares_its_filter_groups(arch):
    model = build_model(arch)
    modules = dict(model.named_modules())
    groups = model.filter_pruning_groups()
    assert groups
    for group in groups:
        assert isinstance(modules[group.conv], torch.nn.Conv2d)
        assert isinstance(modules[group.bn], torch.nn.BatchNorm2d)
        assert all(name in modules for name in group.consumers)


@pytest.mark.parametrize("arch", MODELS.names())
@pytest.mark.parametrize("scope", ["3x3", "all"])
def test_every_arch_names_its_grouped_kernel_targets(arch, scope):
    model = build_model(arch)
    targets = model.grouped_kernel_targets(scope)
    assert targets and all(isinstance(model.get_submodule(t), torch.nn.Conv2d) for t in targets)
    if scope == "3x3":
        assert all(model.get_submodule(t).kernel_size == (3, 3) for t in targets)


@pytest.mark.parametrize("arch", MODELS.names())
def test_data_derived_arguments_are_constructor_arguments(arch):
    entry = MODELS.get(arch)
    for side in (32, 64, 224):
        build_model(arch, **entry.data_args(side))  # raises ConfigError on an argument the arch does not take


def test_the_option_a_shortcut_says_what_the_authors_count_as_pooling():
    shortcut = build_model("resnet20").layer2[0].shortcut
    x = torch.rand(1, 16, 8, 8)
    assert isinstance(shortcut, CountedAsPooling) and shortcut.pooled_reads(x, shortcut(x)) == 16 * 4 * 4


# ------------------------------------------------------------------------------------------- datasets


def _npz_files(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    train = _write_npz(tmp_path / "train.npz", rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8), np.arange(24) % 3)
    test = _write_npz(tmp_path / "test.npz", rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), np.arange(12) % 3)
    return {"train_path": train, "test_path": test}


def _image_folders(tmp_path) -> dict:
    _png_tree(tmp_path)
    return {"root": str(tmp_path), "image_size": 16, "num_workers": 0}


# How to make a small instance of each dataset here. CIFAR cannot be made: torchvision checks the
# archives' checksums, so for it the contract is the error that names the folder and the fix.
SAMPLES = {
    "digits": lambda tmp_path: {},
    "synthetic": lambda tmp_path: {"image_size": 16, "train_size": 40, "test_size": 20},
    "npz": _npz_files,
    "imagefolder": _image_folders,
    "cifar10": None,
    "cifar100": None,
}


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_loads_its_splits_or_names_the_fix(name, tmp_path):
    assert name in SAMPLES, f"add to SAMPLES how to make a small '{name}' dataset for this test"
    dataset = DATASETS.get(name)
    assert dataset.name == name and dataset.summary
    if SAMPLES[name] is None:
        with pytest.raises(DataError, match=f"{name} was not found .*data.download: true"):
            load_data(DataConfig(name=name, root=str(tmp_path)), CPU)
        return
    cfg = DataConfig(name=name, **SAMPLES[name](tmp_path))
    dataset.check(cfg, True)
    bundle = load_data(cfg, CPU)
    assert len(bundle.mean) == len(bundle.std) == 3 and bundle.num_classes >= 2
    counted = dataset.images(cfg)  # what a sweep's time estimate assumes, where it can tell without loading
    assert counted is None or counted == (bundle.train.num_samples, bundle.test.num_samples)
    for split, train in ((bundle.test, False), (bundle.train, True)):
        x, y = next(split.batches(4, train=train, seed=0))
        assert x.dtype == torch.float32 and x.shape == (len(y), 3, bundle.image_size, bundle.image_size)
        assert 0 <= float(x.min()) and float(x.max()) <= 1
        assert y.dtype == torch.long and 0 <= int(y.min()) and int(y.max()) < bundle.num_classes


@pytest.mark.parametrize("name", DATASETS.names())
def test_only_npz_reads_npz_paths(name):
    cfg = DataConfig(name=name, path="x.npz")
    if name == "npz":
        DATASETS.get(name).check(cfg, False)
        with pytest.raises(ConfigError, match="data.train_path: the train/finetune stages need"):
            DATASETS.get(name).check(cfg, True)
    else:
        with pytest.raises(ConfigError, match=f"data.path: .* not '{name}'"):
            DATASETS.get(name).check(cfg, False)


# ------------------------------------------------------------------------------------------- pruning methods


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return randomise_batchnorm(build_model("resnet20")).eval()


def full_context(model: torch.nn.Module) -> PruningContext:
    """Everything a method may read: calibration batches and a snapshot for every epoch."""
    state = model.state_dict()

    def snapshot(epoch: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(epoch)
        return {
            k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
            for k, v in state.items()
        }

    generator = torch.Generator().manual_seed(1)
    batches = [(torch.rand(4, 3, 32, 32, generator=generator), torch.randint(0, 10, (4,), generator=generator))] * 2
    return PruningContext(snapshots=snapshot, calibration=lambda: batches)


def defaults(method) -> object:
    return build(method.params, {}, "prune.params")


ONE_SHOT = [name for name, method in PRUNING_METHODS.items() if method.training is None]
TRAINING_TIME = [name for name, method in PRUNING_METHODS.items() if method.training is not None]


@pytest.mark.parametrize("name", ONE_SHOT)
def test_every_method_selects_a_valid_deterministic_plan_or_refuses_in_check(name, resnet20):
    method = PRUNING_METHODS.get(name)
    assert method.name == name and method.summary and method.kind in LAYER_TYPES
    assert all(isinstance(epoch, int) for epoch in method.snapshot_epochs(defaults(method)))
    context = full_context(resnet20)
    try:
        method.check(resnet20, 0.5, defaults(method), context)
    except PruningError:  # this method does not fit ResNet-20: select must refuse as well
        with pytest.raises(PruningError):
            method.select(resnet20, 0.5, defaults(method), context)
        return
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    selection = method.select(resnet20, 0.5, defaults(method), context)
    assert isinstance(selection, Selection) and selection.layers
    assert all(type(layer) is LAYER_TYPES[method.kind] for layer in selection.layers.values())
    assert selection == method.select(resnet20, 0.5, defaults(method), context)
    assert all(torch.equal(before[k], v) for k, v in resnet20.state_dict().items())
    plan = Plan(name, 0.5, selection.layers)
    assert Plan.from_dict(plan.to_dict()).to_dict() == plan.to_dict()
    pruned, masked = apply(resnet20, plan).eval(), apply_mask(resnet20, plan).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_logits(pruned(x), masked(x))
    F.cross_entropy(pruned.train()(x), torch.tensor([0, 1])).backward()


def ranks_globally(method) -> bool:
    return method.kind == "filters" and "rates" not in method.budgets


@pytest.mark.parametrize("name", ONE_SHOT)
def test_every_method_refuses_a_rate_that_empties_a_layer_before_any_work(name, resnet20):
    """Layer-wise methods refuse it in ``check``; methods that rank all layers' channels together remove
    at most all but one channel of each layer instead (documented in baselines.filter_method)."""
    method = PRUNING_METHODS.get(name)
    if not ranks_globally(method):
        with pytest.raises(PruningError):
            method.check(resnet20, 0.999, defaults(method), full_context(resnet20))
        return
    layers = method.select(resnet20, 0.999, defaults(method), full_context(resnet20)).layers
    assert layers and all(len(layer.kept) == 1 for layer in layers.values())


def train_through_the_loop(model, phases, hooks, batch) -> None:
    """The training loop itself on one batch: one step per epoch, every hook at its point."""
    x, y = batch
    loss = LOSSES.get("cross_entropy")
    fit(
        model,
        phases,
        data=Data(TensorSplit((x * 255).round().to(torch.uint8), y)),
        settings=LoopSettings(
            stage="contract", seed=0, batch_size=len(y), amp="off", channels_last="off", eval_every=0
        ),
        store=MemoryStore(),
        objective=loss.objective(loss.params(), 0.0),
        hooks=hooks,
    )


def trained(name: str, rate: float, resnet20, epochs_per_conv: int = 2) -> tuple:
    """A training-time method's phases and hooks (checked to fit their recipe of ``epochs_per_conv`` x the
    convs epochs) after training a copy of ResNet-20 through the loop, its ``prepare`` first: (model,
    hooks, context)."""
    method = PRUNING_METHODS.get(name)
    model = copy.deepcopy(resnet20).train()
    context = full_context(model)
    method.check(model, rate, defaults(method), context)
    recipe = Recipe(epochs=epochs_per_conv * len(mask_targets(model, "all")), lr=0.01)
    phases, hooks = method.training.build(model, rate, defaults(method), context, recipe)
    assert sum(p.recipe.epochs for p in phases) <= recipe.epochs and phases[-1].final
    model = method.training.prepare(model, hooks)
    train_through_the_loop(model, phases, hooks, context.calibration_batches()[0])
    return model, hooks, context


ZEROING = [name for name in TRAINING_TIME if PRUNING_METHODS.get(name).training.finalize is None]
FINALIZING = [name for name in TRAINING_TIME if name not in ZEROING]


@pytest.mark.parametrize("rate", [0.5, 0.999])
@pytest.mark.parametrize("name", ZEROING)
def test_every_training_time_method_zeroes_its_rate_and_leaves_a_valid_plan(name, rate, resnet20):
    """Through the loop, a layer-wise method's masked convs each end with floor(N x rate) filters zeroed
    (never all). A method with one rate for the whole model (OTOv2's group sparsity) zeroes at most
    ceil(N x rate) of its N groups, never a whole layer, and refuses a rate that would leave a layer
    nothing before any work. For all: the phases fit the recipe and end with the final structure; the
    hooks' state survives a weights-only checkpoint; ``select`` reads the zeroed filters into a plan whose
    physical model runs."""
    method = PRUNING_METHODS.get(name)
    if ranks_globally(method) and rate == 0.999:
        with pytest.raises(PruningError):
            method.check(resnet20, rate, defaults(method), full_context(resnet20))
        return
    model, hooks, context = trained(name, rate, resnet20)
    zeroed = zeroed_filters(model)
    if ranks_globally(method):
        widths = {g.conv: model.get_submodule(g.conv).out_channels for g in model.filter_pruning_groups()}
        assert sum(len(zeroed.get(conv, [])) for conv in widths) <= math.ceil(sum(widths.values()) * rate)
        assert all(len(zeroed.get(conv, [])) < width for conv, width in widths.items())
    else:
        for conv in mask_targets(model, "all"):
            total = model.get_submodule(conv).out_channels
            assert len(zeroed.get(conv, [])) == math.floor(total * rate + 1e-9) < total, conv
    buffer = io.BytesIO()
    torch.save(hooks.state_dict(), buffer)
    buffer.seek(0)
    hooks.load_state_dict(torch.load(buffer, weights_only=True), model)
    method = PRUNING_METHODS.get(name)
    selection = method.select(model, rate, defaults(method), context)
    removable = {group.conv for group in model.filter_pruning_groups()}
    cut = {conv for conv in removable if conv in zeroed} if ranks_globally(method) else removable
    assert set(selection.layers) == cut
    pruned = apply(model, Plan(name, rate, selection.layers)).eval()
    assert torch.isfinite(pruned(torch.rand(2, 3, 32, 32))).all()


@pytest.mark.parametrize("name", FINALIZING)
def test_every_finalizing_method_builds_a_physical_model_its_plan_rebuilds(name, resnet20):
    """After the loop, ``finalize`` returns a model and a plan of the method's kind; the architecture
    with that plan and the model's weights computes what the model does."""
    model, hooks, _ = trained(name, 0.5, resnet20, epochs_per_conv=3)  # room for searches (LRF: 20 + 2 a conv)
    method = PRUNING_METHODS.get(name)
    pruned, selection = method.training.finalize(model, hooks)
    assert selection.layers and all(type(layer) is LAYER_TYPES[method.kind] for layer in selection.layers.values())
    pruned.gkp_spec = dataclasses.replace(model_spec(resnet20), plan=Plan(name, 0.5, selection.layers).to_dict())
    rebuilt = model_from_payload(checkpoint_payload(pruned)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_logits(rebuilt(x), pruned.eval()(x))


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_trains_on_a_batch(name, resnet20):
    """Its attack, if any, is registered; the objective returns a finite scalar loss with gradients for the
    model and logits per sample, and leaves the model in train mode (a teacher given where it reads one)."""
    loss = LOSSES.get(name)
    assert loss.name == name and loss.summary and (loss.attack is None or loss.attack in ATTACKS)
    assert loss.key in (None, "adversarial", "distill") and (loss.key is None) == (name == "cross_entropy")
    params = build(loss.params, {"eps": 4 / 255} if loss.attack else {}, "loss")
    objective = loss.objective(params, 0.0, ATTACKS.get(loss.attack) if loss.attack else None)
    model = copy.deepcopy(resnet20).train()
    teacher = copy.deepcopy(resnet20).eval() if loss.teacher else None
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    value, logits = objective(StepContext(model, x, y, torch.Generator().manual_seed(0), teacher))
    assert value.dim() == 0 and torch.isfinite(value) and logits.shape == (4, 10) and model.training
    value.backward()
    assert model.fc.weight.grad is not None


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_steps_the_parameters_of_its_groups(name):
    """Built over parameter groups with options of their own, it keeps those options, takes the recipe's
    learning rate and weight decay elsewhere, and moves every parameter that has a gradient."""
    optimizer = OPTIMIZERS.get(name)
    assert optimizer.name == name and optimizer.summary
    first, second = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    recipe = Recipe(epochs=1, lr=0.1, weight_decay=1e-4)
    built = optimizer.build(
        [{"params": [first], "lr": 0.5}, {"params": [second]}], recipe, build(optimizer.params, {}, "o")
    )
    assert [g["lr"] for g in built.param_groups] == [0.5, 0.1] and built.param_groups[1]["weight_decay"] == 1e-4
    (first.sum() + second.sum()).backward()
    built.step()
    assert (first < 1).all() and (second < 1).all()


GROUPED_KERNEL_METHODS = [name for name, method in PRUNING_METHODS.items() if method.kind == "grouped_kernels"]


def test_grouped_kernel_methods_are_registered():
    assert {"srgkp", "tmigkp"} <= set(GROUPED_KERNEL_METHODS)


@pytest.mark.parametrize("name", GROUPED_KERNEL_METHODS)
def test_every_grouped_kernel_method_takes_groups_and_scope(name, resnet20):
    method = PRUNING_METHODS.get(name)
    hints = typing.get_type_hints(GroupedKernelParams)
    assert set(hints) <= {f.name for f in dataclasses.fields(method.params)}
    params = build(method.params, {"groups": 2, "scope": "3x3"}, "prune.params")
    layers = method.select(resnet20, 0.5, params, full_context(resnet20)).layers
    assert list(layers) == resnet20.grouped_kernel_targets("3x3")
    assert all(len(layer.kept) == 2 for layer in layers.values())


def test_a_grouped_kernel_method_without_groups_is_refused_when_it_is_made():
    from gkp.entries.grouped_kernels.grouped_kernel_method import grouped_kernel_method

    @dataclasses.dataclass(frozen=True)
    class NoGroups:
        scope: str = "3x3"

    with pytest.raises(TypeError, match="must be a dataclass with the fields groups, scope .* missing: groups"):
        grouped_kernel_method("broken", NoGroups, None, None, "no groups")


# ------------------------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_takes_eps_and_exactly_its_declared_norms(name):
    attack = ATTACKS.get(name)
    assert attack.name == name and attack.summary and attack.kind in ("gradient", "query", "minimum_norm")
    assert set(typing.get_type_hints(AttackParams)) <= {f.name for f in dataclasses.fields(attack.params)}
    build(attack.params, dict(attack.quick), "attack")
    for norm in ("linf", "l2"):
        if norm in attack.norms:
            assert build(attack.params, {"norm": norm}, "attack").norm == norm
        else:
            with pytest.raises(ConfigError, match="attack.norm: must be one of"):
                build(attack.params, {"norm": norm}, "attack")
    bounded = build(attack.params, {}, "attack").eps is not None
    assert bounded or attack.kind == "minimum_norm"  # only minimum-norm attacks may leave eps unset


def test_an_attack_without_eps_is_refused_when_it_is_registered():
    from gkp.foundation.contracts import Attack

    @dataclasses.dataclass(frozen=True)
    class NoEps:
        norm: str = "linf"

    with pytest.raises(TypeError, match="attack 'broken'.*missing: eps"):
        Attack("broken", NoEps, lambda *args: None, "gradient", "no eps")


# ------------------------------------------------------------------------------------------- stages


def test_the_pipeline_runs_the_stages_of_the_table_in_its_order(monkeypatch):
    from gkp.application.pipeline import run

    ran = []
    monkeypatch.setattr(run, "run_stage", lambda ctx, stage, work, names: ran.append((stage.name, work.__name__)))
    run.run_stages(None, ("eval",))
    assert [name for name, _ in ran] == [stage.name for stage in STAGES]
    assert dict(ran) == {"train": "train", "prune": "prune", "finetune": "finetune", "eval": "evaluate_models"}


REGISTRIES = {name: value for name, value in vars(catalog).items() if isinstance(value, catalog.Registry)}


@pytest.mark.parametrize("registry", REGISTRIES, ids=str)
def test_every_entry_is_found_by_its_name_alone(registry):
    """Listing imports every module of the registry's packages (and refuses an entry in a module a lookup
    by its name would not open); a fresh registry then finds each entry from its name alone."""
    listed = REGISTRIES[registry]
    fresh = catalog.Registry(listed.kind, listed.entry_type, listed.packages)
    for name in listed.names():
        assert fresh.get(name) is listed.get(name) and fresh.get(name).name == name
        assert name in fresh


def test_the_stages_fingerprints_cover_every_section_that_changes_results():
    sections = [section for stage in STAGES for section in stage.sections]
    execution_only = {"name", "device", "stages"}  # where and how a run goes, not what it computes
    assert len(sections) == len(set(sections))
    assert set(sections) == {f.name for f in dataclasses.fields(Experiment)} - execution_only
