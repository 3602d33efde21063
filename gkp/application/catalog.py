"""Every registry: the models, datasets, pruning methods, attacks, attack suites, losses and optimizers a
config can name, each found by name in its packages (``gkp.foundation.registry``: the entry ``pgd`` of
``ATTACKS`` is ``attacks/pgd.py``'s ``ENTRY``) and imported only when named. Plans, surgery, layers, the
engine and the evaluation import none of this; the config, the pipeline and the command line look names
up here. Each entry fulfils its contract in ``gkp.foundation.contracts``, which
``tests/test_contracts.py`` checks for every entry of every registry.

To add an entry: write its file in one of its registry's packages (``docs/extending.md``).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from gkp.foundation.contracts import (
    ArchEntry,
    Attack,
    Dataset,
    Importer,
    Loss,
    ModelSpec,
    Optimizer,
    PruningMethod,
    Suite,
)
from gkp.foundation.errors import ConfigError
from gkp.foundation.registry import Registry, did_you_mean
from gkp.mechanisms.data.bundle import DataBundle

MODELS: Registry[ArchEntry] = Registry("model arch", ArchEntry, ("gkp.entries.models",))
DATASETS: Registry[Dataset] = Registry("dataset", Dataset, ("gkp.entries.datasets",))
PRUNING_METHODS: Registry[PruningMethod] = Registry(
    "pruning method", PruningMethod, ("gkp.entries.grouped_kernels", "baselines")
)
ATTACKS: Registry[Attack] = Registry("attack", Attack, ("attacks",))
SUITES: Registry[Suite] = Registry("suite", Suite, ("gkp.entries.suites",))
LOSSES: Registry[Loss] = Registry("loss", Loss, ("gkp.entries.losses",))
OPTIMIZERS: Registry[Optimizer] = Registry("optimizer", Optimizer, ("gkp.entries.optimizers",))
# The checkpoint formats the zoo converts (the format of each entry of gkp/application/checkpoints/MANIFEST).
IMPORTERS: Registry[Importer] = Registry("checkpoint format", Importer, ("gkp.application.checkpoints.importers",))


# ------------------------------------------------------------------------------------- models


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
    """A freshly initialised ``arch`` carrying its ``ModelSpec`` (so checkpoints can rebuild it)."""
    check_arch_args(arch, args)
    model = MODELS.get(arch, "model.arch").build(**args)
    model.gkp_spec = ModelSpec(arch, dict(args))
    return model


def model_for_data(arch: str, data: DataBundle, num_classes: int | None, args: dict[str, Any]) -> nn.Module:
    """A new ``arch`` sized and normalised for ``data``: its class count (unless ``num_classes``), its
    mean and std, and the arguments the arch derives from the image side; ``args`` override all."""
    defaults = {
        "num_classes": num_classes or data.num_classes,
        "mean": list(data.mean),
        "std": list(data.std),
        **MODELS.get(arch).data_args(data.image_size),
    }
    return build_model(arch, **{**defaults, **args})


# ------------------------------------------------------------------------------------- data


def load_data(cfg, device: torch.device, num_classes: int | None = None) -> DataBundle:
    """The splits of ``cfg`` (a ``DataConfig``) on ``device``; ``num_classes`` sizes generated data."""
    bundle = DATASETS.get(cfg.name, "data.name").load(cfg, device, num_classes)
    if cfg.mean is not None:
        bundle.mean, bundle.std = tuple(cfg.mean), tuple(cfg.std)
    return bundle
