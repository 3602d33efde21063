"""The attack suite: one attack per file, each registered here as an ``Attack``.

Contract: ``attack.run(model, x, y, params, generator) -> x_adv`` with ``x`` a batch of images in
[0, 1] (N, C, H, W) on any device, ``y`` integer labels (N,), the model in eval mode and taking [0, 1]
inputs (normalisation is inside our models). ``eps`` is in pixel units. ``x_adv`` is detached, on
``x``'s device, inside the eps-ball of the attack's norm and inside [0, 1]. Randomness comes only from
``generator``, so a seed fixes the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from attacks import fgsm, pgd
from gkp.registry import Registry

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, Any, "torch.Generator | None"], torch.Tensor]


@dataclass(frozen=True)
class Attack:
    name: str
    params: type
    run: AttackFn
    norm: Literal["linf", "l2"]
    summary: str


ATTACKS: Registry[Attack] = Registry(
    "attack",
    {
        "fgsm": Attack(
            "fgsm", fgsm.FGSMParams, fgsm.run, "linf", "Fast gradient sign method (Goodfellow et al., 2015)"
        ),
        "pgd": Attack("pgd", pgd.PGDParams, pgd.run, "linf", "Projected gradient descent, L-inf (Madry et al., 2018)"),
    },
)
