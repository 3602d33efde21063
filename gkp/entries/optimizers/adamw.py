"""AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019): torch's ``AdamW`` with
the section's ``lr`` and ``weight_decay`` (decoupled); NPPM's gate generator and predictor train with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gkp.foundation.contracts import Optimizer, Recipe
from gkp.foundation.schema import option, positive


def _betas(value: tuple[float, ...]) -> str | None:
    if len(value) != 2 or not all(0 <= beta < 1 for beta in value):
        return f"must be two numbers in [0, 1), got {list(value)}"
    return None


@dataclass(frozen=True)
class AdamWParams:
    betas: tuple[float, ...] = option((0.9, 0.999), check=_betas, doc="the moment estimates' decay rates")
    eps: float = option(1e-8, check=positive, doc="added to the denominator")
    amsgrad: bool = option(False, doc="the AMSGrad variant")


def adamw(groups: list[dict[str, Any]], recipe: Recipe, params: AdamWParams) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        groups,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        betas=tuple(params.betas),
        eps=params.eps,
        amsgrad=params.amsgrad,
    )


ENTRY = Optimizer("adamw", AdamWParams, adamw, "AdamW with the section's lr and (decoupled) weight decay")
