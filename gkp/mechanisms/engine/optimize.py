"""A phase's optimizers: the parameter groups a recipe asks for, SGD (the default, and the ``sgd`` entry),
and the ``Optimization`` the loop steps: the phase's optimizers, one learning-rate schedule each, the
float16 gradient scaler and the gradient clip, saved and restored together on resume."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gkp.foundation.contracts import Phase, Recipe
from gkp.foundation.errors import ConfigError
from gkp.mechanisms.engine.device import amp_dtype
from gkp.mechanisms.engine.schedule import build_scheduler

MODEL_OPTIMIZER = "model"  # the name of a phase's one optimizer over the model


def parameter_groups(model: nn.Module, recipe: Recipe) -> list[dict[str, Any]]:
    """The model's parameters as torch parameter groups: those no ``recipe.param_groups`` entry matches
    (with the recipe's options), then one group per entry, in their order, with its options; each
    parameter in the first entry it matches. An entry that matches nothing is refused."""
    rest: list[nn.Parameter] = []
    matched: list[list[nn.Parameter]] = [[] for _ in recipe.param_groups]
    for name, parameter in model.named_parameters():
        index = next((i for i, g in enumerate(recipe.param_groups) if fnmatch.fnmatchcase(name, g.match)), None)
        (rest if index is None else matched[index]).append(parameter)
    groups = []
    for i, (group, parameters) in enumerate(zip(recipe.param_groups, matched, strict=True)):
        if not parameters:
            raise ConfigError(
                f"param_groups[{i}].match: {group.match!r} matches no parameter of the model (nor one an earlier "
                f"group took); parameter names look like {next(iter(dict(model.named_parameters())), 'none')}"
            )
        options = {key: getattr(group, key) for key in ("lr", "weight_decay") if getattr(group, key) is not None}
        groups.append({"params": parameters, **options})
    return [{"params": rest}, *groups] if rest else groups


def sgd(groups: list[dict[str, Any]], recipe: Recipe, params: Any = None) -> torch.optim.Optimizer:
    """SGD with the recipe's learning rate, momentum, weight decay and Nesterov switch."""
    return torch.optim.SGD(
        groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, nesterov=recipe.nesterov
    )


def model_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer (SGD unless it names another) over the model's parameter groups."""
    groups = parameter_groups(model, recipe)
    if recipe.optimizer is None:
        return sgd(groups, recipe)
    return recipe.optimizer.entry.build(groups, recipe, recipe.optimizer.params)


def gradient_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """float16 autocast needs its loss scaled against underflowing gradients; bfloat16 and float32 do not."""
    return torch.amp.GradScaler(device.type) if amp_dtype(amp, device) == torch.float16 else None


@dataclass
class Optimization:
    """One phase's optimizers by name, a learning-rate schedule for each (the phase recipe's, stepped once
    per epoch), the float16 gradient scaler (None otherwise, and for a phase with a step of its own) and
    the recipe's gradient clip."""

    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    scaler: torch.amp.GradScaler | None
    clip_grad_norm: float | None

    @classmethod
    def start(cls, model: nn.Module, phase: Phase, amp: str, device: torch.device) -> Optimization:
        recipe = phase.recipe
        if phase.optimizers is not None:
            optimizers = dict(phase.optimizers(model, recipe))
        else:
            optimizers = {MODEL_OPTIMIZER: model_optimizer(model, recipe)}
        schedulers = {name: build_scheduler(recipe, optimizer) for name, optimizer in optimizers.items()}
        scaler = gradient_scaler(amp, device) if phase.step is None else None
        return cls(optimizers, schedulers, scaler, recipe.clip_grad_norm)

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter the optimizers hold, once, in their order."""
        seen: set[int] = set()
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    if id(parameter) not in seen:
                        seen.add(id(parameter))
                        yield parameter

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def clip(self) -> None:
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(self.parameters()), self.clip_grad_norm)

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            if self.scaler is not None:
                self.scaler.step(optimizer)
            else:
                optimizer.step()
        if self.scaler is not None:
            self.scaler.update()

    def unscale(self) -> None:
        if self.scaler is not None:
            for optimizer in self.optimizers.values():
                self.scaler.unscale_(optimizer)

    def end_epoch(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()

    def state(self) -> dict[str, Any]:
        return {
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
            "schedulers": {name: scheduler.state_dict() for name, scheduler in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def restore(self, state: dict[str, Any]) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])

    @property
    def lr(self) -> float:
        """The learning rate of the first optimizer's first group, the one the metrics report and
        ``after_step`` gets: the recipe's, unless every parameter has a group of its own."""
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]
