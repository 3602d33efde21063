"""Hooks of the training loop that are not a method's: several ``TrainingHooks`` as one (a training-time
method's and an option's run side by side, each at every point of the loop, in the order given), and the
options' own hooks: ``BatchNormSparsity``, network slimming's sparsity training (``train.bn_sparsity``)."""

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

    def after_step(self, model: nn.Module, lr: float, step: int) -> None:
        for hook in self.hooks:
            hook.after_step(model, lr, step)

    def end_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        for hook in self.hooks:
            hook.end_epoch(model, phase, epoch)

    def state_dict(self) -> dict[str, Any]:
        return {str(i): hook.state_dict() for i, hook in enumerate(self.hooks)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        for i, hook in enumerate(self.hooks):
            hook.load_state_dict(state.get(str(i), {}), model)


class BatchNormSparsity(TrainingHooks):
    """Network slimming's sparsity training (Liu et al., ICCV 2017): after each backward pass, add the
    subgradient of ``strength * |gamma|`` to the gradient of every BatchNorm scale."""

    def __init__(self, strength: float):
        self.strength = strength

    def after_backward(self, model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and module.weight is not None and module.weight.grad is not None:
                module.weight.grad.add_(torch.sign(module.weight.detach()), alpha=self.strength)
