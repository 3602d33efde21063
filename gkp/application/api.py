"""The Python API: load a model, prune it with a registered method, evaluate it under registered attacks;
any ``nn.Module`` works, not only the registered architectures (``docs/api.md``)::

    import gkp
    model = gkp.load("zoo:resnet56-akamaster")
    pruned, plan = gkp.prune(model, "srgkp", rate=0.4375)
    report = gkp.evaluate(pruned, (images, labels), suite="strong", eps=8 / 255)

Keyword arguments are checked as a config's ``prune`` section and ``attacks`` list are, with the same
messages. A model that does not declare its dependency tables is traced once on ``example_input``
(``gkp.mechanisms.pruning.tracing``); the plan is the ``Plan`` a run writes to ``plan.json``.

The runner's prune and eval stages go through the same functions, ``prune_one_shot``,
``prune_while_training`` and ``evaluate_split``: one way to prune and evaluate. A training-time method
trains the model given, on ``data`` with the ``training`` recipe (a config's ``finetune`` keys), in this
process and without checkpoints: a run (``gkp run``) adds resume, best epochs and several GPUs.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkp.application.catalog import ATTACKS, LOSSES, MODELS, PRUNING_METHODS
from gkp.application.checkpoints.io import load_model
from gkp.application.checkpoints.zoo import local_checkpoint
from gkp.application.config import build_attacks, build_prune, build_section
from gkp.foundation.contracts import (
    Choice,
    Objective,
    Phase,
    PruningContext,
    PruningMethod,
    Recipe,
    Selection,
    TrainingHooks,
)
from gkp.foundation.errors import ConfigError, PruningError
from gkp.foundation.files import add_to_json_cache, read_json_cache, user_cache
from gkp.foundation.schema import to_plain
from gkp.foundation.seeding import seed_everything
from gkp.foundation.settings import AttackSpec, EvalConfig, PruneConfig, TrainConfig
from gkp.mechanisms.data.splits import GivenSplit
from gkp.mechanisms.engine.evaluate import AttackOutcome, EvalReport
from gkp.mechanisms.engine.evaluate import evaluate as evaluate_on
from gkp.mechanisms.engine.hooks import BatchNormSparsity, HookChain
from gkp.mechanisms.engine.train import Data, FitOutcome, LoopSettings, fit
from gkp.mechanisms.layers.forms import choose_forms, has_forms
from gkp.mechanisms.layers.normalize import Normalized
from gkp.mechanisms.pruning.dependencies import attach_tables, declares_tables
from gkp.mechanisms.pruning.plan import Plan
from gkp.mechanisms.pruning.surgery import apply as apply_plan
from gkp.mechanisms.pruning.tracing import trace_tables

# ------------------------------------------------------------------------------------------- loading


def load(source: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The model of a checkpoint file (ours, or a safetensors export) or of a zoo entry (``"zoo:NAME"``,
    fetched and converted on first use), on ``device``, in eval mode."""
    return load_model(local_checkpoint(str(source)), device)[0]


# ------------------------------------------------------------------------------------------- pruning


@dataclass(frozen=True)
class Pruned:
    """A one-shot pruning: the physically smaller ``model``, its ``plan``, the method's ``selection`` (with
    its notes) and the ``seconds`` the selection took."""

    model: nn.Module
    plan: Plan
    selection: Selection
    seconds: float


@dataclass(frozen=True)
class TrainedPruning:
    """A training-time method's work: the model as ``trained`` (masked, or with the method's modules), the
    physical ``pruned`` model, its ``plan`` and ``selection``, and the training's ``outcome``."""

    trained: nn.Module
    pruned: nn.Module
    plan: Plan
    selection: Selection
    outcome: FitOutcome


Train = Callable[[nn.Module, list[Phase], TrainingHooks], FitOutcome]
"""``train(model, phases, method_hooks) -> outcome``: trains the prepared model in place (a run's prune
stage: with its run folder, which keeps the model as trained before anything else happens)."""


def plan_for(prune: PruneConfig, selection: Selection) -> Plan:
    """The plan of ``selection`` as ``prune`` asked for it (a MACs target replaces the rate)."""
    rate = None if prune.target_macs is not None else prune.rate
    return Plan(prune.method, rate, selection.layers, to_plain(prune.params))


def prune_one_shot(model: nn.Module, prune: PruneConfig, context: PruningContext) -> Pruned:
    """Select with a one-shot method on the trained ``model`` (left unchanged) and cut the plan out."""
    method = PRUNING_METHODS.get(prune.method)
    start = time.perf_counter()
    selection = method.select(model, prune.rate, prune.params, context)
    seconds = time.perf_counter() - start
    plan = plan_for(prune, selection)
    return Pruned(apply_plan(model, plan), plan, selection, seconds)


def prune_while_training(
    model: nn.Module, prune: PruneConfig, context: PruningContext, recipe: Recipe, train: Train
) -> TrainedPruning:
    """A training-time method on ``model``: its phases (given ``recipe``, the training section's) and hooks,
    the modules it ``prepare``s, the training (``train``), then its physical model: the one its
    ``finalize`` builds, or the trained model's zeroed filters cut out by surgery."""
    method = PRUNING_METHODS.get(prune.method)
    phases, hooks = method.training.build(model, prune.rate, prune.params, context, recipe)
    model = method.training.prepare(model, hooks)
    outcome = train(model, phases, hooks)
    if method.training.finalize is not None:
        pruned, selection = method.training.finalize(model, hooks)
        return TrainedPruning(model, pruned, plan_for(prune, selection), selection, outcome)
    selection = method.select(model, prune.rate, prune.params, context)
    plan = plan_for(prune, selection)
    return TrainedPruning(model, apply_plan(model, plan), plan, selection, outcome)


def loss_of(cfg: TrainConfig) -> Choice:
    """The loss a training section minimises: the one a key of the section chose, else cross-entropy."""
    if cfg.loss is not None:
        return cfg.loss
    entry = LOSSES.get("cross_entropy")
    return Choice(entry, entry.params())


def objective_of(cfg: TrainConfig) -> Objective:
    """The section's loss as the loop's objective, with the attack that crafts its examples, if any."""
    loss = loss_of(cfg)
    attack = ATTACKS.get(loss.entry.attack) if loss.entry.attack else None
    return loss.entry.objective(loss.params, cfg.label_smoothing, attack)


def hooks_of(cfg: TrainConfig, method_hooks: TrainingHooks | None) -> TrainingHooks:
    """A training-time method's hooks and the section's options' (network slimming's sparsity term)."""
    hooks = [method_hooks] if method_hooks is not None else []
    if cfg.bn_sparsity:
        hooks.append(BatchNormSparsity(cfg.bn_sparsity))
    return HookChain(hooks)


class _NoStore:
    """Training from Python keeps no checkpoints: nothing to resume, no best-epoch models."""

    def load_resume(self) -> None:
        return None

    def save_epoch(self, model: nn.Module, state: Any) -> None:
        pass

    def save_best(self, metric: str, model: nn.Module, row: Any) -> None:
        pass

    def save_snapshot(self, epoch: int, model: nn.Module) -> None:
        pass

    def describe_last(self) -> str:
        return "none: training from Python keeps no checkpoint"


def _trainer(cfg: TrainConfig, data: GivenSplit, dense: nn.Module, seed: int, batch_size: int) -> Train:
    """``Train`` in this process on ``data``, with the loop's settings and loss from the section ``cfg`` and
    ``dense`` as the teacher of a loss that reads one."""
    if cfg.crop_padding is not None:
        raise ConfigError("finetune.crop_padding: data from Python is not augmented here; augment in a DataLoader")
    settings = LoopSettings(
        stage="prune", seed=seed, batch_size=batch_size, amp=cfg.amp, channels_last=cfg.channels_last, eval_every=0
    )
    teacher = copy.deepcopy(dense).eval().requires_grad_(False) if loss_of(cfg).entry.teacher else None

    def train(model: nn.Module, phases: list[Phase], method_hooks: TrainingHooks) -> FitOutcome:
        return fit(
            model,
            phases,
            data=Data(data, None),
            settings=settings,
            store=_NoStore(),
            objective=objective_of(cfg),
            hooks=hooks_of(cfg, method_hooks),
            teacher=teacher,
        )

    return train


def prune(
    model: nn.Module,
    method: str,
    *,
    rate: float | None = None,
    target_macs: float | None = None,
    rates: Mapping[str, float] | None = None,
    example_input: torch.Tensor | None = None,
    calibration: Any = None,
    snapshots: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
    data: Any = None,
    training: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    leave_unpruned: Iterable[str] = (),
    **params: Any,
) -> tuple[nn.Module, Plan]:
    """Prune ``model`` (left unchanged) with the registered ``method``: returns the physically smaller
    model and its ``Plan`` (``plan.to_dict()`` is what a run's ``plan.json`` holds).

    ``rate``, ``target_macs`` (a fraction of the dense MACs) and ``rates`` (per-layer rates by module-name
    prefix) are the config's ``prune`` keys, ``params`` the method's own (``prune.params``). A data-dependent
    method reads every batch of ``calibration``, and a training-time method trains on every batch of
    ``data`` (each a pair of tensors (images in [0, 1], labels), cut into batches of ``batch_size``, or a
    DataLoader) with the ``training`` recipe, a config's ``finetune`` keys ({"epochs": 10, "lr": 0.01},
    ``adversarial``, ``distill`` with the given model as teacher, ...), seeded by ``seed``. TMI-GKP reads
    ``snapshots`` of the training ({epoch: state_dict}). ``example_input``, a batch of the model's inputs,
    sizes the MACs count (a registered architecture's own input size without it), and traces a model that
    does not declare its dependency tables; ``leave_unpruned`` names modules of such a model that are kept
    whole (one torch.fx cannot trace, say)."""
    config = {"method": method, "params": params, **({"rate": rate} if rate is not None else {})}
    config |= {"target_macs": target_macs} if target_macs is not None else {}
    config |= {"rates": dict(rates)} if rates else {}
    settings = build_prune(config)
    entry = PRUNING_METHODS.get(settings.method)
    section = _training_section(entry, data, training)
    prunable = _with_tables(model, example_input, tuple(leave_unpruned))
    context = _context(settings, entry, prunable, example_input, calibration, snapshots, batch_size)
    entry.check(prunable, settings.rate, settings.params, context)
    if entry.training is None:
        pruned = prune_one_shot(prunable, settings, context)
        return pruned.model, pruned.plan
    seed_everything(seed)
    split = GivenSplit(data, next(prunable.parameters()).device)
    train = _trainer(section, split, prunable, seed, batch_size)
    trained = prune_while_training(copy.deepcopy(prunable), settings, context, Recipe.of(section), train)
    return trained.pruned.train(model.training), trained.plan  # in the mode the model was given


def _training_section(method: PruningMethod, data: Any, training: Mapping[str, Any] | None) -> TrainConfig | None:
    """The recipe a training-time method trains with (checked before anything runs)."""
    if method.training is None:
        if data is not None or training is not None:
            raise ConfigError(f"{method.name} prunes one-shot, without training: drop data= and training=")
        return None
    if data is None:
        raise ConfigError(
            f"prune.method: '{method.name}' prunes while the model trains: pass data= (training images and labels, "
            "or a DataLoader) and training=, the recipe's finetune keys (e.g. {'epochs': 10, 'lr': 0.01})"
        )
    return build_section(dict(training or {}), "finetune")


def trace(model: nn.Module, example_input: torch.Tensor, leave_unpruned: Iterable[str] = ()):
    """The dependency tables ``gkp.prune`` traces for ``model`` (``DependencyTables``): its filter groups,
    its grouped-kernel targets per scope, and why each other conv's filters cannot be removed."""
    return trace_tables(model, example_input, leave_unpruned)


def _with_tables(model: nn.Module, example_input: torch.Tensor | None, leave_unpruned: tuple[str, ...]) -> nn.Module:
    """``model`` itself where it declares its tables; else a copy carrying its traced ones."""
    if declares_tables(model):
        if leave_unpruned:
            raise PruningError(
                f"{type(model).__name__} declares its own dependency tables; leave_unpruned applies to traced models"
            )
        return model
    if example_input is None:
        raise PruningError(
            f"{type(model).__name__} declares no dependency tables, so gkp.prune traces them: pass "
            "example_input=, a batch of the model's inputs (e.g. torch.rand(1, 3, 32, 32))"
        )
    reference = next(model.parameters())
    tables = trace_tables(model, example_input.to(reference.device, reference.dtype), leave_unpruned)
    traced = copy.deepcopy(model)
    attach_tables(traced, tables)
    return traced


def _input_size(model: nn.Module, example_input: torch.Tensor | None) -> int | tuple[int, int]:
    if example_input is not None:
        height, width = example_input.shape[-2:]
        return height if height == width else (height, width)
    spec = getattr(model, "gkp_spec", None)
    if spec is None:
        raise PruningError("pass example_input=, a batch of the model's inputs: it sizes the MACs count")
    return MODELS.get(spec.arch).input_size


def _context(
    settings: PruneConfig, method: PruningMethod, model: nn.Module, example_input, calibration, snapshots, batch_size
) -> PruningContext:
    if method.calibrated and calibration is None:
        raise ConfigError(f"{method.name} reads calibration images: pass calibration=(images, labels) or a DataLoader")
    device = next(model.parameters()).device
    batches = GivenSplit(calibration, device).all_batches(batch_size) if calibration is not None else None
    missing = [e for e in method.snapshot_epochs(settings.params) if e not in (snapshots or {})]
    if missing:
        raise ConfigError(
            f"{method.name} reads the training's weights after epochs {missing[0]}..{missing[-1]}: pass "
            "snapshots={epoch: state_dict} (a run's train stage keeps them in snapshots/)"
        )
    return PruningContext(
        snapshots=(lambda epoch: snapshots[epoch]) if snapshots else None,
        calibration=(lambda: batches) if batches is not None else None,
        rates=settings.rates,
        target_macs=settings.target_macs,
        input_size=_input_size(model, example_input),
    )


# ------------------------------------------------------------------------------------------- evaluation


def forms_cache() -> Path:
    """The file of grouped-conv form timings kept across stages, runs and sessions on this machine."""
    return user_cache("forms.json", "GKP_FORMS_CACHE")


def fastest_forms(
    model: nn.Module, input_size: int, batch_size: int, passes: int, *, train: bool, channels_last: bool
) -> dict[str, int]:
    """Run each layer that has several equivalent forms in its fastest one on this device and batch,
    timed in the memory format it will run in, once per machine (``forms_cache``), so that the same
    command gives the same numbers, and at a cost bounded by the ``passes`` of the model it is for.
    Returns how many layers run in each form."""
    path = forms_cache()
    timings = read_json_cache(path)
    known = dict(timings)
    chosen = choose_forms(
        model, input_size, batch_size, train=train, channels_last=channels_last, timings=timings, passes=passes
    )
    if timings != known:  # the new timings; a choice another run recorded meanwhile wins, so that all keep one
        add_to_json_cache(path, {k: v for k, v in timings.items() if k not in known}, keep_recorded=True)
    return dict(Counter(chosen.values()))


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate_split`` gives: the ``report`` and how many layers ran in each grouped-conv form."""

    report: EvalReport
    forms: dict[str, int]


def evaluate_split(
    model: nn.Module,
    split,
    specs: Sequence[AttackSpec],
    *,
    batch_size: int,
    seed: int,
    options: EvalConfig,
    deterministic: bool = False,
    description: str = "eval",
    finished: Mapping[str, AttackOutcome] | None = None,
    on_finished: Callable[[str, AttackOutcome], None] | None = None,
) -> Evaluation:
    """``model`` on ``split``, clean and under each attack of ``specs`` (``gkp.mechanisms.engine.evaluate``),
    its grouped convs first put in their fastest forms (unless ``deterministic``, which keeps the default
    ones)."""
    forms = {}
    if not deterministic and has_forms(model):
        _, (x, _) = next(iter(split.test_batches(batch_size)))  # a DataLoader's batches are its own size
        passes = math.ceil(split.num_samples / len(x)) * (1 + sum(spec.passes for spec in specs))
        forms = fastest_forms(
            model, x.shape[-1], len(x), passes, train=bool(specs), channels_last=options.channels_last
        )
    report = evaluate_on(
        model,
        split,
        specs,
        batch_size=batch_size,
        seed=seed,
        description=description,
        options=options,
        finished=finished,
        on_finished=on_finished,
    )
    return Evaluation(report, forms)


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    attacks: Sequence[Mapping[str, Any]] = (),
    suite: str | None = None,
    eps: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    fold_batchnorm: bool = True,
    channels_last: bool = True,
) -> EvalReport:
    """Accuracy of ``model`` on ``data`` (a pair of tensors (images in [0, 1], labels), or a DataLoader of
    such batches), clean and under attack: the entries of ``attacks`` as a config's ``attacks`` list writes
    them (``{"name": "pgd", "eps": 8 / 255}``), and the suite named ``suite`` at ``eps`` (pixel units). The
    report holds per-attack and worst-case accuracies (``report.accuracies()``, ``report.to_dict()``).

    A model that normalises its inputs itself (every registered one) takes [0, 1] images; for one that
    expects normalised inputs, pass ``mean`` and ``std``: it is wrapped so that attacks still work in
    pixel space. ``seed`` fixes the attacks' randomness; ``fold_batchnorm`` and ``channels_last`` are the
    config's ``eval`` options."""
    specs = build_attacks([*attacks, *_suite_entry(suite, eps)])
    if (mean is None) != (std is None):
        raise ConfigError("pass both mean= and std= (the normalisation the model expects), or neither")
    device = next(model.parameters()).device
    evaluated = Normalized(model, mean, std).to(device) if mean is not None else model
    options = EvalConfig(fold_batchnorm=fold_batchnorm, channels_last=channels_last)
    split = GivenSplit(data, device)
    return evaluate_split(evaluated, split, specs, batch_size=batch_size, seed=seed, options=options).report


def _suite_entry(suite: str | None, eps: float | None) -> list[dict[str, Any]]:
    if suite is None:
        if eps is not None:
            raise ConfigError("eps= goes with suite=; an attack of attacks= takes its own eps")
        return []
    return [{"suite": suite, **({"eps": eps} if eps is not None else {})}]
