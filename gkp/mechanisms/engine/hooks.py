"""Several ``TrainingHooks`` as one: a training-time method's hooks and an option's (network slimming's
sparsity term) run side by side, each at every point of the loop, in the order given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gkp.foundation.contracts import TrainingHooks


class HookChain(TrainingHooks):
    def __init__(self, hooks: Sequence[TrainingHooks]):
        self.hooks = list(hooks)

    def start_phase(self, model: nn.Module, phase: int) -> None:
        for hook in self.hooks:
            hook.start_phase(model, phase)

    def start_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        for hook in self.hooks:
            hook.start_epoch(model, phase, epoch)

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        terms = [term for term in (hook.regularizer(model) for hook in self.hooks) if term is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def after_backward(self, model: nn.Module) -> None:
        for hook in self.hooks:
            hook.after_backward(model)

    def after_step(self, model: nn.Module) -> None:
        for hook in self.hooks:
            hook.after_step(model)

    def end_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        for hook in self.hooks:
            hook.end_epoch(model, phase, epoch)

    def state_dict(self) -> dict[str, Any]:
        return {str(i): hook.state_dict() for i, hook in enumerate(self.hooks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, hook in enumerate(self.hooks):
            hook.load_state_dict(state.get(str(i), {}))
