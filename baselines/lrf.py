"""LRF: "Linearly Replaceable Filters for Deep Network Channel Pruning" (Joo, Yi, Baek, Kim; AAAI 2021), as
its official code (jdg105/linearly-replaceable-filter-pruning, ``main_pruning.py`` and ``Util.py``) runs
it, written anew here.

Each conv of the network body with a kernel larger than 1x1 (every block conv of a ResNet) becomes
``AdaptedConv2d``: a 1x1 conv, the conv, a 1x1 conv, both 1x1s the identity at first. Then, as phases of
the training loop (``prune.during: finetune``, from the dense model):

1. **init**: ``init_epochs`` (20) epochs at ``init_lr`` (1e-3), cross-entropy alone.
2. **Top down**, from the last conv to the first, two phases per conv, each starting with a removal:
   - *outputs*: round(r x C_out) of the conv's filters (at most all but one) go one at a time. Each time,
     every filter f is written by least squares as a combination sum_k lambda_k f_k of the others; its
     error is ||f - sum_k lambda_k f_k|| x ||its column of the post-1x1||. The filter of least error goes,
     and its post-1x1 column, times lambda_k, is added to each other filter's column: where f is exactly
     such a combination, the block computes what it did.
   - *inputs*: the same over the conv's input channels (the slices W[:, i]) and the rows of the pre-1x1.
   Each removal is followed by ``layer_epochs`` (1) epoch(s) at ``layer_lr`` (1e-3) with the section's
   loss: in the paper configs, distillation from the dense model (``finetune.distill``: CE plus the KL
   divergence at temperature 2, batch-mean, no T^2 factor, as the code).
3. **final**: the rest of the section's epochs with its recipe (the paper configs: 300 epochs, lr 0.01,
   0.001 after half), distilling. The section's milestones count from the section's first epoch.

The adapters stay, trained, and are counted; ``prune.rate`` is the code's ratio r. The plan's ``adapters``
layers give each conv's kept original channels (``keep_in``, ``keep_out``); the checkpoint holds the
trained 1x1s, which are no longer selections.

**Departures**: lambda by float64 least squares (the code inverts A A^T in float32, which fails where the
other filters are dependent); the code hard-codes ResNet-32 and its checkpoint, here any model listing
its convs (``grouped_kernel_targets``); each phase starts a fresh SGD from the section's settings, as the
code starts a fresh one per removal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gkp.foundation.contracts import (
    NO_CONTEXT,
    Phase,
    PruningContext,
    PruningMethod,
    Recipe,
    Selection,
    StepContext,
    TrainingHooks,
    TrainingTime,
)
from gkp.foundation.errors import ConfigError, PruningError
from gkp.foundation.schema import at_least, option, positive
from gkp.mechanisms.engine.optimize import MODEL_OPTIMIZER
from gkp.mechanisms.layers.restructured import AdaptedConv2d
from gkp.mechanisms.pruning.dependencies import grouped_kernel_targets
from gkp.mechanisms.pruning.plan import AdaptersPlan
from gkp.mechanisms.pruning.surgery import set_module

OUTPUTS, INPUTS = "out", "in"


@dataclass(frozen=True)
class LRFParams:
    init_epochs: int = option(20, check=at_least(0), doc="epochs with identity adapters before any removal (CE)")
    init_lr: float = option(1e-3, check=positive, doc="their learning rate")
    layer_epochs: int = option(1, check=at_least(1), doc="epochs after each conv's output and input removals")
    layer_lr: float = option(1e-3, check=positive, doc="their learning rate (the code's ft_lr)")


# ------------------------------------------------------------------------------------------- one removal


def removed_count(channels: int, rate: float) -> int:
    """The code's int(round(r x C)), at most all but one channel (Python rounds halves to even)."""
    return min(channels - 1, int(round(channels * rate)))


WELL_CONDITIONED = 1e8  # below this condition number of A A^T, its inverse gives every least squares at once


def replacements(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row i of ``rows`` (K x n), the least-squares coefficients (float64) writing it as a
    combination of the other rows, in their order, and the residual's norm: ((K,), (K, K - 1)).

    With P the inverse of the Gram matrix G = rows rows^T, row i's coefficients are -P[j, i] / P[i, i] and
    its residual 1 / sqrt(P[i, i]): all K regressions from one inverse. Where G is ill-conditioned (rows
    nearly or exactly dependent) each is solved by least squares on its own."""
    rows = rows.detach().double()
    count = len(rows)
    gram = rows @ rows.T
    if torch.linalg.cond(gram) < WELL_CONDITIONED:
        inverse = torch.linalg.inv(gram)
        diagonal = inverse.diagonal()
        coefficients = -inverse / diagonal  # column i: row i's coefficients on every row (itself: -1)
        others = ~torch.eye(count, dtype=torch.bool)
        return diagonal.rsqrt(), coefficients.T[others].view(count, count - 1)
    return least_squares(rows)


def least_squares(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``replacements`` by one least-squares solve per row (any rank)."""
    count = len(rows)
    others = torch.stack([torch.cat([rows[:i], rows[i + 1 :]]) for i in range(count)])  # (K, K-1, n)
    lambdas = torch.linalg.lstsq(others.transpose(1, 2), rows.unsqueeze(2), driver="gelsd").solution.squeeze(2)
    residuals = rows - (lambdas.unsqueeze(1) @ others).squeeze(1)
    return residuals.norm(dim=1), lambdas


def _conv(weight: torch.Tensor, like: nn.Conv2d, bias: torch.Tensor | None = None) -> nn.Conv2d:
    """A conv holding ``weight`` (and ``bias``), with ``like``'s stride, padding and dilation."""
    out_channels, in_channels, *kernel = weight.shape
    geometry = {"stride": like.stride, "padding": like.padding, "dilation": like.dilation}
    conv = nn.Conv2d(in_channels, out_channels, tuple(kernel), bias=bias is not None, **geometry)
    conv = conv.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _others(count: int, removed: int) -> list[int]:
    return [k for k in range(count) if k != removed]


def remove_output(adapted: AdaptedConv2d) -> tuple[AdaptedConv2d, int]:
    """The conv without its most linearly replaceable filter, compensated through the post-1x1; and the
    removed filter's position."""
    core, post = adapted.conv.weight.detach(), adapted.post.weight.detach()
    errors, lambdas = replacements(core.flatten(1))
    removed = int(torch.argmin(errors * post.double().flatten(1).norm(dim=0)))
    keep = _others(len(core), removed)
    compensated = post[:, keep] + post[:, [removed]] * lambdas[removed].to(post.dtype).view(1, -1, 1, 1)
    bias = adapted.post.bias.detach() if adapted.post.bias is not None else None
    rebuilt = AdaptedConv2d(adapted.pre, _conv(core[keep], adapted.conv), _conv(compensated, adapted.post, bias))
    return rebuilt, removed


def remove_input(adapted: AdaptedConv2d) -> tuple[AdaptedConv2d, int]:
    """The conv without its most linearly replaceable input channel, compensated through the pre-1x1;
    and the removed channel's position."""
    core, pre = adapted.conv.weight.detach(), adapted.pre.weight.detach()
    errors, lambdas = replacements(core.transpose(0, 1).flatten(1))
    removed = int(torch.argmin(errors * pre.double().flatten(1).norm(dim=1)))
    keep = _others(core.shape[1], removed)
    compensated = pre[keep] + lambdas[removed].to(pre.dtype).view(-1, 1, 1, 1) * pre[[removed]]
    rebuilt = AdaptedConv2d(_conv(compensated, adapted.pre), _conv(core[:, keep], adapted.conv), adapted.post)
    return rebuilt, removed


REMOVE = {OUTPUTS: remove_output, INPUTS: remove_input}


# ------------------------------------------------------------------------------------------- hooks


class LRFHooks(TrainingHooks):
    """At the start of each removal phase, its conv's outputs or inputs go one at a time; ``kept``
    records each conv's original channels left, from which a resumed run rebuilds the shapes."""

    def __init__(self, rate: float, actions: list[tuple[str, str] | None]):
        self.rate, self.actions = rate, actions
        self.kept: dict[str, dict[str, list[int]]] = {}

    def start_phase(self, model: nn.Module, phase: int) -> None:
        if self.actions[phase] is None:
            return
        name, side = self.actions[phase]
        adapted = model.get_submodule(name)
        kept = self.kept.setdefault(
            name, {INPUTS: list(range(adapted.pre.out_channels)), OUTPUTS: list(range(adapted.post.in_channels))}
        )
        for _ in range(removed_count(len(kept[side]), self.rate)):
            adapted, removed = REMOVE[side](adapted)
            del kept[side][removed]
        set_module(model, name, adapted)

    def state_dict(self) -> dict[str, Any]:
        return {"kept": {name: {side: list(c) for side, c in kept.items()} for name, kept in self.kept.items()}}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.kept = {name: {side: list(c) for side, c in kept.items()} for name, kept in state["kept"].items()}
        for name, kept in self.kept.items():
            dense = model.get_submodule(name).conv
            set_module(model, name, AdaptedConv2d.from_dense(dense, kept[INPUTS], kept[OUTPUTS]))


def cross_entropy_step(context: StepContext, optimizers, objective) -> tuple[torch.Tensor, torch.Tensor]:
    """The init phase's step: plain cross-entropy, whatever the section's loss (the code's
    ``use_distill=False``)."""
    logits = context.model(context.x)
    loss = F.cross_entropy(logits, context.y)
    optimizer = optimizers[MODEL_OPTIMIZER]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


# ------------------------------------------------------------------------------------------- the method


def _targets(model: nn.Module) -> list[str]:
    names = grouped_kernel_targets(model, "3x3")
    for name in names:
        conv = model.get_submodule(name)
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            raise PruningError(f"lrf: '{name}' is not an ungrouped Conv2d, so it cannot take adapters")
    return names


def check(model: nn.Module, rate: float, params: LRFParams, context: PruningContext = NO_CONTEXT) -> None:
    _targets(model)


def build(model: nn.Module, rate: float, params: LRFParams, context: PruningContext, recipe: Recipe):
    names = _targets(model)
    phases, actions = [], []
    if params.init_epochs:
        init = replace(recipe, epochs=params.init_epochs, lr=params.init_lr, schedule="constant")
        phases.append(Phase("init", init, final=False, step=cross_entropy_step))
        actions.append(None)
    layer = replace(recipe, epochs=params.layer_epochs, lr=params.layer_lr, schedule="constant")
    for name in reversed(names):
        for side in (OUTPUTS, INPUTS):
            phases.append(Phase(f"{name} {side}puts", layer, final=False))
            actions.append((name, side))
    searched = sum(phase.recipe.epochs for phase in phases)
    if recipe.epochs <= searched:
        raise ConfigError(
            f"lrf: its search takes {searched} epochs ({params.init_epochs} init + {params.layer_epochs} after each "
            f"of the {2 * len(names)} removals); the section's epochs are its whole budget, so give it more than "
            f"{searched} (the code: {searched} + 300)"
        )
    milestones = tuple(m - searched for m in recipe.milestones if m > searched)
    phases.append(Phase("final", replace(recipe, epochs=recipe.epochs - searched, milestones=milestones)))
    return phases, LRFHooks(rate, [*actions, None])


def prepare(model: nn.Module, hooks: LRFHooks) -> nn.Module:
    """Identity 1x1s around every target conv."""
    for name in _targets(model):
        conv = model.get_submodule(name)
        set_module(
            model, name, AdaptedConv2d.from_dense(conv, list(range(conv.in_channels)), list(range(conv.out_channels)))
        )
    return model


def finalize(model: nn.Module, hooks: LRFHooks) -> tuple[nn.Module, Selection]:
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, AdaptedConv2d):
            kept = hooks.kept.get(name, {})
            keep_in = kept.get(INPUTS, list(range(module.pre.out_channels)))
            keep_out = kept.get(OUTPUTS, list(range(module.post.in_channels)))
            layers[name] = AdaptersPlan(tuple(keep_in), tuple(keep_out))
    return model, Selection(layers, {"ratio": hooks.rate})


def select(model: nn.Module, rate: float, params: LRFParams, context: PruningContext = NO_CONTEXT):
    raise PruningError("lrf selects while it trains (prune.during), through its finalize")


ENTRY = PruningMethod(
    "lrf",
    LRFParams,
    select,
    check,
    "LRF, linearly replaceable filters: identity 1x1 adapters, top-down removal of the filters and inputs "
    "best written as combinations of the others, compensated, with distillation (Joo et al., AAAI 2021)",
    "adapters",
    training=TrainingTime(build, "finetune", prepare=prepare, finalize=finalize),
)
