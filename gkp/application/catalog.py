"""Every registry, assembled in one place above the mechanisms: the models, datasets, pruning methods,
attacks, attack suites and adversarial-training objectives a config can name. Plans, surgery, layers,
the engine and the evaluation import none of this; the config, the stages and the command line look
names up here. Each entry fulfils its contract in
``gkp.foundation.contracts``, which ``tests/test_contracts.py`` checks for every entry of every registry.

To add an entry: write it (``docs/extending.md``) and add one line to its registry below.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from attacks import apgd_ce, apgd_t, cw_l2, fab_t, fgsm, fmn, pgd, pgd_kl, square
from baselines import (
    chip,
    fpgm,
    fpgm_soft,
    group_norm,
    hrank,
    hrank_iterative,
    l1,
    l2,
    lamp,
    random,
    rap_admm,
    sfp,
    slimming,
    taylor,
    thinet,
)
from gkp.entries.datasets import sources
from gkp.entries.grouped_kernels import gkp_greedy, gkp_l2, gkp_least_smooth, gkp_random, srgkp, tmigkp
from gkp.entries.losses import adversarial
from gkp.entries.models import bottleneck_resnet, resnet, vgg16
from gkp.entries.suites import suites
from gkp.entries.suites.suites import Suite
from gkp.foundation.contracts import AdversarialTraining, ArchEntry, Attack, Dataset, ModelSpec, PruningMethod
from gkp.foundation.errors import ConfigError
from gkp.foundation.registry import Registry, did_you_mean
from gkp.mechanisms.data.bundle import DataBundle

# Network slimming's sparsity training (``train.bn_sparsity``), a training hook the stages add.
BatchNormSparsity = slimming.BatchNormSparsity

MODELS: Registry[ArchEntry] = Registry.of(
    "model arch", (*resnet.ENTRIES, vgg16.ENTRY, bottleneck_resnet.RESNET50, bottleneck_resnet.RESNET101)
)

DATASETS: Registry[Dataset] = Registry.of(
    "dataset", (sources.CIFAR10, sources.CIFAR100, sources.IMAGEFOLDER, sources.NPZ, sources.DIGITS, sources.SYNTHETIC)
)

PRUNING_METHODS: Registry[PruningMethod] = Registry.of(
    "pruning method",
    (
        # grouped kernel pruning (gkp/entries/grouped_kernels/)
        srgkp.METHOD,
        tmigkp.METHOD,
        gkp_greedy.METHOD,
        gkp_least_smooth.METHOD,
        gkp_l2.METHOD,
        gkp_random.METHOD,
        # filter pruning (baselines/)
        l1.METHOD,
        l1.L1_A,
        l1.L1_B,
        l2.METHOD,
        fpgm.METHOD,
        slimming.METHOD,
        taylor.METHOD,
        hrank.METHOD,
        chip.METHOD,
        thinet.METHOD,
        lamp.METHOD,
        group_norm.METHOD,
        random.METHOD,
        # filter pruning during training (baselines/)
        sfp.METHOD,
        fpgm_soft.METHOD,
        rap_admm.METHOD,
        hrank_iterative.METHOD,
    ),
)

SUITES: Registry[Suite] = Registry.of("suite", (suites.PAPER_CIFAR, suites.PAPER_IMAGENET, suites.STRONG))

ATTACKS: Registry[Attack] = Registry.of(
    "attack",
    (
        fgsm.ATTACK,
        pgd.ATTACK,
        apgd_ce.ATTACK,
        apgd_t.ATTACK,
        fab_t.ATTACK,
        square.ATTACK,
        cw_l2.ATTACK,
        fmn.ATTACK,
        pgd_kl.ATTACK,
    ),
)

ADVERSARIAL_TRAINING: Registry[AdversarialTraining] = Registry.of(
    "adversarial training", (adversarial.PGD, adversarial.TRADES, adversarial.FGSM_RS)
)


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
