"""Knowledge distillation from the dense model (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
Network", 2015): ``CE(s, y) + weight * KL(softmax(t / T) || softmax(s / T))``, the KL summed over classes
and averaged over the batch, ``s`` the student's logits and ``t`` the teacher's: the dense model (the
``train`` stage's, or ``model.checkpoint``) in eval mode, without gradients. LRF's fine-tuning uses it at
T = 2 with weight 1 and no T^2 factor (``shared/specs/training_time.md``, section 2.9); Hinton's scaling
is ``weight: T^2``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gkp.foundation.contracts import Loss, Objective, StepContext
from gkp.foundation.schema import at_least, option, positive


@dataclass(frozen=True)
class DistillParams:
    temperature: float = option(2.0, check=positive, doc="softmax temperature T of both sides of the KL")
    weight: float = option(1.0, check=at_least(0), doc="weight of the KL term (Hinton's scaling: T^2)")


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, params: DistillParams, label_smoothing: float
) -> torch.Tensor:
    """CE(student, y) + weight * batch mean of KL(softmax(teacher / T) || softmax(student / T))."""
    temperature = params.temperature
    soft_targets = F.softmax(teacher.float() / temperature, dim=1)
    kl = F.kl_div(F.log_softmax(student.float() / temperature, dim=1), soft_targets, reduction="batchmean")
    return F.cross_entropy(student, y, label_smoothing=label_smoothing) + params.weight * kl


def distill_objective(params: DistillParams, label_smoothing: float = 0.0, attack=None) -> Objective:
    def objective(step: StepContext):
        with torch.no_grad():
            teacher = step.teacher(step.x)
        logits = step.model(step.x)
        return distillation_loss(logits, teacher, step.y, params, label_smoothing), logits

    return objective


ENTRY = Loss(
    "distill",
    DistillParams,
    distill_objective,
    "cross-entropy plus KL at temperature T against the dense model as teacher (Hinton et al., 2015)",
    key="distill",
    teacher=True,
)
