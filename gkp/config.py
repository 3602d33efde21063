"""Experiment configs: YAML into frozen dataclasses, validated before any compute.

A config file holds only what differs from the defaults below, which follow the SR-GKP paper's CIFAR-10
recipe (train 300 epochs at lr 0.1, fine-tune 300 epochs at lr 0.01, both step-decayed by 10x every
100 epochs, batch 64, weight decay 5e-4). ``load_experiment(path, overrides)`` reads the file, applies
``--set key.path=value`` overrides, and returns an ``Experiment``; every problem raises ``ConfigError``
naming the key path and the valid choices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from attacks import ATTACKS
from gkp.errors import ConfigError
from gkp.models import MODELS, check_arch_args
from gkp.pruning.registry import PRUNING_METHODS
from gkp.registry import did_you_mean
from gkp.schema import at_least, build, in_open_unit_interval, in_unit_interval, option, positive, to_plain
from gkp.suites import expand_suites

STAGES = ("train", "prune", "finetune", "eval")
Stage = Literal["train", "prune", "finetune", "eval"]
DATASET_NAMES = ("cifar10", "cifar100", "imagefolder", "npz", "digits", "synthetic")


def _device_check(value: str) -> str | None:
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        return None
    return f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}"


def _fraction_below_one(value: float) -> str | None:
    return None if 0 <= value < 1 else f"must be in [0, 1), got {value}"


@dataclass(frozen=True)
class ModelConfig:
    arch: str | None = option(
        None,
        doc="resnet8/20/32/44/56/110, vgg16, resnet50, resnet101; optional with model.checkpoint, which names its own",
    )
    num_classes: int | None = option(None, check=at_least(2), doc="default: the dataset's class count")
    checkpoint: str | None = option(None, doc="start from this checkpoint instead of training")
    args: dict = option(default_factory=dict, doc="extra constructor arguments (e.g. stem: small)")


@dataclass(frozen=True)
class DataConfig:
    name: Literal["cifar10", "cifar100", "imagefolder", "npz", "digits", "synthetic"] = option("cifar10")
    root: str = option("data", doc="folder of cifar10/cifar100/imagefolder data")
    path: str | None = option(None, doc="npz file to evaluate on (evaluation only)")
    train_path: str | None = option(None, doc="npz training file")
    test_path: str | None = option(None, doc="npz test file")
    download: bool = option(False, doc="let torchvision download CIFAR if it is missing")
    batch_size: int = option(64, check=at_least(1), doc="training and fine-tuning batch size")
    eval_batch_size: int = option(256, check=at_least(1), doc="evaluation and attack batch size")
    val_fraction: float = option(0.0, check=_fraction_below_one, doc="held out of the training set for select_on: val")
    split_seed: int = option(0, doc="seed of the validation split and of size subsets")
    train_size: int | None = option(None, check=at_least(1), doc="use a seeded subset of this many")
    test_size: int | None = option(None, check=at_least(1), doc="use a seeded subset of this many")
    image_size: int | None = option(None, check=at_least(8), doc="imagefolder/synthetic side length")
    augment: Literal["auto", "crop_flip", "crop", "flip", "none"] = option("auto")
    num_workers: int = option(4, check=at_least(0), doc="imagefolder loader processes")
    mean: tuple[float, ...] | None = option(None, doc="normalisation mean (default: the dataset's)")
    std: tuple[float, ...] | None = option(None, doc="normalisation std (default: the dataset's)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(300, check=at_least(1))
    lr: float = option(0.1, check=positive)
    momentum: float = option(0.9, check=in_unit_interval)
    weight_decay: float = option(5e-4, check=at_least(0))
    nesterov: bool = option(False)
    schedule: Literal["constant", "step", "multistep", "cosine"] = option("step")
    step_size: int = option(100, check=at_least(1), doc="epochs between decays (schedule: step)")
    milestones: tuple[int, ...] = option((), doc="decay epochs (schedule: multistep)")
    gamma: float = option(0.1, check=positive, doc="decay factor (step, multistep)")
    label_smoothing: float = option(0.0, check=_fraction_below_one)
    bn_sparsity: float = option(0.0, check=at_least(0), doc="L1 penalty on BatchNorm scales (slimming: 1e-5 to 1e-4)")
    amp: Literal["auto", "off", "fp16", "bf16"] = option("auto", doc="auto: bf16 on CUDA, off on CPU")
    channels_last: Literal["auto", "on", "off"] = option("auto", doc="auto: on for CUDA")
    eval_every: int = option(1, check=at_least(0), doc="evaluate every N epochs (0: final epoch only)")
    eval_attacks: tuple[str, ...] = option((), doc="labels of attacks to run at each evaluation")
    select_on: Literal["test", "val"] = option("test", doc="split the best epochs are chosen on")
    snapshot_epochs: tuple[int, ...] = option((), doc="epochs after which to save weight snapshots")


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    lr: float = option(0.01, check=positive)


@dataclass(frozen=True)
class CalibrationConfig:
    batches: int = option(5, check=at_least(1), doc="training batches data-dependent methods read")
    batch_size: int = option(128, check=at_least(1), doc="images per calibration batch")


@dataclass(frozen=True)
class PruneConfig:
    method: str = option(doc="pruning method name")
    rate: float = option(0.4375, check=in_open_unit_interval, doc="fraction removed in each pruned layer")
    rates: dict = option(default_factory=dict, doc="per-layer/per-stage rates by module-name prefix (filter methods)")
    target_macs: float | None = option(
        None, check=in_open_unit_interval, doc="keep this fraction of the dense MACs instead of a rate (filter methods)"
    )
    calibration: CalibrationConfig = option(default_factory=CalibrationConfig, doc="data-dependent methods' images")
    params: Any = option(default_factory=dict, doc="the method's own parameters")


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the suite. ``space: normalized`` attacks the normalized input (eps in its units,
    clipped to the normalized image range when ``clip``), as the SR-GKP code did; ``labels: predicted``
    attacks the model's own predictions (their FGSM)."""

    name: str
    label: str
    params: Any
    space: Literal["pixel", "normalized"] = "pixel"
    labels: Literal["true", "predicted"] = "true"
    clip: bool = True

    def settings(self) -> dict[str, Any]:
        """The attack's resolved parameters with its mode, as results.json reports them."""
        return {**to_plain(self.params), "space": self.space, "labels": self.labels, "clip": self.clip}


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = option(("final",), doc="final, dense, pruned, or best_<metric>; first is main")
    fold_batchnorm: bool = option(
        True, doc="evaluate and attack a copy with each BatchNorm folded into its conv (same function, faster)"
    )
    channels_last: bool = option(True, doc="evaluate and attack a copy in channels_last memory format (faster)")


@dataclass(frozen=True)
class Experiment:
    name: str = option(doc="run name; the run folder defaults to runs/<name>")
    seed: int = option(0)
    device: str = option("auto", check=_device_check)
    deterministic: bool = option(False, doc="deterministic kernels (bit-identical reruns on CPU)")
    stages: tuple[Stage, ...] = option(STAGES)
    model: ModelConfig = option(default_factory=ModelConfig)
    data: DataConfig = option(default_factory=DataConfig)
    train: TrainConfig = option(default_factory=TrainConfig)
    prune: PruneConfig | None = option(None)
    finetune: FinetuneConfig = option(default_factory=FinetuneConfig)
    attacks: Any = option(default_factory=tuple)
    eval: EvalConfig = option(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        plain = to_plain(self)
        plain["attacks"] = [{"name": a.name, "label": a.label, **a.settings()} for a in self.attacks]
        return plain

    def attack(self, label: str) -> AttackSpec:
        return next(a for a in self.attacks if a.label == label)


# ---------------------------------------------------------------- building and cross-checks


def _build_prune(raw: Any) -> PruneConfig | None:
    if raw is None:
        return None
    prune = build(PruneConfig, raw, "prune")
    method = PRUNING_METHODS.get(prune.method, "prune.method")
    _check_budget(prune, method)
    return replace(prune, params=build(method.params, prune.params, "prune.params"))


def _check_budget(prune: PruneConfig, method) -> None:
    for key, given in (("rates", bool(prune.rates)), ("target_macs", prune.target_macs is not None)):
        if given and key not in method.budgets:
            raise ConfigError(
                f"prune.{key}: method '{method.name}' does not take it; it takes {', '.join(sorted(method.budgets))}"
            )
    if prune.rates and prune.target_macs is not None:
        raise ConfigError("prune.target_macs: give either prune.rates or prune.target_macs, not both")
    for key, value in prune.rates.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"prune.rates: expected module-name prefix: rate pairs, got {key!r}: {value!r}")
        if not 0 <= value < 1:
            raise ConfigError(f"prune.rates.{key}: must be in [0, 1), got {value}")


MODE_KEYS = {"space": ("pixel", "normalized"), "labels": ("true", "predicted"), "clip": (True, False)}


def _attack_mode(entry: dict, path: str) -> dict[str, Any]:
    mode = {}
    for key, choices in MODE_KEYS.items():
        if key in entry:
            if entry[key] not in choices:
                raise ConfigError(f"{path}.{key}: must be one of {', '.join(map(str, choices))}, got {entry[key]!r}")
            mode[key] = entry[key]
    return mode


def _build_attack(path: str, entry: Any, default_label: str) -> AttackSpec:
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(
            f"{path}: each attack is a mapping with a 'name' (one of {', '.join(ATTACKS.names())}) "
            f"or a 'suite', got {entry!r}"
        )
    attack = ATTACKS.get(entry["name"], f"{path}.name")
    generic = ("name", "label", *MODE_KEYS)
    params = {k: v for k, v in entry.items() if k not in generic}
    valid = [*generic, *(f.name for f in fields(attack.params))]
    for key in params:
        if key not in valid:
            raise ConfigError(
                f"{path}.{key}: unknown key{did_you_mean(str(key), valid)}; "
                f"valid keys for {entry['name']}: {', '.join(valid)}"
            )
    label = entry.get("label") or default_label
    if not isinstance(label, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", label):
        raise ConfigError(f"{path}.label: must be letters, digits, '_', '.' or '-', got {label!r}")
    return AttackSpec(entry["name"], label, build(attack.params, params, path), **_attack_mode(entry, path))


def _build_attacks(raw: Any) -> tuple[AttackSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"attacks: must be a list of attacks such as [{{name: pgd, eps: 8/255}}], got {raw!r}")
    entries = expand_suites(raw)
    names = [entry.get("name") if isinstance(entry, dict) else None for _, entry in entries]
    specs = tuple(
        _build_attack(path, entry, _default_label(str(names[i]), names, i)) for i, (path, entry) in enumerate(entries)
    )
    labels = [s.label for s in specs]
    for label in labels:
        if labels.count(label) > 1:
            raise ConfigError(f"attacks: the label '{label}' is used twice; give each attack its own 'label'")
    return specs


def _default_label(name: str, names: list[str], index: int) -> str:
    if names.count(name) == 1:
        return name
    return f"{name}_{names[: index + 1].count(name)}"


def _check_stages(exp: Experiment) -> None:
    if not exp.stages:
        raise ConfigError(f"stages: must name at least one of {', '.join(STAGES)}")
    if len(set(exp.stages)) != len(exp.stages) or list(exp.stages) != sorted(exp.stages, key=STAGES.index):
        raise ConfigError(f"stages: each stage at most once, in pipeline order {list(STAGES)}, got {list(exp.stages)}")
    if "train" in exp.stages and exp.model.checkpoint:
        raise ConfigError(
            "model.checkpoint: the dense model is loaded from this checkpoint, so it is not "
            "trained; remove 'train' from stages or unset model.checkpoint"
        )
    if "prune" in exp.stages and exp.prune is None:
        raise ConfigError("prune: the prune stage needs a prune section, e.g. prune: {method: l1, rate: 0.4375}")


def _check_data(exp: Experiment) -> None:
    data = exp.data
    trains = any(s in exp.stages for s in ("train", "finetune"))
    if data.name == "npz":
        if not (data.path or (data.train_path and data.test_path)):
            raise ConfigError(
                "data.path: an npz dataset needs data.path (evaluation only) or both data.train_path and data.test_path"
            )
        if trains and not data.train_path:
            raise ConfigError(
                "data.train_path: the train/finetune stages need an npz training file; "
                "data.path is used for evaluation only"
            )
    elif data.path or data.train_path or data.test_path:
        raise ConfigError(
            f"data.path: path, train_path and test_path are for data.name: npz, "
            f"not '{data.name}' (which reads data.root)"
        )
    if (data.mean is None) != (data.std is None):
        raise ConfigError("data.mean: give data.mean and data.std together")


def _check_training(exp: Experiment) -> None:
    labels = [a.label for a in exp.attacks]
    for stage in ("train", "finetune"):
        cfg: TrainConfig = getattr(exp, stage)
        for label in cfg.eval_attacks:
            if label not in labels:
                raise ConfigError(
                    f"{stage}.eval_attacks: '{label}' is not the label of an attack in "
                    f"'attacks'; labels: {', '.join(labels) or 'none (attacks is empty)'}"
                )
        if cfg.nesterov and cfg.momentum == 0:
            raise ConfigError(f"{stage}.nesterov: Nesterov momentum needs {stage}.momentum > 0")
        if cfg.schedule == "multistep" and not cfg.milestones:
            raise ConfigError(f"{stage}.milestones: schedule multistep needs milestones, e.g. [150, 225]")
        if list(cfg.milestones) != sorted(set(cfg.milestones)):
            raise ConfigError(f"{stage}.milestones: must be increasing epochs, got {list(cfg.milestones)}")
        if stage in exp.stages and cfg.select_on == "val" and exp.data.val_fraction <= 0:
            raise ConfigError(f"{stage}.select_on: 'val' needs a validation split: set data.val_fraction, e.g. 0.1")


def _check_eval(exp: Experiment) -> None:
    metrics = ["benign", *exp.finetune.eval_attacks]
    if not exp.eval.models:
        raise ConfigError("eval.models: name at least one model, e.g. [final]")
    for name in exp.eval.models:
        if name in ("final", "dense", "pruned"):
            continue
        if not name.startswith("best_") or name[5:] not in metrics:
            choices = ["final", "dense", "pruned", *(f"best_{m}" for m in metrics)]
            raise ConfigError(
                f"eval.models: unknown model '{name}'; valid choices: {', '.join(choices)} "
                "(best_<label> for each label in finetune.eval_attacks)"
            )


def build_experiment(raw: Any, default_name: str = "experiment") -> Experiment:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    raw.setdefault("name", default_name)
    prune = _build_prune(raw.pop("prune", None))
    attacks = _build_attacks(raw.pop("attacks", None))
    exp = replace(build(Experiment, raw, ""), prune=prune, attacks=attacks)
    if exp.model.arch is None and exp.model.checkpoint is None:
        raise ConfigError(
            f"model.arch: required unless model.checkpoint is set; valid choices: {', '.join(MODELS.names())}"
        )
    if exp.model.arch is not None:
        MODELS.get(exp.model.arch, "model.arch")
        check_arch_args(exp.model.arch, exp.model.args)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", exp.name):
        raise ConfigError(f"name: must be letters, digits, '_', '.' or '-' (it names a folder), got {exp.name!r}")
    _check_stages(exp)
    _check_data(exp)
    _check_training(exp)
    _check_eval(exp)
    return exp


# ---------------------------------------------------------------- files and --set overrides


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``key.path=value`` (value parsed as YAML; numeric parts index lists) to ``raw``."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.path=value, e.g. prune.rate=0.625")
    value = yaml.safe_load(text) if text.strip() else None
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: '{where}' indexes a list of {len(node)} entries")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and node.get(part) is None:
                node[part] = {}
        else:
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:depth])}' is not a section")
        if last:
            node[index] = value
        else:
            node = node[index]


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied: mappings merge key by key, anything else is replaced."""
    result = dict(base)
    for key, value in changes.items():
        both_mappings = isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = merged(result[key], value) if both_mappings else value
    return result


def read_config(path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """The raw mapping of a config file, with its ``base:`` file (a path relative to it) merged under it.

    A base's ``name`` is not inherited: a config names its own run (by default, its file's name)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' files include each other in a loop")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: must be the path of another config file, got {base!r}")
    inherited = read_config(path.parent / base, (*seen, path.resolve()))
    inherited.pop("name", None)
    return merged(inherited, raw)


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    raw = read_config(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return build_experiment(raw, default_name=Path(path).stem)


def dump_experiment(exp: Experiment) -> str:
    return yaml.safe_dump(exp.to_dict(), sort_keys=False)


__all__ = ["Experiment", "load_experiment", "build_experiment", "dump_experiment", "STAGES"]
