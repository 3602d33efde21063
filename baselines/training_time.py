"""What the training-time filter-pruning methods (SFP, soft FPGM, RAP-ADMM, iterative HRank) share: the
convs they mask and each conv's rate, masks kept as hook state, and the ``PruningMethod`` around their
hooks.

A training-time method's hooks zero filters while the model trains (``gkp.foundation.contracts.TrainingTime``);
the prune stage then reads the trained model's zeroed filters (``gkp.mechanisms.pruning.masks.masked_selection``):
the removable ones are cut out, the rest stay as zeros. Rates: ``prune.rate`` for every masked conv, or
a ``prune.rates`` map by module-name prefix; each conv zeroes floor(filters x rate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from torch import nn

from baselines.allocation import check_rate_map, layer_rates
from gkp.foundation.contracts import (
    NO_CONTEXT,
    During,
    Phase,
    PruningContext,
    PruningMethod,
    Recipe,
    TrainingHooks,
    TrainingTime,
)
from gkp.foundation.errors import PruningError
from gkp.mechanisms.pruning.masks import Masks, mask_targets, masked_selection, pruned_count

Scope = Literal["all", "inner"]
SCOPE_DOC = "masked convs: all (the stem and every block conv, as the official code) or inner (the removable ones)"
Build = Callable[[nn.Module, float, Any, PruningContext, Recipe], tuple[list[Phase], TrainingHooks]]


def target_rates(model: nn.Module, scope: Scope, rate: float, context: PruningContext) -> dict[str, float]:
    """The masked convs (forward order) and each one's rate, the rate map checked."""
    targets = mask_targets(model, scope)
    check_rate_map(targets, context.rates)
    return layer_rates(targets, rate, context.rates)


def pruned_counts(model: nn.Module, scope: Scope, rate: float, context: PruningContext) -> dict[str, int]:
    """The masked convs (forward order) and how many filters each zeroes."""
    rates = target_rates(model, scope, rate, context)
    return {name: pruned_count(model.get_submodule(name).out_channels, r, name) for name, r in rates.items()}


class MaskState(TrainingHooks):
    """Hooks that keep per-conv keep masks (``self.masks``) in their resume state; a resumed run's masks
    move to the model's device before its first epoch."""

    def __init__(self) -> None:
        self.masks: Masks = {}

    def start_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        device = next(model.parameters()).device
        self.masks = {name: keep.to(device) for name, keep in self.masks.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {name: keep.cpu() for name, keep in self.masks.items()}}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.masks = dict(state.get("masks", {}))


def phase_recipe(recipe: Recipe, epochs: int, what: str) -> Recipe:
    """The section's recipe compressed to a phase of ``epochs``: its step size and milestones scale with
    the epochs, so each phase decays its learning rate as the whole section would."""
    if epochs < 1:
        raise PruningError(f"{what} would have {epochs} epochs; give the training section more epochs")
    scale = epochs / recipe.epochs
    milestones = tuple(sorted({max(1, round(m * scale)) for m in recipe.milestones}))
    return replace(recipe, epochs=epochs, step_size=max(1, round(recipe.step_size * scale)), milestones=milestones)


def training_time_method(
    name: str, params: type, build: Build, summary: str, during: During, calibrated: bool = False
) -> PruningMethod:
    """A ``PruningMethod`` whose ``build`` makes the phases and hooks that prune while training."""

    def select(model: nn.Module, rate: float, settings: Any, context: PruningContext = NO_CONTEXT):
        return masked_selection(model)

    def check(model: nn.Module, rate: float, settings: Any, context: PruningContext = NO_CONTEXT) -> None:
        pruned_counts(model, settings.scope, rate, context)

    return PruningMethod(
        name,
        params,
        select,
        check,
        summary,
        "filters",
        budgets=frozenset({"rate", "rates"}),
        calibrated=calibrated,
        training=TrainingTime(build, during),
    )
