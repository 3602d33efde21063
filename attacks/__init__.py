"""The attack suite: one attack per file, each registered here as an ``Attack``.

Contract: ``attack.run(model, x, y, params, generator, box) -> x_adv`` with ``x`` a batch (N, C, H, W)
inside ``box`` (pixels in [0, 1] by default; the evaluation passes normalized inputs and their range
in the paper's mode), on any device, and ``y`` (N,) integer labels. ``params.eps`` and step sizes are in
the units of ``x``; ``params.norm`` is "linf" or "l2". ``x_adv`` is detached, on ``x``'s device,
inside the box and, for bounded attacks, inside the eps-ball; minimum-norm attacks return each sample's
smallest adversarial point found (or the clean image). Randomness comes only from ``generator``.

Kinds: ``gradient`` (white-box), ``query`` (uses the model's outputs only) and ``minimum_norm``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from attacks import apgd, apgd_targeted, cw, fgsm, fmn, pgd, square
from attacks.common import Box
from gkp.registry import Registry

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, Any, "torch.Generator | None", Box], torch.Tensor]
Kind = Literal["gradient", "query", "minimum_norm"]


@dataclass(frozen=True)
class Attack:
    name: str
    params: type
    run: AttackFn
    kind: Kind
    summary: str


ATTACKS: Registry[Attack] = Registry(
    "attack",
    {
        "fgsm": Attack("fgsm", fgsm.FGSMParams, fgsm.run, "gradient", "FGSM (Goodfellow et al., ICLR 2015)"),
        "pgd": Attack("pgd", pgd.PGDParams, pgd.run, "gradient", "PGD, L-inf or L2 (Madry et al., ICLR 2018)"),
        "apgd_ce": Attack(
            "apgd_ce", apgd.APGDParams, apgd.run, "gradient", "APGD with cross-entropy (Croce & Hein, ICML 2020)"
        ),
        "apgd_t": Attack(
            "apgd_t",
            apgd_targeted.APGDTargetedParams,
            apgd_targeted.run,
            "gradient",
            "targeted APGD with the DLR loss (Croce & Hein, ICML 2020)",
        ),
        "square": Attack(
            "square",
            square.SquareParams,
            square.run,
            "query",
            "Square attack, L-inf or L2 (Andriushchenko et al., ECCV 2020)",
        ),
        "cw_l2": Attack("cw_l2", cw.CWParams, cw.run, "minimum_norm", "Carlini & Wagner L2 (IEEE S&P 2017)"),
        "fmn": Attack(
            "fmn",
            fmn.FMNParams,
            fmn.run,
            "minimum_norm",
            "Fast minimum-norm attack, L-inf or L2 (Pintor et al., NeurIPS 2021)",
        ),
    },
)
