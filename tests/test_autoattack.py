"""The ``strong`` suite's attacks against torchattacks' ports of the official AutoAttack code (APGD, APGDT,
FAB with every target, Square), at AutoAttack's standard settings, L-inf and L2, on the authors' ResNet-20
and 500 real CIFAR-10 images. torchattacks is an optional test dependency (``pip install --no-deps
torchattacks``: it pins an old ``requests``); without it these tests are skipped. Slow: about five hours on
one core, 2.5 with ``-n 2`` on two (most of it the two Squares).

Each attack must land within 1 point of torchattacks, or within two standard deviations of the noise its
random draws carry, where that is wider: images the two runs disagree on fall either way with even odds
when the algorithms are the same, so the gap's standard deviation is sqrt(disagreements) images. Square at
L2 disagrees with torchattacks on 21-24 of the 500 images, as often as two of its own runs with different
seeds do (bar: about 1.8-2 points); for the others, which landed within 0.4 points, the bar is 1 point
wherever they disagree on 6 images or fewer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gkp.application.catalog import ATTACKS
from gkp.application.checkpoints.io import load_model
from gkp.entries.suites.strong import ENTRY as STRONG
from gkp.foundation.schema import build
from gkp.foundation.threat import PIXELS

torchattacks = pytest.importorskip("torchattacks")

IMAGES = 500
BATCH = 250
# Per norm, the eps at which the authors' ResNet-20 is neither broken nor untouched by the attack (robust
# accuracy between 10% and 90%), so that agreement means something. L-inf: the gradient attacks leave about
# half the images robust at 0.5/255, Square (weaker on this model) about 28% at 2/255 (96% at 0.5/255, 7-9%
# at 3/255). L2: APGD-CE leaves 76% robust at 0.05 and 27% at 0.1 (100 images), Square about 44% at 0.25,
# where one seed's noise is about a point (torchattacks: 43.0%, 43.4%, 45.2% with seeds 0, 1, 2; ours 44.4%,
# 44.6%, 45.6%; ours and torchattacks disagree on 21, 24 and 22 images with those seeds, ours with itself
# across seeds 1 and 2 on 29, torchattacks with itself on 23).
EPS = {
    "linf": {"apgd_ce": 0.5 / 255, "apgd_t": 0.5 / 255, "fab_t": 0.5 / 255, "square": 2 / 255},
    "l2": {"apgd_ce": 0.075, "apgd_t": 0.075, "fab_t": 0.075, "square": 0.25},
}
THEIR_NORM = {"linf": "Linf", "l2": "L2"}
THEIRS = {
    "apgd_ce": lambda model, norm, eps: torchattacks.APGD(
        model, norm=norm, eps=eps, steps=100, n_restarts=1, loss="ce"
    ),
    "apgd_t": lambda model, norm, eps: torchattacks.APGDT(
        model, norm=norm, eps=eps, steps=100, n_restarts=1, n_classes=10
    ),
    "fab_t": lambda model, norm, eps: torchattacks.FAB(
        model, norm=norm, eps=eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=10
    ),
    "square": lambda model, norm, eps: torchattacks.Square(
        model, norm=norm, eps=eps, n_queries=5000, n_restarts=1, p_init=0.8, resc_schedule=False
    ),
}


@pytest.fixture(scope="module")
def authors(shared, authors_checkpoint):
    model, _ = load_model(authors_checkpoint)
    with np.load(shared / "data" / "cifar10_train_prefix.npz") as arrays:
        x = torch.from_numpy(arrays["images"][:IMAGES]).permute(0, 3, 1, 2).float().div(255).contiguous()
        y = torch.from_numpy(arrays["labels"][:IMAGES])
    return model.eval(), x, y


def robust_after(model, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image: does the model still classify the attacked image right?"""
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.mark.slow
@pytest.mark.parametrize("norm", list(EPS))
@pytest.mark.parametrize("name", list(THEIRS))
def test_each_attack_of_the_strong_suite_lands_within_1_point_or_its_noise_of_torchattacks(authors, name, norm):
    model, x, y = authors
    eps = EPS[norm][name]
    entry = next(a for a in STRONG.make(eps=eps, norm=norm) if a["name"] == name)
    params = build(ATTACKS.get(name).params, {k: v for k, v in entry.items() if k != "name"}, "attack")
    ours = torch.cat(
        [
            ATTACKS.get(name).run(
                model, x[i : i + BATCH], y[i : i + BATCH], params, torch.Generator().manual_seed(i), PIXELS
            )
            for i in range(0, IMAGES, BATCH)
        ]
    )
    theirs = THEIRS[name](model, THEIR_NORM[norm], eps)(x, y)
    mine, reference = robust_after(model, ours, y), robust_after(model, theirs, y)
    disagreements = int((mine != reference).sum())
    gap = abs(int(mine.sum()) - int(reference.sum())) / IMAGES
    print(
        f"{name} at {norm} {eps:.4g} on {IMAGES} images: ours {mine.float().mean():.1%}, "
        f"torchattacks {reference.float().mean():.1%}, {disagreements} images disagree"
    )
    assert 0.1 < reference.float().mean() < 0.9
    assert gap <= max(0.01, 2 * math.sqrt(disagreements) / IMAGES)
