"""OTOv2: "OTOv2: Automatic, Generic, User-Friendly" (Chen, Liang, Ding, Zhu, Zharkov; ICLR 2023), its
DHSPG optimizer as release 2.0.16 of the official code (tianyic/only_train_once, MIT) runs it, written
anew here (later releases no longer have DHSPG, and 2.0.16 cannot run on current torch or on a CPU).

**Groups.** OTOv2 prunes zero-invariant groups: sets of parameters that, all zero, make a channel's
output exactly zero. Traced on our option-A ResNets they are the inner channels: filter o of a block's
first conv with entry o of its BatchNorm's scale and shift (the stem and the convs feeding the residual
sums form one group it never prunes). Here they are the rows of every removable conv and its BatchNorm
(``filter_pruning_groups``), which is the same on the ResNets. A zero group's channel is zero whatever
the input, so the physical model cut from the plan equals the trained one, and there is no fine-tuning.

**DHSPG** (the code's ``sgd`` variant), one step, with d = the gradient plus weight decay x (a momentum
buffer of it when ``momentum`` > 0), x^ = x - lr d for every parameter, and for the groups:

1. Until ``start_epoch`` (by default a sixth of the epochs, the tutorial's 50 of 300), plain SGD.
2. At the first step of ``start_epoch``, once: the groups are partitioned. Each scores 0.5 x the
   L2-normalised (over all groups) cosine of (-x, -d) + 0.5 x the L2-normalised size / ||x||; the top
   K = floor(N x min(rate + tolerance, 0.999)) are penalised, except that each layer keeps at least one
   group unpenalised (its lowest-scoring one). Ties go to the lower index.
3. While the group sparsity (zero groups / all groups) is below ``prune.rate``, each penalised group g
   moves further, x^ -= lr lambda_g x / ||x||, where lambda_g = lambda, or, where <x, d> < 0,
   clip(-2 <x, d> / ||x||, lambda, 10 lambda), replaced by the midpoint of -<x, d> / ||x|| and
   -||d||^2 ||x|| / <x, d> where it reaches the latter; then the half-space projection zeroes it if
   <x^, x> < epsilon ||x||^2.
4. Once the target is met: plain steps. A zero group stays zero throughout.

One departure: the code may zero more groups in one step than the target needs (its only cap is per
layer and off by default), so its group sparsity can overshoot ``prune.rate``. Here a step that would
overshoot zeroes only as many groups as reach the target, those deepest in the half-space (the lowest
<x^, x> / ||x||^2) first, so the group sparsity is exactly ceil(N x rate) / N, the knob the tables set.

Trained from scratch (``prune.during: train``, the tutorial's ResNet-18 setting: 300 epochs, lr 0.1,
momentum 0, weight decay 1e-4, StepLR 75, start after 50 epochs) or from the dense model
(``prune.during: finetune``, the SR-GKP paper's "post-train" rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    TrainingHooks,
    TrainingTime,
)
from gkp.foundation.errors import ConfigError, PruningError
from gkp.foundation.schema import at_least, in_unit_interval, option, positive
from gkp.mechanisms.pruning.dependencies import filter_pruning_groups
from gkp.mechanisms.pruning.masks import masked_selection

AMPLIFY = 2.0  # lambda_g starts at AMPLIFY x -<x, d> / ||x|| (the code's lmbda_amplify for sgd)
CEILING = 10.0  # and stays within [lambda, CEILING x lambda] (its hat_lmbda_coeff)
SAFE = 1e-8  # the code's guard on ||x|| in x / ||x||


@dataclass(frozen=True)
class OTOv2Params:
    start_epoch: int | None = option(
        None,
        check=at_least(0),
        doc="epochs of plain SGD before the groups are partitioned and penalised; default a sixth of the "
        "section's epochs (the tutorial's 50 of 300)",
    )
    epsilon: float = option(
        0.95,
        check=in_unit_interval,
        doc="half-space projection: a penalised group is zeroed when <x^, x> < eps ||x||^2",
    )
    lmbda: float = option(1e-3, check=positive, doc="the group penalty's base lambda (lambda_g: lambda to 10 lambda)")
    tolerance: float = option(
        0.05, check=in_unit_interval, doc="groups penalised: the top N x min(rate + tolerance, 0.999)"
    )


# ------------------------------------------------------------------------------------------- groups


def zero_invariant_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Per removable conv, the tensors whose row o together form its group o: the conv's weight (and
    bias), its BatchNorm's scale and shift."""
    layers = []
    for group in filter_pruning_groups(model):
        conv, bn = model.get_submodule(group.conv), model.get_submodule(group.bn)
        if bn.weight is None:
            raise PruningError(f"otov2: '{group.bn}' has no scale and shift, so zeroing '{group.conv}' is not enough")
        layers.append([t for t in (conv.weight, conv.bias, bn.weight, bn.bias) if t is not None])
    return layers


def rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(groups, size): row o holds row o of every tensor, flattened and concatenated."""
    return torch.cat([t.reshape(len(t), -1) for t in tensors], dim=1)


def partition(xs: list[torch.Tensor], ds: list[torch.Tensor], rate: float, tolerance: float) -> list[torch.Tensor]:
    """Per layer (its groups' rows ``xs`` and directions ``ds``), which groups are penalised."""
    cosines = torch.cat([F.cosine_similarity(-x, -d, dim=1) for x, d in zip(xs, ds, strict=True)])
    average_norms = torch.cat([x.norm(dim=1) / x.shape[1] for x in xs])
    scores = 0.5 * F.normalize(cosines, dim=0) + 0.5 * F.normalize(1.0 / (average_norms + 1e-6), dim=0)
    chosen = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    chosen[_highest(scores, int(len(scores) * min(rate + tolerance, 0.999)))] = True
    penalised, start = [], 0
    for x in xs:
        layer, layer_chosen = scores[start : start + len(x)], chosen[start : start + len(x)]
        kept = max(int((~layer_chosen).sum()), 1) if len(x) > 1 else len(x)
        mask = torch.ones(len(x), dtype=torch.bool, device=x.device)
        mask[_highest(-layer, kept)] = False
        penalised.append(mask)
        start += len(x)
    return penalised


def _highest(values: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the ``count`` highest values (ties: the lower index first)."""
    return torch.argsort(-values, stable=True)[:count]


def group_lambdas(x: torch.Tensor, d: torch.Tensor, penalised: torch.Tensor, lmbda: float) -> torch.Tensor:
    """Each group's lambda_g: ``lmbda``, or for a penalised group moving away from zero (<x, d> < 0)
    AMPLIFY x -<x, d> / ||x|| clipped to [lmbda, CEILING x lmbda], replaced by the midpoint of its lower
    and upper bounds where it reaches the upper one (beyond it the step would grow ||x||)."""
    norms, inner = x.norm(dim=1), (x * d).sum(dim=1)
    lambdas = torch.full_like(norms, lmbda)
    adjust = penalised & (inner < 0)
    lower = -inner[adjust] / norms[adjust]
    upper = -(d[adjust].norm(dim=1) ** 2) * norms[adjust] / inner[adjust]
    value = torch.clip(AMPLIFY * lower, min=lmbda, max=CEILING * lmbda)
    beyond = value >= upper
    value[beyond] = (upper[beyond] + lower[beyond]) / 2
    lambdas[adjust] = value
    return lambdas


# ------------------------------------------------------------------------------------------- DHSPG


class DHSPG(torch.optim.Optimizer):
    """SGD over every parameter, with DHSPG's penalty and half-space projection on the groups (see the
    module's docstring). ``pruning`` (set by the hooks from ``start_epoch`` on) lets it partition and
    penalise; the partition is optimizer state, saved and restored with it."""

    def __init__(self, model: nn.Module, recipe: Recipe, rate: float, params: OTOv2Params):
        defaults = {"lr": recipe.lr, "momentum": recipe.momentum, "weight_decay": recipe.weight_decay}
        super().__init__(model.parameters(), defaults)
        self.layers = zero_invariant_groups(model)
        self.in_groups = {t for layer in self.layers for t in layer}
        self.total = sum(len(layer[0]) for layer in self.layers)
        self.target = math.ceil(self.total * rate - 1e-9)  # zero groups at the target
        self.settings = params
        self.rate = rate
        self.pruning = False

    @torch.no_grad()
    def step(self, closure=None):
        (group,) = self.param_groups
        directions = {p: self._direction(p, group) for p in group["params"] if p.grad is not None}
        for p, d in directions.items():
            if p not in self.in_groups:
                p.add_(d, alpha=-group["lr"])
        xs = [rows(layer) for layer in self.layers]
        ds = [rows([directions[t] for t in layer]) for layer in self.layers]
        if self.pruning and not self.partitioned:
            for layer, mask in zip(self.layers, partition(xs, ds, self.rate, self.settings.tolerance), strict=True):
                self.state[layer[0]]["penalised"] = mask
        updated = [x - group["lr"] * d for x, d in zip(xs, ds, strict=True)]
        norms = [x.norm(dim=1) for x in xs]
        zeros = sum(int((n == 0).sum()) for n in norms)
        if self.partitioned and zeros < self.target:
            self._penalise(xs, ds, norms, updated, group["lr"], self.target - zeros)
        for layer, n, new in zip(self.layers, norms, updated, strict=True):
            new[n == 0] = 0  # zero groups stay zero
            self._write(layer, new)

    @property
    def partitioned(self) -> bool:
        return "penalised" in self.state[self.layers[0][0]]

    def group_sparsity(self) -> float:
        return sum(int((rows(layer).norm(dim=1) == 0).sum()) for layer in self.layers) / self.total

    def _direction(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        d = p.grad + group["weight_decay"] * p
        if group["momentum"] == 0:
            return d
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = d.clone()
        else:
            state["momentum_buffer"].mul_(group["momentum"]).add_(d)
        return state["momentum_buffer"]

    def _penalise(self, xs, ds, norms_of, updated, lr: float, room: int) -> None:
        """The penalty on the penalised groups, then the half-space projection of at most ``room`` of them."""
        depths, candidates = [], []
        for index, (layer, x, d, norms, new) in enumerate(zip(self.layers, xs, ds, norms_of, updated, strict=True)):
            penalised = self.state[layer[0]]["penalised"]
            unit = torch.where((norms > 0)[:, None], x / (norms + SAFE)[:, None], torch.zeros_like(x))
            lambdas = group_lambdas(x, d, penalised, self.settings.lmbda)
            new[penalised] -= lr * lambdas[penalised, None] * unit[penalised]
            depth = (new * x).sum(dim=1) / norms**2
            crossing = penalised & (norms > 0) & ((new * x).sum(dim=1) < self.settings.epsilon * norms**2)
            for row in crossing.nonzero().flatten().tolist():
                depths.append(float(depth[row]))
                candidates.append((index, row))
        order = sorted(range(len(candidates)), key=lambda i: depths[i])[:room]  # stable: the lower index first
        for i in order:
            index, row = candidates[i]
            updated[index][row] = 0

    @staticmethod
    def _write(layer: list[nn.Parameter], new: torch.Tensor) -> None:
        start = 0
        for tensor in layer:
            width = tensor[0].numel()
            tensor.copy_(new[:, start : start + width].reshape(tensor.shape))
            start += width


class OTOv2Hooks(TrainingHooks):
    """Builds the phase's DHSPG and lets it prune from ``first_epoch`` on."""

    def __init__(self, rate: float, params: OTOv2Params, first_epoch: int):
        self.rate, self.params, self.first_epoch = rate, params, first_epoch
        self.optimizer: DHSPG | None = None

    def optimizers(self, model: nn.Module, recipe: Recipe) -> dict[str, torch.optim.Optimizer]:
        self.optimizer = DHSPG(model, recipe, self.rate, self.params)
        return {"model": self.optimizer}

    def start_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        self.optimizer.pruning = epoch >= self.first_epoch


def build(model: nn.Module, rate: float, params: OTOv2Params, context: PruningContext, recipe: Recipe):
    check(model, rate, params, context)
    own = [f"{key} ({value})" for key, value in _foreign_settings(recipe).items()]
    if own:
        raise ConfigError(
            f"otov2 trains with its own optimizer, DHSPG (SGD with its group penalty); remove {', '.join(own)} "
            "from the section it trains with"
        )
    start_epoch = params.start_epoch if params.start_epoch is not None else recipe.epochs // 6
    if start_epoch >= recipe.epochs:
        raise ConfigError(f"prune.params.start_epoch: {start_epoch} leaves no epoch of the {recipe.epochs} to prune in")
    hooks = OTOv2Hooks(rate, params, start_epoch)
    return [Phase("", recipe, optimizers=hooks.optimizers)], hooks


def _foreign_settings(recipe: Recipe) -> dict[str, Any]:
    """The recipe's settings DHSPG has no place for."""
    optimizer = recipe.optimizer.entry.name if recipe.optimizer is not None else "sgd"
    settings = {"optimizer": optimizer != "sgd" and optimizer, "param_groups": recipe.param_groups}
    return {key: value for key, value in {**settings, "nesterov": recipe.nesterov}.items() if value}


def check(model: nn.Module, rate: float, params: OTOv2Params, context: PruningContext = NO_CONTEXT) -> None:
    """Each layer keeps at least one group, so the target must leave one per layer."""
    layers = zero_invariant_groups(model)
    total = sum(len(layer[0]) for layer in layers)
    if math.ceil(total * rate - 1e-9) > total - len(layers):
        raise PruningError(
            f"prune.rate {rate} would zero {math.ceil(total * rate - 1e-9)} of {total} groups, but each of the "
            f"{len(layers)} layers keeps one: at most {(total - len(layers)) / total:.3f}"
        )


def select(model: nn.Module, rate: float, params: OTOv2Params, context: PruningContext = NO_CONTEXT):
    return masked_selection(model)


ENTRY = PruningMethod(
    "otov2",
    OTOv2Params,
    select,
    check,
    "OTOv2, DHSPG's group penalty and half-space projection to a target group sparsity (Chen et al., ICLR 2023)",
    "filters",
    training=TrainingTime(build, "train"),
)
