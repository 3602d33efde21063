"""Ready-made attack suites a config can name among its attacks, e.g. ``attacks: [{suite: paper-cifar}]``,
registered in ``gkp.application.catalog.SUITES``.

- ``paper-cifar``: the SR-GKP paper's CIFAR-10 evaluation exactly as its code ran it: FGSM eps 0.01 and
  0.1 on the model's own predictions, then PGD eps 8/255, step 2/255, 3 steps, no random start, on the
  true labels; eps in normalized-input units, clipped to the normalized range of the images.
- ``paper-imagenet``: their Tiny-ImageNet / ImageNet evaluation: FGSM 0.001, 0.01, 0.1 and PGD eps 4/255,
  step 1/255, 3 steps, in normalized-input units without clipping (as their code did).
- ``strong``: AutoAttack's standard evaluation (Croce & Hein, ICML 2020) at ``eps`` (pixel units) and
  ``norm`` (linf or l2), in its order and with its settings: APGD-CE (100 steps, 1 run), APGD-T (DLR loss,
  9 targets, 100 steps), FAB-T (9 targets, 100 steps) and the black-box Square attack (5,000 queries,
  p_init 0.8, its window halved at query counts as AutoAttack's ``resc_schedule=False``, or at fractions
  of the budget with ``rescale_schedule: true``); the per-sample worst case is AutoAttack's robust
  accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gkp.foundation.errors import ConfigError
from gkp.foundation.registry import Registry


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


def _strong(eps: Any, norm: str = "linf", rescale_schedule: bool = False) -> list[dict[str, Any]]:
    # AutoAttack's version='standard' (autoattack.py, set_version). No fixed labels: a config may hold the
    # suite twice (say L-inf and L2), labelled apgd_ce_1, apgd_ce_2, ...
    threat = {"eps": eps, "norm": norm}
    return [
        {"name": "apgd_ce", **threat, "steps": 100, "restarts": 1},
        {"name": "apgd_t", **threat, "steps": 100, "targets": 9, "restarts": 1},
        {"name": "fab_t", **threat, "steps": 100, "targets": 9, "restarts": 1},
        {"name": "square", **threat, "queries": 5000, "p_init": 0.8, "rescale_schedule": rescale_schedule},
    ]


@dataclass(frozen=True)
class Suite:
    """A named list of attacks: ``make(**arguments)`` returns the attack entries, ``keys`` are the
    arguments a config may give it. Registered in ``gkp.application.catalog.SUITES``."""

    name: str
    make: Callable[..., list[dict[str, Any]]]
    keys: tuple[str, ...]
    summary: str


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
STRONG = Suite(
    "strong",
    _strong,
    ("eps", "norm", "rescale_schedule"),
    "AutoAttack's standard evaluation at eps (pixel units) and norm: APGD-CE, APGD-T and FAB-T (9 targets), "
    "Square (5,000 queries; rescale_schedule: false, as AutoAttack)",
)


def expand_suites(entries: list[Any], suites: Registry[Suite]) -> list[tuple[str, Any]]:
    """(key path, attack entry) for every attack, the ``suites`` named replaced by their attacks in order."""
    expanded = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and "suite" in entry):
            expanded.append((f"attacks[{i}]", entry))
            continue
        suite = suites.get(entry["suite"], f"attacks[{i}].suite")
        name, keys = suite.name, suite.keys
        arguments = {k: v for k, v in entry.items() if k != "suite"}
        for key in arguments:
            if key not in keys:
                raise ConfigError(
                    f"attacks[{i}].{key}: the suite {name} takes {', '.join(keys) if keys else 'no other keys'}"
                )
        if "eps" in keys and "eps" not in arguments:
            raise ConfigError(f"attacks[{i}].eps: the suite {name} needs an eps (pixel units), e.g. 8/255")
        expanded += [(f"attacks[{i}] ({name})", attack) for attack in suite.make(**arguments)]
    return expanded
