"""The SR-GKP paper's evaluations exactly as its code ran them (``shared/specs/paper.md``):

- ``paper-cifar``: FGSM eps 0.01 and 0.1 on the model's own predictions, then PGD eps 8/255, step 2/255,
  3 steps, no random start, on the true labels; eps in normalized-input units, clipped to the normalized
  range of the images.
- ``paper-imagenet``: their Tiny-ImageNet / ImageNet evaluation: FGSM 0.001, 0.01, 0.1 and PGD eps 4/255,
  step 1/255, 3 steps, in normalized-input units without clipping (as their code did).
"""

from __future__ import annotations

from typing import Any

from gkp.foundation.contracts import Suite


def _paper(fgsm_eps: tuple[float, ...], pgd_eps: str, pgd_step: str, clip: bool) -> list[dict[str, Any]]:
    mode = {"space": "normalized", "clip": clip}
    fgsm = [{"name": "fgsm", "eps": eps, "labels": "predicted", "label": f"fgsm_{eps}", **mode} for eps in fgsm_eps]
    pgd = {
        "name": "pgd",
        "eps": pgd_eps,
        "step_size": pgd_step,
        "steps": 3,
        "random_start": False,
        "label": "pgd_3",
        **mode,
    }
    return [*fgsm, pgd]


PAPER_CIFAR = Suite(
    "paper-cifar",
    lambda: _paper((0.01, 0.1), "8/255", "2/255", clip=True),
    (),
    "the SR-GKP paper's CIFAR-10 evaluation as its code ran it: FGSM 0.01 and 0.1 on the predicted labels, "
    "PGD eps 8/255, step 2/255, 3 steps; normalized units, clipped",
)
PAPER_IMAGENET = Suite(
    "paper-imagenet",
    lambda: _paper((0.001, 0.01, 0.1), "4/255", "1/255", clip=False),
    (),
    "their Tiny-ImageNet / ImageNet evaluation: FGSM 0.001, 0.01, 0.1, PGD eps 4/255, step 1/255, 3 steps; "
    "normalized units, unclipped",
)
ENTRIES = (PAPER_CIFAR, PAPER_IMAGENET)
