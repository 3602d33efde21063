"""Model registry: ``build_model(arch, **args)`` for every architecture the configs can name.

Each entry is a constructor plus the input side it is meant for. A built model carries its
``ModelSpec`` (arch, constructor args, pruning plan) so checkpoints can rebuild it without pickling
code. To add a model: write its ``nn.Module`` (with a ``Normalize`` first and a
``filter_pruning_groups()`` dependency table), then add one ``ArchEntry`` line below.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import nn

from gkp.errors import ConfigError
from gkp.models.cifar_resnet import CifarResNet
from gkp.models.imagenet_resnet import BottleneckResNet
from gkp.models.vgg import VGG
from gkp.registry import Registry, did_you_mean


@dataclass(frozen=True)
class ArchEntry:
    build: Callable[..., nn.Module]
    input_size: int
    description: str


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a model: registry name, constructor args and (for pruned models) the plan."""

    arch: str
    args: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None


def _cifar_resnet(depth: int) -> ArchEntry:
    return ArchEntry(partial(CifarResNet, depth), 32, f"CIFAR ResNet-{depth}, option-A shortcuts")


MODELS: Registry[ArchEntry] = Registry(
    "model arch",
    {
        "resnet8": ArchEntry(partial(CifarResNet, 8), 32, "CIFAR ResNet-8: one block per stage, for smoke tests"),
        **{f"resnet{d}": _cifar_resnet(d) for d in (20, 32, 44, 56, 110)},
        "vgg16": ArchEntry(VGG, 32, "VGG-16 with BatchNorm for 32x32 inputs"),
        "resnet50": ArchEntry(partial(BottleneckResNet, (3, 4, 6, 3)), 224, "bottleneck ResNet-50 (torchvision)"),
        "resnet101": ArchEntry(partial(BottleneckResNet, (3, 4, 23, 3)), 224, "bottleneck ResNet-101 (torchvision)"),
    },
)


def arch_arg_names(arch: str) -> list[str]:
    params = inspect.signature(MODELS.get(arch).build).parameters
    return [name for name, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]


def check_arch_args(arch: str, args: dict[str, Any], key_path: str = "model.args") -> None:
    """Fail early, naming the valid arguments, when ``args`` has a key the constructor does not take."""
    valid = arch_arg_names(arch)
    for name in args:
        if name not in valid:
            raise ConfigError(
                f"{key_path}.{name}: '{arch}' takes no argument '{name}'"
                f"{did_you_mean(name, valid)}; valid arguments: {', '.join(valid)}"
            )


def build_model(arch: str, **args: Any) -> nn.Module:
    check_arch_args(arch, args)
    model = MODELS.get(arch, "model.arch").build(**args)
    model.gkp_spec = ModelSpec(arch, dict(args))
    return model


def model_spec(model: nn.Module) -> ModelSpec:
    spec = getattr(model, "gkp_spec", None)
    if spec is None:
        raise TypeError("this model was not built by gkp.models.build_model, so it has no ModelSpec")
    return spec
