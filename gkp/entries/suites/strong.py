"""``strong``: AutoAttack's standard evaluation (Croce & Hein, ICML 2020) at ``eps`` (pixel units) and ``norm``
(linf or l2), in its order and with its settings: APGD-CE (100 steps, 1 run), APGD-T (DLR loss, 9 targets,
100 steps), FAB-T (9 targets, 100 steps) and the black-box Square attack (5,000 queries, p_init 0.8, its
window halved at query counts as AutoAttack's ``resc_schedule=False``, or at fractions of the budget with
``rescale_schedule: true``); the per-sample worst case is AutoAttack's robust accuracy.
"""

from __future__ import annotations

from typing import Any

from gkp.foundation.contracts import Suite


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


ENTRY = Suite(
    "strong",
    _strong,
    ("eps", "norm", "rescale_schedule"),
    "AutoAttack's standard evaluation at eps (pixel units) and norm: APGD-CE, APGD-T and FAB-T (9 targets), "
    "Square (5,000 queries; rescale_schedule: false, as AutoAttack)",
)
