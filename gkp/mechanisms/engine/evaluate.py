"""Benign and adversarial evaluation with per-sample flags, per-batch sanity checks and the
gradient-masking warnings users rely on.

For each batch: benign predictions, then every attack of the suite on the clean images, each with its
own generator (seeded from the experiment seed, the attack's label and the batch index, so a result does
not depend on which other attacks run). An attack runs in pixel space, or, in the SR-GKP code's mode
(``space: normalized``), on the normalized input with eps in its units; it attacks the true labels or
(``labels: predicted``) the model's own predictions; accuracy always counts the true labels. Each
adversarial batch is checked: finite, inside the box, inside the attack's eps-ball; the model must still
be in eval mode. A minimum-norm attack records each sample's smallest adversarial norm (0 when the clean
image is already misclassified, infinity when none was found); with an ``eps`` the sample is robust when
that norm is larger. The worst case counts a sample as robust only if it is classified correctly clean
and under every attack with a threat model (the AutoAttack protocol): a minimum-norm attack without an
``eps`` bounds nothing, so it is reported but left out of the worst case.

The model evaluated is, by default, a copy with each BatchNorm folded into the conv before it
(``gkp.mechanisms.engine.folding``) and its weights in channels_last memory format: the same function up to float
rounding, with faster forward and backward passes.

Warnings: a gradient-free attack beating every gradient attack of the same threat model (gradient
masking), and samples whose input gradient is exactly zero (on the first batch).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from gkp.foundation.errors import AttackSanityError
from gkp.foundation.seeding import derive_seed
from gkp.foundation.settings import EvalConfig
from gkp.foundation.threat import PIXELS, Box, input_gradient, lp_norm
from gkp.mechanisms.engine import distributed
from gkp.mechanisms.engine.folding import batchnorm_folded

log = logging.getLogger(__name__)

BOUND_TOLERANCE = 1e-5  # float32 rounding of x +- eps
ZERO_GRADIENT_WARNING = 0.01  # share of samples with an exactly zero input gradient worth a warning
DEFAULT_OPTIONS = EvalConfig()  # the config's defaults: a folded, channels_last copy


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
    norms: list[torch.Tensor] = field(default_factory=list)  # minimum-norm attacks: per-sample norms

    def norm_array(self) -> np.ndarray:
        return torch.cat(self.norms).numpy() if self.norms else np.zeros(0)

    def to_dict(self) -> dict[str, Any]:
        entry = {"name": self.name, "label": self.label, "params": self.params, **self.score.to_dict()}
        found = self.norm_array()
        found = found[np.isfinite(found) & (found > 0)]
        if self.norms:
            entry["median_norm"] = float(np.median(found)) if found.size else None
        return entry


@dataclass
class EvalReport:
    benign: Score
    attacks: list[AttackResult]
    worst_case: Score
    per_sample: dict[str, np.ndarray]
    warnings: list[str]

    def accuracies(self) -> dict[str, float]:
        """{"benign": ..., <attack label>: ...}: the metrics training tracks."""
        return {"benign": self.benign.accuracy, **{a.label: a.score.accuracy for a in self.attacks}}

    def to_dict(self) -> dict[str, Any]:
        return {
            "benign": self.benign.to_dict(),
            "attacks": [a.to_dict() for a in self.attacks],
            "worst_case": self.worst_case.to_dict(),
            "warnings": self.warnings,
        }


class NormalizedInput(nn.Module):
    """The model as a function of its normalized input z = (x - mean) / std."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.mean, self.std = model.normalize.mean, model.normalize.std

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z * self.std + self.mean)


def attack_space(model: nn.Module, x: torch.Tensor, spec) -> tuple[nn.Module, torch.Tensor, Box]:
    """(model, inputs, box) the attack works with: pixels, or normalized inputs in the SR-GKP code's way
    (clipped, like their ART ``clip_values``, to one range: the lowest and highest normalized value)."""
    if spec.space == "pixel":
        return model, x, PIXELS
    if not hasattr(model, "normalize"):
        raise AttackSanityError(f"attack '{spec.label}': space normalized needs the model's Normalize module")
    mean, std = model.normalize.mean, model.normalize.std
    box = (
        Box(float(((0 - mean) / std).min()), float(((1 - mean) / std).max())) if spec.clip else Box(-math.inf, math.inf)
    )
    return NormalizedInput(model), (x - mean) / std, box


def check_adversarial(x_adv: torch.Tensor, x: torch.Tensor, params: Any, bounded: bool, box: Box, label: str) -> None:
    if x_adv.shape != x.shape:
        raise AttackSanityError(f"attack '{label}' returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackSanityError(f"attack '{label}' produced NaN or infinite pixels")
    if (x_adv < box.lower - BOUND_TOLERANCE).any() or (x_adv > box.upper + BOUND_TOLERANCE).any():
        raise AttackSanityError(f"attack '{label}' left the image range [{box.lower}, {box.upper}]")
    if bounded:
        size = lp_norm(x_adv - x, params.norm)
        if size.max() > params.eps + BOUND_TOLERANCE:
            raise AttackSanityError(
                f"attack '{label}' moved an image {size.max().item():.6f} in {params.norm}, "
                f"beyond its eps {params.eps:.6f}"
            )


def _timed(device: torch.device, start: float) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _finite_logits(logits: torch.Tensor, when: str) -> torch.Tensor:
    if not torch.isfinite(logits).all():
        raise AttackSanityError(
            f"the model gave NaN or infinite logits {when}: check the checkpoint's weights and the inputs' range"
        )
    return logits


def _require_eval_mode(model: nn.Module) -> None:
    if any(m.training for m in model.modules()):
        raise AttackSanityError("the model left eval mode during evaluation (BatchNorm statistics would change)")


def _attack_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    predictions: torch.Tensor,
    spec,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Run one attack on one batch; returns the per-sample robust flags, a minimum-norm attack's
    per-sample norms (else None) and the seconds it took."""
    attack = spec.attack
    target, inputs, box = attack_space(model, x, spec)
    labels = predictions if spec.labels == "predicted" else y
    start = time.perf_counter()
    x_adv = attack.run(target, inputs, labels, spec.params, generator, box)
    with torch.no_grad():
        correct = _finite_logits(target(x_adv), f"under attack '{spec.label}'").argmax(1) == y
    seconds = _timed(x.device, start)
    _require_eval_mode(model)
    minimum_norm = attack.kind == "minimum_norm"
    check_adversarial(x_adv, inputs, spec.params, not minimum_norm, box, spec.label)
    if not minimum_norm:
        return correct, None, seconds
    norms = torch.where(
        correct,
        torch.full_like(correct, math.inf, dtype=torch.float32),
        lp_norm(x_adv - inputs, spec.params.norm).float(),
    )
    if spec.params.eps is not None:
        correct = norms > spec.params.eps
    return correct, norms, seconds


def zero_gradient_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of samples whose cross-entropy input gradient is exactly zero (saturated or masked)."""
    grad = input_gradient(model, x, y)
    return (grad.flatten(1).abs().amax(dim=1) == 0).float().mean().item()


def masking_warnings(results: list[AttackResult], specs: Sequence, zero_share: float | None) -> list[str]:
    warnings = []
    if zero_share is not None and zero_share > ZERO_GRADIENT_WARNING:
        warnings.append(
            f"{100 * zero_share:.1f}% of the first batch's samples have an exactly zero cross-entropy "
            "input gradient: gradient attacks on the cross-entropy cannot move them (saturated softmax "
            "or gradient masking); check with apgd_t (DLR loss) or square"
        )
    threat = {s.label: (s.params.norm, s.params.eps, s.space) for s in specs}
    kinds = {s.label: s.attack.kind for s in specs}
    for query in (r for r in results if kinds[r.label] == "query"):
        gradient = [r for r in results if kinds[r.label] == "gradient" and threat[r.label] == threat[query.label]]
        if gradient and query.score.accuracy < min(r.score.accuracy for r in gradient):
            best = min(gradient, key=lambda r: r.score.accuracy)
            warnings.append(
                f"the gradient-free attack '{query.label}' ({100 * query.score.accuracy:.2f}%) beats every "
                f"gradient attack of the same threat model (best: '{best.label}', "
                f"{100 * best.score.accuracy:.2f}%): a sign of gradient masking"
            )
    for warning in warnings:
        log.warning(warning)
    return warnings


def evaluated_model(model: nn.Module, options: EvalConfig) -> nn.Module:
    """The model the evaluation classifies and attacks: ``model`` in eval mode, or, as ``options`` ask, an
    eval-mode copy with its BatchNorm layers folded into the convs (``gkp.mechanisms.engine.folding``) and its
    weights in channels_last memory format. Either is the same function up to float rounding. The copy's
    weights need no gradient (attacks take the input's only), so backward passes skip theirs, and a grouped
    conv in its dense form keeps its dense weight between passes."""
    model.eval()
    if not (options.fold_batchnorm or options.channels_last):
        return model
    evaluated = batchnorm_folded(model) if options.fold_batchnorm else copy.deepcopy(model)
    evaluated.requires_grad_(False)
    return evaluated.to(memory_format=torch.channels_last) if options.channels_last else evaluated


@dataclass(frozen=True)
class AttackOutcome:
    """What one attack gave on a whole split: per-sample robust flags, minimum-norm attacks' per-sample
    norms, and its seconds; what an interrupted evaluation keeps of each finished attack."""

    correct: np.ndarray
    norms: np.ndarray | None
    seconds: float


def evaluate(
    model: nn.Module,
    split,
    attack_specs: Sequence = (),
    *,
    batch_size: int,
    seed: int,
    description: str = "eval",
    options: EvalConfig = DEFAULT_OPTIONS,
    finished: Mapping[str, AttackOutcome] | None = None,
    on_finished: Callable[[str, AttackOutcome], None] | None = None,
) -> EvalReport:
    """Accuracy of ``model`` (put in eval mode) on ``split``, clean and under each ``AttackSpec`` of
    ``attack_specs``, computed on ``evaluated_model(model, options)``. Attacks run one after another over
    the whole split; each finished one is handed to ``on_finished``, and the attacks in ``finished`` (by
    label) are taken as given instead of run again, so an interrupted evaluation resumes per attack with
    the same results (each batch's attack randomness depends only on the seed, the label and the batch)."""
    model = evaluated_model(model, options)
    progress = tqdm(
        total=split.num_samples * (1 + len(attack_specs)),
        desc=description,
        unit="img",
        leave=False,
        disable=None if distributed.shard().rank == 0 else True,
    )
    benign_flags, benign_seconds, predictions, zero_share = _benign_pass(
        model, split, batch_size, attack_specs, progress
    )
    finished = dict(finished or {})
    results = []
    for spec in attack_specs:
        progress.set_postfix_str(spec.label)
        if spec.label not in finished:
            finished[spec.label] = _attack_pass(model, split, batch_size, spec, predictions, seed, progress)
            if on_finished is not None:
                on_finished(spec.label, finished[spec.label])
        else:
            progress.update(split.num_samples)
        results.append(_result(spec, finished[spec.label]))
    progress.close()
    per_sample = {"benign": benign_flags, **{r.label: finished[r.label].correct for r in results}}
    robust = per_sample["benign"].copy()
    for spec, result in zip(attack_specs, results, strict=True):
        if spec.params.eps is not None:  # a minimum-norm attack without eps bounds no threat model
            robust &= per_sample[result.label]
        if result.norms:
            per_sample[f"{result.label}_norm"] = result.norm_array()
    score = Score(int(benign_flags.sum()), len(benign_flags), benign_seconds)
    worst = Score(int(robust.sum()), len(robust), score.seconds + sum(r.score.seconds for r in results))
    return EvalReport(score, results, worst, per_sample, masking_warnings(results, attack_specs, zero_share))


def _benign_pass(
    model, split, batch_size: int, attack_specs, progress
) -> tuple[np.ndarray, float, dict[int, torch.Tensor], float | None]:
    """(per-sample correct flags, seconds, the predictions of each batch this process evaluates, the first
    batch's share of zero gradients)."""
    device = next(model.parameters()).device
    shard = distributed.shard()
    batches, predictions = [], {}
    for index, (x, y) in split.test_batches(batch_size, shard):
        start = time.perf_counter()
        with torch.no_grad():
            predicted = _finite_logits(model(x), "on clean images").argmax(1)
        seconds = _timed(device, start)
        zero_share = None
        if index == 0 and any(s.attack.kind == "gradient" for s in attack_specs):
            zero_share = zero_gradient_share(model, x, y)
        batches.append((index, ((predicted == y).cpu(), seconds, zero_share)))
        predictions[index] = predicted
        progress.update(len(y) * shard.size)
    flags, seconds, zero_shares = zip(*distributed.gather(batches), strict=True)
    return torch.cat(flags).numpy(), sum(seconds), predictions, zero_shares[0]


def _attack_pass(model, split, batch_size: int, spec, predictions, seed: int, progress) -> AttackOutcome:
    device = next(model.parameters()).device
    shard = distributed.shard()
    batches = []
    for index, (x, y) in split.test_batches(batch_size, shard):
        generator = torch.Generator(device=device)
        generator.manual_seed(derive_seed(seed, "attack", spec.label, index))
        correct, norms, seconds = _attack_batch(model, x, y, predictions[index], spec, generator)
        batches.append((index, (correct.cpu(), None if norms is None else norms.cpu(), seconds)))
        progress.update(len(y) * shard.size)
    flags, norms, seconds = zip(*distributed.gather(batches), strict=True)
    found = torch.cat(norms).numpy() if norms[0] is not None else None
    return AttackOutcome(torch.cat(flags).numpy(), found, sum(seconds))


def _result(spec, outcome: AttackOutcome) -> AttackResult:
    result = AttackResult(spec.name, spec.label, spec.settings())
    result.score.correct, result.score.total = int(outcome.correct.sum()), len(outcome.correct)
    result.score.seconds = outcome.seconds
    result.norms = [torch.from_numpy(outcome.norms)] if outcome.norms is not None else []
    return result
