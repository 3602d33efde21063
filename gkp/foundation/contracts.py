"""The contracts between the mechanisms (plans, surgery, layers, engine, evaluation) and what plugs into
them, written down in one place: models, datasets, pruning methods, attacks, attack suites, losses and
optimizers.

Each registry of ``gkp.application.catalog`` finds entries of one type below in its packages, and
``tests/test_contracts.py`` checks every entry of every registry against its contract, so a new entry is
tested the moment its file exists. ``docs/extending.md`` walks through adding each.

- A **model** (``ArchEntry``) is built as ``build(num_classes=..., mean=..., std=..., **args)`` and is a
  ``PrunableModel``: a ``normalize`` module applied first (so it takes [0, 1] images), its filter-pruning
  dependency table, the convs grouped kernel pruning prunes and, if residual, its blocks. Modules that the
  SR-GKP authors' MACs count as pooling (the option-A shortcut's subsampling) are ``CountedAsPooling``.
- A **pruning method** (``PruningMethod``) turns trained weights into a ``Selection``: one plan per pruned
  layer, of its ``kind``. A grouped-kernel method's parameters hold ``groups`` and ``scope``.
- An **attack** (``Attack``) maps a batch inside a ``gkp.foundation.threat.Box`` to adversarial images; its
  parameters hold ``eps`` and ``norm``. A **suite** (``Suite``) names a list of attacks.
- A **dataset** (``Dataset``) loads a config's ``data`` section into a ``gkp.mechanisms.data.bundle.DataBundle``.
- The **training loop** (``gkp.mechanisms.engine.train.fit``) runs ``Phase``s of a ``Recipe`` each (its
  ``Optimizer``, or the phase's own optimizers and step), minimises an ``Objective`` (a ``Loss`` entry's,
  given a ``StepContext``) and calls ``TrainingHooks`` at fixed points of every step and epoch; a
  training-time pruning method is phases and hooks, and may ``prepare`` and ``finalize`` the model
  (``TrainingTime``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from gkp.foundation.errors import PruningError
from gkp.foundation.schema import at_least, option, positive, to_plain

if TYPE_CHECKING:
    from gkp.foundation.threat import Box
    from gkp.mechanisms.data.bundle import DataBundle

# ------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class FilterGroup:
    """Which modules shrink together when filters of ``conv`` are removed: the conv's output channels,
    the BatchNorm ``bn`` that follows it, the ``channelwise`` modules on the way to the consumers (depthwise
    convs, whose groups are their channels, and their BatchNorms: MobileNet's blocks), and the input
    channels of each consumer (a conv, or a linear layer fed by a 1x1 feature map). Convs whose outputs
    feed a residual sum are not listed: with option-A (zero-padding) shortcuts their width is tied across a
    whole stage."""

    conv: str
    bn: str
    consumers: tuple[str, ...]
    channelwise: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResidualBlock:
    """A block computing ``relu(branch(x) + shortcut(x))``: the block's module ``name``, its ``shortcut``
    (an attribute of the block; None or missing: the identity) and the BatchNorm ending its branch
    (``last_norm``, an attribute of the block), whose zeroed scale and shift leave the block computing its
    shortcut alone, as a removed block does (``gkp.mechanisms.layers.restructured.RemovedBlock``)."""

    name: str
    shortcut: str
    last_norm: str


@runtime_checkable
class PrunableModel(Protocol):
    """What every registered architecture provides (any other model gets the same tables by tracing:
    ``gkp.mechanisms.pruning.dependencies``, through which every mechanism and method reads them).

    - ``normalize``: a ``gkp.mechanisms.layers.normalize.Normalize`` applied to the input first, holding the mean and
      std as buffers: every model, and every attack, works on [0, 1] images.
    - ``filter_pruning_groups()``: the ``FilterGroup`` of every conv filter pruning may shrink.
    - ``grouped_kernel_targets(scope)``: the ungrouped convs grouped kernel pruning prunes, ``scope``
      "3x3" (the paper's choice) or "all" (bottleneck ResNets: every conv of a block).

    A residual architecture also lists its blocks (``residual_blocks()``, ``ResidualBlock``s), so that a
    plan may remove them.
    """

    normalize: nn.Module

    def filter_pruning_groups(self) -> list[FilterGroup]: ...

    def grouped_kernel_targets(self, scope: str = "3x3") -> list[str]: ...


@runtime_checkable
class CountedAsPooling(Protocol):
    """A module (besides ``nn`` pooling layers) that the SR-GKP authors' MACs convention counts as pooling:
    ``pooled_reads`` is the number of input elements it reads per sample."""

    def pooled_reads(self, inputs: torch.Tensor, output: torch.Tensor) -> int: ...


def no_data_args(image_size: int) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ArchEntry:
    """A registered architecture ``name``: ``build(num_classes=..., mean=..., std=..., **args)`` returns a
    ``PrunableModel``; ``input_size`` is the image side it is meant for; ``data_args(image_size)`` gives
    the constructor arguments that depend on the data's image side (a stem, say) unless the config sets
    them."""

    name: str
    build: Callable[..., nn.Module]
    input_size: int
    description: str
    data_args: Callable[[int], dict[str, Any]] = no_data_args


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a model: registry name, constructor args and (for pruned models) the plan. Every
    model built by ``gkp.application.catalog.build_model`` carries one as ``model.gkp_spec``; surgery adds the plan."""

    arch: str
    args: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None


def model_spec(model: nn.Module) -> ModelSpec:
    spec = getattr(model, "gkp_spec", None)
    if spec is None:
        raise TypeError("this model was not built by gkp.application.catalog.build_model, so it has no ModelSpec")
    return spec


# ------------------------------------------------------------------------------------------- pruning

Batch = tuple[torch.Tensor, torch.Tensor]
PlanKind = Literal["filters", "grouped_kernels", "removed_block", "factorised", "adapters"]  # the plans' layer types


@dataclass(frozen=True)
class PruningContext:
    """What a method may read besides the trained weights, its rate and its parameters.

    ``snapshots(epoch)`` returns the dense model's state_dict saved by the training stage after that
    (1-based) epoch; methods ask for the epochs they need through ``PruningMethod.snapshot_epochs``.
    ``calibration()`` returns the seeded training batches data-dependent methods read (``prune.calibration``).
    ``rates`` (per-layer rates by module-name prefix) and ``target_macs`` (a fraction of the dense MACs)
    refine the uniform rate for the methods whose ``budgets`` accept them; ``input_size`` is the image
    side the MACs are counted at.
    """

    snapshots: Callable[[int], dict[str, torch.Tensor]] | None = None
    calibration: Callable[[], list[Batch]] | None = None
    rates: Mapping[str, float] = field(default_factory=dict)
    target_macs: float | None = None
    input_size: int = 32

    def snapshot(self, epoch: int) -> dict[str, torch.Tensor]:
        if self.snapshots is None:
            raise PruningError("this method needs training snapshots, and none were given")
        return self.snapshots(epoch)

    def calibration_batches(self) -> list[Batch]:
        if self.calibration is None:
            raise PruningError("this method reads calibration images (prune.calibration), and none were given")
        return self.calibration()


NO_CONTEXT = PruningContext()


@dataclass(frozen=True)
class Selection:
    """What a method selected: ``{layer name: layer plan}`` (``gkp.mechanisms.pruning.plan``), and ``notes`` on how it
    decided (a solved rate, the calibration images read), which ``plan.json`` records."""

    layers: dict[str, Any]
    notes: dict[str, Any] = field(default_factory=dict)


def no_snapshots(params: Any) -> tuple[int, ...]:
    return ()


@dataclass(frozen=True)
class PruningMethod:
    """A pruning method: its parameter dataclass, its selection function and a cheap feasibility check.

    ``select(model, rate, params, context) -> Selection`` reads the trained weights (and the context) and
    must not modify the model; every layer plan it returns is of ``kind``, a layer type of
    ``gkp.mechanisms.pruning.plan`` ("filters", "grouped_kernels", or a structure-changing "removed_block",
    "factorised" or "adapters"). ``check(model, rate, params, context)`` raises ``PruningError`` for
    settings that cannot work on this architecture; the pipeline calls it before any training starts.
    ``snapshot_epochs(params)`` lists the training snapshots the method reads. ``budgets`` names how its size
    may be set (``rate``, and for filter methods ``rates`` and ``target_macs``); ``calibrated`` methods read
    calibration images. A "grouped_kernels" method's params are ``GroupedKernelParams``. ``count(model,
    input_size) -> MACs`` is the method's own counter, where its paper's figures came from it (``plan.json``
    records it as ``method_macs``). A training-time method (``training`` set) acts while the model trains; its
    ``select`` then reads the trained model's zeroed filters, unless its ``finalize`` gives the plan (see
    ``TrainingTime``).
    """

    name: str
    params: type
    select: Callable[..., Selection]
    check: Callable[..., None]
    summary: str
    kind: PlanKind
    snapshot_epochs: Callable[[Any], tuple[int, ...]] = field(default=no_snapshots)
    budgets: frozenset[str] = frozenset({"rate"})
    calibrated: bool = False
    training: TrainingTime | None = None
    count: Callable[[nn.Module, int], int] | None = None

    def __post_init__(self) -> None:
        if self.kind == "grouped_kernels":
            require_fields(self.params, GroupedKernelParams, f"pruning method '{self.name}'")


class GroupedKernelParams(Protocol):
    """The parameters every grouped-kernel method takes: ``groups`` (filter groups per conv, the grouped
    conv's groups) and ``scope`` (which convs: "3x3" or "all", see ``PrunableModel``)."""

    groups: int
    scope: str


# ------------------------------------------------------------------------------------------- attacks

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, Any, "torch.Generator | None", "Box"], torch.Tensor]
AttackKind = Literal["gradient", "query", "minimum_norm"]


class AttackParams(Protocol):
    """The parameters every attack takes: ``eps``, the radius of its threat model in the units of the
    attacked input (optional, ``None``, only for minimum-norm attacks, which then bound no threat model),
    and ``norm``, "linf" or "l2"."""

    eps: float | None
    norm: str


@dataclass(frozen=True)
class Attack:
    """A registered attack.

    ``run(model, x, y, params, generator, box) -> x_adv``: ``x`` a batch (N, C, H, W) inside ``box`` (pixels
    in [0, 1] by default; the evaluation passes normalized inputs and their range in the paper's mode), on
    any device, and ``y`` (N,) integer labels. ``params.eps`` and step sizes are in the units of ``x``.
    ``x_adv`` is detached, on ``x``'s device, inside the box and, for bounded attacks, inside the eps-ball;
    minimum-norm attacks return each sample's smallest adversarial point found (or the clean image).
    Randomness comes only from ``generator``.

    ``kind``: "gradient" (white-box), "query" (the model's outputs only) or "minimum_norm". ``norms``: the
    values its ``params.norm`` accepts. ``quick``: parameter overrides that make it finish in seconds on a
    small model (smoke runs and the contract tests); the defaults are the papers'.
    """

    name: str
    params: type
    run: AttackFn
    kind: AttackKind
    summary: str
    norms: tuple[str, ...] = ("linf",)
    quick: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        require_fields(self.params, AttackParams, f"attack '{self.name}'")


@dataclass(frozen=True)
class Suite:
    """A named list of attacks a config's ``attacks`` may hold as one entry (``{suite: NAME, ...}``):
    ``make(**arguments)`` returns the attack entries (mappings as a config writes them), ``keys`` are the
    arguments a config may give it."""

    name: str
    make: Callable[..., list[dict[str, Any]]]
    keys: tuple[str, ...]
    summary: str


# ------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: ``load(cfg, device, num_classes) -> DataBundle`` reads a config's ``data``
    section (``num_classes`` sizes generated data) and returns its splits on ``device``;
    ``check(cfg, trains)`` raises ``ConfigError`` before any compute when the section cannot work (a
    missing path, a training stage without training data); ``images(cfg)`` tells, without loading them,
    how many (training, test) images the section gives, or None where only loading would tell (used to
    estimate a sweep's time before anything ran); ``content(cfg)`` is a digest of the files the section
    reads (npz files, an image folder's manifest), or None where the dataset's name fixes its content:
    every stage's fingerprint covers it, so that a changed file is refused like a changed key."""

    name: str
    load: Callable[[Any, torch.device, int | None], DataBundle]
    summary: str
    check: Callable[[Any, bool], None] = lambda cfg, trains: None
    images: Callable[[Any], tuple[int, int] | None] = lambda cfg: None
    content: Callable[[Any], str | None] = lambda cfg: None


# ------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Choice:
    """A registry entry a config chose, with its parameters: ``adversarial: {method: pgd, eps: 8/255}``,
    ``optimizer: {name: adamw}``, ``distill: {temperature: 2}``. ``plain()`` is how the resolved config
    writes it: the entry's name under ``key`` (none where the config key itself names the entry), then
    its parameters."""

    entry: Any
    params: Any
    key: str | None = "name"

    def plain(self) -> dict[str, Any]:
        named = {self.key: self.entry.name} if self.key else {}
        return {**named, **to_plain(self.params)}


@dataclass(frozen=True)
class ParamGroup:
    """Options for the parameters whose names match ``match`` (an ``fnmatch`` pattern such as ``*.bn*``
    or ``*.bias``): a learning rate and a weight decay of their own; the first matching group wins."""

    match: str = option(doc="parameter names, an fnmatch pattern: *.bias, layer1.*, *.bn*", default_text="(required)")
    lr: float | None = option(None, check=positive, doc="their initial learning rate; default the section's lr")
    weight_decay: float | None = option(None, check=at_least(0), doc="their weight decay; default the section's")


@dataclass(frozen=True)
class Optimizer:
    """A registered optimizer a training section names (``optimizer``): ``build(groups, recipe, params)``
    returns the ``torch.optim.Optimizer`` over ``groups`` (torch parameter groups: dicts of ``params``
    and, where a ``ParamGroup`` set them, ``lr`` and ``weight_decay``) with the recipe's ``lr`` and
    ``weight_decay`` as defaults and its own ``params``."""

    name: str
    params: type
    build: Callable[..., torch.optim.Optimizer]
    summary: str


@dataclass(frozen=True)
class Recipe:
    """How one phase of training optimises: the optimizer (``optimizer``, a ``Choice`` of an ``Optimizer``;
    None: SGD with ``momentum`` and ``nesterov``), its learning rate and weight decay, per-parameter
    options (``param_groups``), an optional clip of the gradients' global L2 norm, a learning-rate
    schedule stepped once per epoch (``gkp.mechanisms.engine.schedule``) and the number of epochs.
    ``Recipe.of(section)`` reads a config's ``train`` or ``finetune`` section."""

    epochs: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "step"
    step_size: int = 100
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    optimizer: Choice | None = None
    param_groups: tuple[ParamGroup, ...] = ()
    clip_grad_norm: float | None = None

    @classmethod
    def of(cls, section: Any) -> Recipe:
        return cls(**{f.name: getattr(section, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class StepContext:
    """What the loss of one training step sees: the ``model`` (in train mode, eval mode in a phase that
    freezes it), the batch ``x`` (images in [0, 1]) and ``y`` (labels), the ``generator`` its randomness
    comes from (an attack's random start; seeded per epoch), the ``teacher`` (the dense model in eval
    mode, for losses that read one, else None), the ``phase`` and ``epoch`` (0-based within the phase)
    and ``step``, the optimizer steps the stage took before this one, across its phases."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator | None = None
    teacher: nn.Module | None = None
    phase: int = 0
    epoch: int = 0
    step: int = 0


Objective = Callable[[StepContext], tuple[torch.Tensor, torch.Tensor]]
"""``objective(step) -> (mean loss, logits)``: the loss one training step minimises on its batch and the
logits its accuracy is counted on."""

Optimizers = Callable[[nn.Module, Recipe], dict[str, torch.optim.Optimizer]]
"""``optimizers(model, recipe) -> {name: optimizer}``: a phase's own optimizers (a discriminator's beside
the model's, say), each stepped by the phase's ``step`` and scheduled by its recipe."""

Step = Callable[[StepContext, Mapping[str, torch.optim.Optimizer], Objective], tuple[torch.Tensor, torch.Tensor]]
"""``step(context, optimizers, objective) -> (loss, logits)``: one training step of its own (alternating a
discriminator or a predictor with the model, say): its forward and backward passes and optimizer steps.
The loop then calls ``after_step``; the hooks' ``regularizer`` and ``after_backward`` and the recipe's
``clip_grad_norm`` are the step's to apply. It runs under the section's autocast, without float16 loss
scaling, in one process."""


@dataclass(frozen=True)
class Phase:
    """A stretch of training with its own optimizers and schedule (fresh ones each phase).

    ``name`` ("" for a run of one phase); its ``recipe``; ``final``: whether the model has its final
    structure during it, so that its epochs may become best-epoch models (an ADMM phase's soft-pruned model
    may not). By default the phase trains every parameter of the model with one optimizer from its recipe,
    one step being the objective (plus the hooks' regularizer) minimised by that optimizer; ``optimizers``
    and ``step`` replace both. ``frozen_backbone``: the model runs in eval mode and only the parameters
    its optimizers hold get gradients. ``data``: the split it trains on, ``train``, or ``val``, the seeded
    fraction ``data.val_fraction`` of the training split (augmented as the training split is, but for
    image folders, whose held-out images are read unaugmented).
    ``stop(model)``, asked after every step, ends the phase early (that epoch is its last)."""

    name: str
    recipe: Recipe
    final: bool = True
    optimizers: Optimizers | None = None
    step: Step | None = None
    frozen_backbone: bool = False
    data: Literal["train", "val"] = "train"
    stop: Callable[[nn.Module], bool] | None = None


class TrainingHooks:
    """Extension points of the training loop; every one is a no-op here, and the loop calls all of them
    at every step and epoch, whoever implements them.

    Per step: ``regularizer(model)`` (a term added to the loss, or None), ``after_backward(model)``
    (gradients are unscaled: mask or add to them), ``after_step(model, lr, step)`` (after the optimizer,
    with the learning rate it used and the stage's step count including this step: re-apply masks, take a
    proximal step). Per epoch (0-based within the phase): ``start_epoch`` and ``end_epoch`` (after the
    schedule's step, before the epoch's evaluation). ``start_phase(model, phase)`` runs when a phase
    begins, before its optimizers exist (a module it swaps in is optimised), not when a resumed run
    re-enters the phase. ``state_dict()`` is saved with every resume checkpoint; on resume
    ``load_state_dict(state, model)`` gets it back, with the model as ``prepare`` left it, *before* the
    weights are loaded: a hook that changed the model's structure rebuilds it there, so the saved weights
    fit. Everything a hook keeps between epochs must be in its state (tensors on any device)."""

    def start_phase(self, model: nn.Module, phase: int) -> None:
        pass

    def start_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        pass

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_backward(self, model: nn.Module) -> None:
        pass

    def after_step(self, model: nn.Module, lr: float, step: int) -> None:
        pass

    def end_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        pass


During = Literal["train", "finetune"]


def unchanged(model: nn.Module, hooks: TrainingHooks) -> nn.Module:
    return model


@dataclass(frozen=True)
class TrainingTime:
    """How a training-time pruning method acts.

    ``build(model, rate, params, context, recipe)`` returns the ``Phase``s it trains (given the recipe of
    the config section it trains with) and its ``TrainingHooks``; it must not change the model (the runner
    also calls it to check the settings before any compute). ``prepare(model, hooks) -> model`` then puts
    in the modules the method trains with (masks, gates, adapters, weight generators), before any
    optimizer exists. After training, ``finalize(model, hooks) -> (pruned model, Selection)`` returns the
    physical model and its plan, where the method built something zeroed filters cannot describe (the
    pruned model must be what surgery builds from the plan, so that its checkpoint reloads); without it
    the method's ``select`` reads the trained model's zeroed filters and surgery cuts them out. ``during``
    is where it acts by default: "train" (from a fresh initialisation, with the ``train`` section's
    recipe) or "finetune" (from the trained dense model, with the ``finetune`` section's)."""

    build: Callable[..., tuple[list[Phase], TrainingHooks]]
    during: During
    prepare: Callable[[nn.Module, TrainingHooks], nn.Module] = unchanged
    finalize: Callable[[nn.Module, TrainingHooks], tuple[nn.Module, Selection]] | None = None

    @property
    def changes_structure(self) -> bool:
        """Whether the trained model is more than the architecture with zeroed filters."""
        return self.prepare is not unchanged or self.finalize is not None


@dataclass(frozen=True)
class Loss:
    """A registered loss a training section minimises (cross-entropy, an adversarial training,
    distillation): ``objective(params, label_smoothing, attack) -> Objective``. ``attack`` names the
    registered attack that crafts its training examples (the runner passes that ``Attack``; None for the
    losses that craft none); a loss that reads a ``teacher`` gets the dense model in every
    ``StepContext``. ``key`` is the key of a training section that chooses it (``adversarial``: its
    ``method`` names the loss; ``distill``; none for the default, cross-entropy)."""

    name: str
    params: type
    objective: Callable[..., Objective]
    summary: str
    key: str | None = None
    attack: str | None = None
    teacher: bool = False


# ------------------------------------------------------------------------------------------- importers


@dataclass(frozen=True)
class Importer:
    """A released checkpoint format the model zoo converts (``gkp/application/checkpoints/MANIFEST``; one file each in
    ``gkp.application.checkpoints.importers``).

    ``convert(source, entry) -> model``: reads the file at ``source`` without executing anything from it
    and returns the model built by ``gkp.application.catalog.build_model`` for ``entry.arch`` with
    ``entry.num_classes`` and the normalisation ``entry.mean`` / ``entry.std`` inside, computing what the
    source's own model computes. Raises ``CheckpointError`` when the file does not match the entry."""

    name: str
    convert: Callable[[Any, Any], nn.Module]
    summary: str


# ------------------------------------------------------------------------------------------- checks


def require_fields(params: type, protocol: type, owner: str) -> None:
    """Raise ``TypeError`` unless the dataclass ``params`` has every field ``protocol`` declares."""
    required = typing.get_type_hints(protocol)
    have = {f.name for f in dataclasses.fields(params)} if dataclasses.is_dataclass(params) else set()
    missing = [name for name in required if name not in have]
    if missing:
        raise TypeError(
            f"{owner}: its parameters {params.__name__} must be a dataclass with the fields "
            f"{', '.join(required)} ({protocol.__name__}); missing: {', '.join(missing)}"
        )
