"""Cross-entropy of the clean batch, with the section's label smoothing: the default loss of every
training section."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from gkp.foundation.contracts import Loss, Objective, StepContext


@dataclass(frozen=True)
class CrossEntropyParams:
    """Cross-entropy has no parameters of its own (label smoothing is the section's ``label_smoothing``)."""


def cross_entropy(params: CrossEntropyParams, label_smoothing: float = 0.0, attack=None) -> Objective:
    def objective(step: StepContext):
        logits = step.model(step.x)
        return F.cross_entropy(logits, step.y, label_smoothing=label_smoothing), logits

    return objective


ENTRY = Loss("cross_entropy", CrossEntropyParams, cross_entropy, "cross-entropy of the clean batch")
