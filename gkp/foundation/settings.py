"""The sections of an experiment config as frozen dataclasses, with each key's default, check and doc.

Plain data: the engine reads its sections (``TrainConfig``, ``EvalConfig``) without loading any
registry; ``gkp.application.config`` builds them from YAML and checks them against the registries. The defaults
follow the SR-GKP paper's CIFAR-10 recipe (train 300 epochs at lr 0.1, fine-tune 300 epochs at lr 0.01,
both step-decayed by 10x every 100 epochs, batch 64, weight decay 5e-4). ``docs/config.md`` is
generated from these docs (``python -m gkp.application.config_docs``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from gkp.foundation.contracts import Attack, Choice, ParamGroup
from gkp.foundation.schema import at_least, in_open_unit_interval, in_unit_interval, option, positive, to_plain


def device_name_check(value: str) -> str | None:
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        return None
    return f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}"


def _fraction_below_one(value: float) -> str | None:
    return None if 0 <= value < 1 else f"must be in [0, 1), got {value}"


@dataclass(frozen=True)
class ModelConfig:
    arch: str | None = option(
        None, doc="a registered architecture (see Models below); optional with model.checkpoint, which names its own"
    )
    num_classes: int | None = option(None, check=at_least(2), doc="output classes; default: the dataset's")
    checkpoint: str | None = option(
        None,
        doc="start from this checkpoint instead of training (drop train from stages): a file, or zoo:NAME, a "
        "released checkpoint fetched and converted once (gkp zoo lists them)",
    )
    args: dict = option(
        default_factory=dict, doc="extra constructor arguments, e.g. {stem: small} for ResNet-50 on 64x64"
    )


@dataclass(frozen=True)
class DataConfig:
    name: str = option("cifar10", doc="a registered dataset (see Datasets below)")
    root: str = option("data", doc="folder of cifar10 / cifar100 / imagefolder data")
    path: str | None = option(None, doc="npz file to evaluate on (evaluation only)")
    train_path: str | None = option(None, doc="npz training file")
    test_path: str | None = option(None, doc="npz test file")
    download: bool = option(False, doc="let torchvision download CIFAR when it is missing")
    batch_size: int = option(64, check=at_least(1), doc="training and fine-tuning batch size")
    eval_batch_size: int = option(256, check=at_least(1), doc="evaluation and attack batch size")
    val_fraction: float = option(
        0.0, check=_fraction_below_one, doc="part of the training set held out (seeded) for select_on: val"
    )
    split_seed: int = option(0, doc="seed of the validation split and of size subsets")
    train_size: int | None = option(
        None, check=at_least(1), doc="use a subset of this many (data.subset says which; synthetic: how many to make)"
    )
    test_size: int | None = option(
        None, check=at_least(1), doc="use a subset of this many (data.subset says which; synthetic: how many to make)"
    )
    subset: Literal["seeded", "first"] = option(
        "seeded",
        doc="which images train_size / test_size keep: a random subset (seeded by split_seed), or the first N, "
        "as the paper-mode checks and most published figures take the test set",
    )
    image_size: int | None = option(
        None, check=at_least(8), doc="image side of imagefolder (default 224) and synthetic (default 32) data"
    )
    augment: Literal["auto", "crop_flip", "crop", "flip", "none"] = option(
        "auto", doc="training augmentation; auto: the dataset's usual (digits: crop only)"
    )
    crop_padding: int | None = option(
        None,
        check=at_least(0),
        doc="zero border of the random crops; default a side/8 border: 4 at 32x32 (a training section's "
        "crop_padding overrides it)",
        default_text="side / 8",
    )
    num_workers: int = option(4, check=at_least(0), doc="loader processes for imagefolder data")
    mean: tuple[float, ...] | None = option(None, doc="normalisation mean of newly built models (default: the data's)")
    std: tuple[float, ...] | None = option(None, doc="normalisation std of newly built models (default: the data's)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(300, check=at_least(1), doc="epochs")
    lr: float = option(0.1, check=positive, doc="initial learning rate")
    optimizer: Choice | None = option(
        None,
        doc="sgd, or adamw, or a mapping with the optimizer's own keys, e.g. {name: adamw, betas: [0.9, 0.99]} "
        "(see Optimizers below)",
        default_text="{name: sgd}",
    )
    momentum: float = option(0.9, check=in_unit_interval, doc="SGD momentum")
    weight_decay: float = option(5e-4, check=at_least(0), doc="weight decay")
    nesterov: bool = option(False, doc="Nesterov momentum (SGD)")
    param_groups: tuple[ParamGroup, ...] = option(
        (),
        doc="per-parameter options, first match wins, e.g. [{match: '*.bn*', weight_decay: 0}] "
        "(keys: match, lr, weight_decay)",
    )
    clip_grad_norm: float | None = option(
        None, check=positive, doc="clip the gradients' global L2 norm to this before each step (CC: 1)"
    )
    crop_padding: int | None = option(
        None,
        check=at_least(0),
        doc="zero border of the random crops while this section trains; default data.crop_padding (CC's fine-tune: 8)",
        default_text="data's",
    )
    schedule: Literal["constant", "step", "multistep", "cosine"] = option(
        "step", doc="learning-rate schedule, stepped once per epoch"
    )
    step_size: int = option(100, check=at_least(1), doc="epochs between decays (schedule: step)")
    milestones: tuple[int, ...] = option((), doc="decay epochs (schedule: multistep)")
    gamma: float = option(0.1, check=positive, doc="decay factor (step, multistep)")
    label_smoothing: float = option(0.0, check=_fraction_below_one, doc="cross-entropy label smoothing")
    bn_sparsity: float = option(
        0.0,
        check=at_least(0),
        doc="network slimming's L1 penalty on every BatchNorm scale (Liu et al.: 1e-5 for ResNets, 1e-4 for VGG)",
    )
    adversarial: Choice | None = option(
        None,
        doc="adversarial training, e.g. {method: pgd, eps: 8/255, steps: 10} (see Losses below); default: none",
    )
    distill: Choice | None = option(
        None,
        doc="distillation from the dense model, e.g. {temperature: 2, weight: 1} (see Losses below); "
        "fine-tuning only; default: none",
    )
    amp: Literal["auto", "off", "fp16", "bf16"] = option(
        "auto", doc="mixed precision; auto: bfloat16 on CUDA (float16 where bf16 is missing), off on CPU"
    )
    channels_last: Literal["auto", "on", "off"] = option(
        "auto", doc="channels_last memory format; auto: on for CUDA and CPU"
    )
    sync_batchnorm: bool = option(
        False,
        doc="a run of several processes (torchrun): BatchNorm normalises with the whole global batch's statistics, "
        "so results equal one process's; off: each process normalises its own part (as most CIFAR code does)",
    )
    eval_every: int = option(1, check=at_least(0), doc="evaluate every N epochs (0: the final epoch only)")
    eval_attacks: tuple[str, ...] = option((), doc="labels of attacks (from attacks) to run at each evaluation")
    select_on: Literal["test", "val"] = option(
        "test", doc="split the best epochs are chosen on: test (the paper's protocol) or val"
    )
    snapshot_epochs: tuple[int, ...] = option(
        (),
        doc="epochs after which the weights are also kept in snapshots/ (a method that reads snapshots adds its own)",
    )

    @property
    def loss(self) -> Choice | None:
        """The loss a key of this section chose (adversarial or distill); None: cross-entropy."""
        return self.adversarial or self.distill


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    lr: float = option(0.01, check=positive, doc="initial learning rate")


@dataclass(frozen=True)
class CalibrationConfig:
    batches: int = option(
        5, check=at_least(1), doc="training batches the data-dependent methods read (seeded, unaugmented)"
    )
    batch_size: int = option(128, check=at_least(1), doc="images per calibration batch")


@dataclass(frozen=True)
class PruneConfig:
    method: str = option(doc="a registered pruning method (see Pruning methods below)")
    rate: float = option(
        0.4375,
        check=in_open_unit_interval,
        doc="fraction removed in each pruned layer (global filter methods: of all prunable channels)",
    )
    rates: dict = option(
        default_factory=dict,
        doc="filter methods: per-layer or per-stage rates in [0, 1) by module-name prefix, e.g. {layer1: 0.6, "
        "layer2.3: 0}; the longest matching prefix wins, rate covers the rest",
    )
    target_macs: float | None = option(
        None,
        check=in_open_unit_interval,
        doc="filter methods and cc: keep this fraction of the dense MACs instead of a rate (solved within 0.5%; "
        "cc: in its own count)",
    )
    calibration: CalibrationConfig = option(default_factory=CalibrationConfig, doc="data-dependent methods' images")
    during: Literal["train", "finetune"] | None = option(
        None,
        doc="training-time methods: train (from scratch with the train recipe) or finetune (from the dense "
        "model with the finetune recipe), inside the prune stage; default: the method's own",
        default_text="the method's",
    )
    params: Any = option(default_factory=dict, doc="the method's own parameters (see docs/methods.md)")


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the suite: the registered ``attack`` (``gkp.foundation.contracts.Attack``), its ``label`` and
    ``params``. ``space: normalized`` attacks the normalized input (eps in its units, clipped to the
    normalized image range when ``clip``), as the SR-GKP code did; ``labels: predicted`` attacks the model's
    own predictions (their FGSM)."""

    attack: Attack = option(doc="a registered attack, by name (see Attacks below)", default_text="(required)")
    label: str = option(
        doc="its name in results; default: the attack's name, or pgd_1, pgd_2, ... when a name repeats",
        default_text="the name",
    )
    params: Any = option(doc="the attack's own parameters, as keys of the entry (see Attacks below)")
    space: Literal["pixel", "normalized"] = option(
        "pixel", doc="pixel: eps in [0, 1] pixel units; normalized: in normalized-input units (the SR-GKP code's)"
    )
    labels: Literal["true", "predicted"] = option(
        "true", doc="attack the true labels, or the model's own predictions (the SR-GKP code's FGSM)"
    )
    clip: bool = option(True, doc="space normalized: clip to the normalized image range")

    @property
    def name(self) -> str:
        return self.attack.name

    @property
    def passes(self) -> int:
        """Forward-pass equivalents per image, for planning (sweep estimates, the form timing's budget): 3
        per gradient step (restarts and targets included), one per query of a query attack, plus the final
        prediction."""
        if self.attack.kind == "query":
            return getattr(self.params, "queries", 1) + 1
        runs = getattr(self.params, "restarts", 1) * getattr(self.params, "targets", 1)
        return 3 * getattr(self.params, "steps", 1) * runs + 1

    def settings(self) -> dict[str, Any]:
        """The attack's resolved parameters with its mode, as results.json reports them."""
        return {**to_plain(self.params), "space": self.space, "labels": self.labels, "clip": self.clip}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, **self.settings()}


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = option(
        ("final",),
        doc="models to evaluate: final, dense, pruned, best_<metric> (fine-tuning's best epochs), "
        "dense_best_<metric> (training's); the first is the main one",
    )
    fold_batchnorm: bool = option(
        True, doc="evaluate and attack a copy with each BatchNorm folded into its conv (same function, faster)"
    )
    channels_last: bool = option(
        True, doc="evaluate and attack a copy in channels_last memory format (same function, faster on CPU)"
    )
