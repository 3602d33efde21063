"""Benign and adversarial evaluation with per-sample flags and per-batch sanity checks.

For each batch: benign predictions, then every attack of the suite on the clean images (each with its
own generator, seeded from the experiment seed, the attack's label and the batch index, so a result
does not depend on which other attacks run). Each adversarial batch is checked: finite, inside [0, 1],
inside the attack's eps-ball; the model must still be in eval mode. The worst case counts a sample as
robust only if it is classified correctly clean and under every attack (the AutoAttack protocol).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from attacks import ATTACKS
from gkp.errors import AttackSanityError
from gkp.schema import to_plain
from gkp.seeding import derive_seed

BOUND_TOLERANCE = 1e-5  # float32 rounding of x +- eps


@dataclass
class Score:
    correct: int = 0
    total: int = 0
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "correct": self.correct,
            "total": self.total,
            "accuracy": self.accuracy,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class AttackResult:
    name: str
    label: str
    params: dict[str, Any]
    score: Score = field(default_factory=Score)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "params": self.params, **self.score.to_dict()}


@dataclass
class EvalReport:
    benign: Score
    attacks: list[AttackResult]
    worst_case: Score

    def accuracies(self) -> dict[str, float]:
        """{"benign": ..., <attack label>: ...}: the metrics training tracks."""
        return {"benign": self.benign.accuracy, **{a.label: a.score.accuracy for a in self.attacks}}

    def to_dict(self) -> dict[str, Any]:
        return {
            "benign": self.benign.to_dict(),
            "attacks": [a.to_dict() for a in self.attacks],
            "worst_case": self.worst_case.to_dict(),
        }


def check_adversarial(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, label: str) -> None:
    if x_adv.shape != x.shape:
        raise AttackSanityError(f"attack '{label}' returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackSanityError(f"attack '{label}' produced NaN or infinite pixels")
    if x_adv.min() < -BOUND_TOLERANCE or x_adv.max() > 1 + BOUND_TOLERANCE:
        raise AttackSanityError(f"attack '{label}' left the image range [0, 1]")
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    if size.max() > eps + BOUND_TOLERANCE:
        raise AttackSanityError(
            f"attack '{label}' moved an image {size.max().item():.6f} in {norm}, beyond its eps {eps:.6f}"
        )


def _timed(device: torch.device, start: float) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _require_eval_mode(model: nn.Module) -> None:
    if any(m.training for m in model.modules()):
        raise AttackSanityError("the model left eval mode during evaluation (BatchNorm statistics would change)")


def evaluate(
    model: nn.Module, split, attack_specs: Sequence = (), *, batch_size: int, seed: int, description: str = "eval"
) -> EvalReport:
    """Accuracy of ``model`` on ``split``, clean and under each ``AttackSpec`` of ``attack_specs``."""
    model.eval()
    device = next(model.parameters()).device
    benign = Score()
    results = [AttackResult(s.name, s.label, to_plain(s.params)) for s in attack_specs]
    worst = Score()
    batches = split.batches(batch_size, train=False)
    total = split.num_batches(batch_size, train=False)
    for index, (x, y) in enumerate(tqdm(batches, total=total, desc=description, leave=False, disable=None)):
        start = time.perf_counter()
        with torch.no_grad():
            robust = model(x).argmax(1) == y
        benign.seconds += _timed(device, start)
        benign.correct += int(robust.sum())
        benign.total += len(y)
        for spec, result in zip(attack_specs, results, strict=True):
            attack = ATTACKS.get(spec.name)
            generator = torch.Generator(device=device)
            generator.manual_seed(derive_seed(seed, "attack", spec.label, index))
            start = time.perf_counter()
            x_adv = attack.run(model, x, y, spec.params, generator)
            with torch.no_grad():
                correct = model(x_adv).argmax(1) == y
            result.score.seconds += _timed(device, start)
            _require_eval_mode(model)
            check_adversarial(x_adv, x, spec.params.eps, attack.norm, spec.label)
            result.score.correct += int(correct.sum())
            result.score.total += len(y)
            robust &= correct
        worst.correct += int(robust.sum())
        worst.total += len(y)
    worst.seconds = benign.seconds + sum(r.score.seconds for r in results)
    return EvalReport(benign, results, worst)
