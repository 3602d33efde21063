"""RAP-ADMM: "Adversarial Robustness vs. Model Compression, or Both?" (Ye, Xu, Liu, Cheng, Lambrechts,
Zhang, Zhou, Ma, Wang, Lin; ICCV 2019), filter pruning by ADMM as its official code runs it.

Two phases, each with a fresh optimizer and the section's learning-rate schedule compressed to its
length (a step or milestone at epoch m of the section's E epochs falls at m x phase / E):

1. ``admm`` (``admm_epochs``): minimise the loss plus sum over masked convs of
   ``rho / 2 * ||W - Z + U||_F^2``. At the start Z = Pi(W) and U = 0; at the start of every
   ``update_every``-th epoch after the first, rho grows by ``rho_growth``, Z = Pi(W + U) and
   U = U + W - Z. Pi, the projection onto the layer's sparsity set, computes each filter's L2 norm and
   zeroes the filters whose norm lies strictly below the norms' ``100 x rate``-th percentile (linear
   interpolation, numpy's default): at rate 0.4375, 7 of 16, 14 of 32 and 28 of 64 filters.
2. ``retrain`` (the remaining epochs): the filters above that percentile are kept, the others zeroed
   (a hard projection), and every step zeroes their gradients, so the final model has exactly those
   filters zeroed. Only this phase's epochs can become best-epoch models.

The official code trains every phase adversarially (PGD-10, eps 8/255 in pixels, train-mode BatchNorm):
set the section's ``adversarial: {method: pgd}``, as ``configs/paper/`` does. Its ADMM phase also
restarts the learning rate every 20 epochs, a schedule not reproduced here; its natural-loss term is
computed but unused, as here. The SR-GKP paper's row ("fully pruned at epoch 151") fits 150 ADMM epochs
and 150 retraining epochs from the natural dense model (``prune.during: finetune``), which is the
default split: half the epochs each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.l2 import filter_norms
from baselines.training_time import SCOPE_DOC, MaskState, Scope, phase_recipe, target_rates, training_time_method
from gkp.foundation.contracts import Phase, PruningContext, Recipe
from gkp.foundation.schema import at_least, option, positive
from gkp.mechanisms.pruning.masks import mask_gradients, zero_filters

ADMM, RETRAIN = 0, 1


@dataclass(frozen=True)
class RAPADMMParams:
    scope: Scope = option("all", doc=SCOPE_DOC)
    admm_epochs: int | None = option(
        None, check=at_least(1), doc="epochs of the ADMM phase; default half the section's epochs"
    )
    rho: float = option(1e-3, check=positive, doc="initial ADMM penalty")
    rho_growth: float = option(1.3, check=at_least(1), doc="factor on rho at each Z/U update (the code's multi_rho)")
    update_every: int = option(20, check=at_least(1), doc="epochs between Z/U updates (the code's admm_epoch)")


def percentile_threshold(weight: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(filter L2 norms, their ``100 x rate``-th percentile with linear interpolation)."""
    norms = filter_norms(weight)
    return norms, torch.quantile(norms, rate)


def project(weight: torch.Tensor, rate: float) -> torch.Tensor:
    """Pi: ``weight`` with the filters of norm strictly below the percentile set to zero."""
    norms, threshold = percentile_threshold(weight, rate)
    return weight.detach() * (norms >= threshold).to(weight.dtype).view(-1, *([1] * (weight.dim() - 1)))


def kept_filters(weight: torch.Tensor, rate: float) -> torch.Tensor:
    """The retraining mask: the filters of norm strictly above the percentile."""
    norms, threshold = percentile_threshold(weight, rate)
    return norms > threshold


def _on_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.cpu() for name, tensor in tensors.items()}


class ADMMHooks(MaskState):
    """``z``: each masked conv's projection Z; ``u``: its scaled dual variable U; ``rho``: the penalty."""

    def __init__(self, rates: dict[str, float], params: RAPADMMParams):
        super().__init__()
        self.rates, self.params = rates, params
        self.rho = params.rho
        self.z: dict[str, torch.Tensor] = {}
        self.u: dict[str, torch.Tensor] = {}
        self.phase = ADMM

    def start_phase(self, model: nn.Module, phase: int) -> None:
        weights = {name: model.get_submodule(name).weight for name in self.rates}
        if phase == ADMM:
            self.z = {name: project(weights[name], rate) for name, rate in self.rates.items()}
            self.u = {name: torch.zeros_like(z) for name, z in self.z.items()}
        else:
            self.masks = {name: kept_filters(weights[name], rate) for name, rate in self.rates.items()}
            zero_filters(model, self.masks)

    def start_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        super().start_epoch(model, phase, epoch)
        self.phase = phase
        device = next(model.parameters()).device
        self.z = {name: z.to(device) for name, z in self.z.items()}
        self.u = {name: u.to(device) for name, u in self.u.items()}
        if phase == ADMM and epoch > 0 and epoch % self.params.update_every == 0:
            self.update(model)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """rho <- growth x rho; Z <- Pi(W + U); U <- U + W - Z."""
        self.rho *= self.params.rho_growth
        for name, rate in self.rates.items():
            weight = model.get_submodule(name).weight.detach()
            self.z[name] = project(weight + self.u[name], rate)
            self.u[name] = self.u[name] + weight - self.z[name]

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        if self.phase != ADMM:
            return None
        terms = [(model.get_submodule(n).weight - self.z[n] + self.u[n]).pow(2).sum() for n in self.rates]
        return 0.5 * self.rho * torch.stack(terms).sum()

    def after_backward(self, model: nn.Module) -> None:
        if self.phase == RETRAIN:
            mask_gradients(model, self.masks)

    def end_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        if phase == RETRAIN:
            zero_filters(model, self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "rho": self.rho,
            "phase": self.phase,
            "z": _on_cpu(self.z),
            "u": _on_cpu(self.u),
        }

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        super().load_state_dict(state, model)
        self.rho, self.phase = state.get("rho", self.params.rho), state.get("phase", ADMM)
        self.z, self.u = dict(state.get("z", {})), dict(state.get("u", {}))


def build(model: nn.Module, rate: float, params: RAPADMMParams, context: PruningContext, recipe: Recipe):
    rates = target_rates(model, params.scope, rate, context)
    admm = params.admm_epochs if params.admm_epochs is not None else recipe.epochs // 2
    phases = [
        Phase("admm", phase_recipe(recipe, admm, "the ADMM phase"), final=False),
        Phase("retrain", phase_recipe(recipe, recipe.epochs - admm, "the retraining phase")),
    ]
    return phases, ADMMHooks(rates, params)


ENTRY = training_time_method(
    "rap_admm",
    RAPADMMParams,
    build,
    "RAP-ADMM, filter pruning by ADMM, then masked retraining (Ye et al., ICCV 2019)",
    "finetune",
)
