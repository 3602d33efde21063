"""Experiment configs: YAML into frozen dataclasses, validated against the registries before any compute.

A config file holds only what differs from the defaults (``gkp.foundation.settings``, which follow the SR-GKP
paper's CIFAR-10 recipe). ``load_experiment(path, overrides)`` reads the file, applies
``--set key.path=value`` overrides, and returns an ``Experiment``; every problem raises ``ConfigError``
naming the key path and the valid choices. ``docs/config.md`` lists every key.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from gkp.application.catalog import (
    ATTACKS,
    DATASETS,
    LOSSES,
    MODELS,
    OPTIMIZERS,
    PRUNING_METHODS,
    SUITES,
    check_arch_args,
)
from gkp.application.checkpoints.zoo import check_zoo_name
from gkp.application.pipeline.stages import STAGE_NAMES, TRAINING_SECTIONS, eval_model_choices, stage_named
from gkp.foundation.contracts import Choice
from gkp.foundation.errors import ConfigError, not_a_file
from gkp.foundation.registry import did_you_mean
from gkp.foundation.schema import build, load_yaml, option, read_text, to_plain, to_yaml
from gkp.foundation.settings import (
    AttackSpec,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    PruneConfig,
    TrainConfig,
    device_name_check,
)

StageName = Literal[STAGE_NAMES]


@dataclass(frozen=True)
class Experiment:
    name: str = option(doc="run name; the run folder defaults to runs/<name>", default_text="the config file's name")
    seed: int = option(
        0,
        check=lambda v: None if 0 <= v < 2**63 else f"must be a whole number from 0 to 2**63 - 1, got {v}",
        doc="the one seed: model init, epoch shuffling and augmentation, attack randomness",
    )
    device: str = option(
        "auto", check=device_name_check, doc="auto (the first CUDA GPU, else the CPU), cpu, cuda, cuda:N or mps"
    )
    deterministic: bool = option(False, doc="deterministic kernels: bit-identical reruns on the same machine")
    stages: tuple[StageName, ...] = option(STAGE_NAMES, doc="the stages gkp run runs, in pipeline order")
    model: ModelConfig = option(default_factory=ModelConfig, doc="the model")
    data: DataConfig = option(default_factory=DataConfig, doc="the dataset")
    train: TrainConfig = option(default_factory=TrainConfig, doc="training the dense model")
    prune: PruneConfig | None = option(None, doc="the pruning method and its budget (needed by the prune stage)")
    finetune: FinetuneConfig = option(
        default_factory=FinetuneConfig, doc="fine-tuning the pruned model: the keys of train"
    )
    attacks: Any = option(
        default_factory=tuple,
        doc="list of {name: ..., label: ..., <params>} or {suite: ...} (see Attacks below and docs/attacks.md)",
    )
    eval: EvalConfig = option(default_factory=EvalConfig, doc="the final evaluation")

    def to_dict(self) -> dict[str, Any]:
        plain = to_plain(self)
        plain["attacks"] = [a.to_dict() for a in self.attacks]
        return plain

    def attack(self, label: str) -> AttackSpec:
        return next(a for a in self.attacks if a.label == label)


# ---------------------------------------------------------------- building and cross-checks


def build_prune(raw: Any) -> PruneConfig | None:
    if raw is None:
        return None
    prune = build(PruneConfig, raw, "prune")
    method = PRUNING_METHODS.get(prune.method, "prune.method")
    _check_budget(prune, method)
    if method.training is None and prune.during is not None:
        raise ConfigError(
            f"prune.during: '{method.name}' prunes one-shot after training; only training-time methods "
            f"({', '.join(n for n, m in PRUNING_METHODS.items() if m.training)}) take it"
        )
    during = prune.during or (method.training.during if method.training else None)
    return replace(prune, params=build(method.params, prune.params, "prune.params"), during=during)


def _adversarial(raw: Any, path: str) -> Choice | None:
    """``adversarial: {method: NAME, ...}``: a loss that trains on adversarial examples."""
    if raw is None:
        return None
    methods = [name for name, loss in LOSSES.items() if loss.key == "adversarial"]
    if not isinstance(raw, dict) or "method" not in raw:
        raise ConfigError(
            f"{path}: a mapping with a 'method' (one of {', '.join(methods)}) and its "
            f"parameters, e.g. {{method: pgd, eps: 8/255, steps: 10}}, got {raw!r}"
        )
    loss = LOSSES.get(raw["method"], f"{path}.method")
    if loss.key != "adversarial":
        raise ConfigError(f"{path}.method: '{loss.name}' is not an adversarial training; one of {', '.join(methods)}")
    params = {k: v for k, v in raw.items() if k != "method"}
    return Choice(loss, build(loss.params, params, path), key="method")


def _distill(raw: Any, path: str) -> Choice | None:
    """``distill: {temperature: ..., weight: ...}`` (``{}`` for the defaults): distillation from the dense model."""
    if raw is None:
        return None
    loss = LOSSES.get("distill")
    return Choice(loss, build(loss.params, raw, path), key=None)


def _optimizer(raw: Any, path: str) -> Choice:
    """``optimizer: NAME`` or ``{name: NAME, ...its parameters}``; default sgd."""
    raw = {"name": "sgd"} if raw is None else {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(
            f"{path}: an optimizer's name ({', '.join(OPTIMIZERS.names())}) or a mapping with its 'name' and its "
            f"parameters, e.g. {{name: adamw, betas: [0.9, 0.99]}}, got {raw!r}"
        )
    optimizer = OPTIMIZERS.get(raw["name"], f"{path}.name")
    return Choice(optimizer, build(optimizer.params, {k: v for k, v in raw.items() if k != "name"}, path))


CHOICES = {
    "adversarial": _adversarial,
    "distill": _distill,
    "optimizer": _optimizer,
}  # a training section's keys that name entries


def _section_choices(keys: dict, section: str) -> dict[str, Choice | None]:
    """The keys of one training section that name registry entries, built, and removed from ``keys``."""
    return {key: make(keys.pop(key, None), f"{section}.{key}") for key, make in CHOICES.items()}


def _pop_choices(raw: dict) -> dict[str, dict[str, Choice | None]]:
    """Each training section's keys that name registry entries, built, and removed from ``raw``."""
    chosen = {}
    for section in TRAINING_SECTIONS:
        keys = dict(raw[section]) if isinstance(raw.get(section), dict) else {}
        chosen[section] = _section_choices(keys, section)
        if isinstance(raw.get(section), dict):
            raw[section] = keys
    return chosen


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


# The evaluation-mode keys of an attack entry, with their choices (AttackSpec's Literals; clip is a bool).
MODE_KEYS = {
    name: typing.get_args(hint) or (True, False)
    for name, hint in typing.get_type_hints(AttackSpec).items()
    if name in ("space", "labels", "clip")
}


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
    return AttackSpec(attack, label, build(attack.params, params, path), **_attack_mode(entry, path))


def build_attacks(raw: Any) -> tuple[AttackSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"attacks: must be a list of attacks such as [{{name: pgd, eps: 8/255}}], got {raw!r}")
    entries = expand_suites(raw)
    labels = _default_labels([entry for _, entry in entries])
    specs = tuple(_build_attack(path, entry, labels[i]) for i, (path, entry) in enumerate(entries))
    labels = [s.label for s in specs]
    for label in labels:
        if labels.count(label) > 1:
            raise ConfigError(f"attacks: the label '{label}' is used twice; give each attack its own 'label'")
    return specs


def _default_labels(entries: list[Any]) -> list[str]:
    """Each entry's label when it gives none: its attack's name, numbered (pgd_1, pgd_2) only among the
    unlabelled entries of that name when there are several, or when an explicit label already takes it."""
    mappings = [entry if isinstance(entry, dict) else {} for entry in entries]
    explicit = {entry["label"] for entry in mappings if entry.get("label")}
    unlabelled = [str(entry.get("name")) for entry in mappings if not entry.get("label")]
    labels, taken = [], set(explicit)
    for entry in mappings:
        name = str(entry.get("name"))
        if entry.get("label"):
            labels.append(entry["label"])
            continue
        label = name if unlabelled.count(name) == 1 and name not in explicit else None
        number = 1
        while label is None or label in taken:
            label, number = f"{name}_{number}", number + 1
        taken.add(label)
        labels.append(label)
    return labels


def _check_stages(exp: Experiment) -> None:
    if not exp.stages:
        raise ConfigError(f"stages: must name at least one of {', '.join(STAGE_NAMES)}")
    if len(set(exp.stages)) != len(exp.stages) or list(exp.stages) != sorted(exp.stages, key=STAGE_NAMES.index):
        raise ConfigError(
            f"stages: each stage at most once, in pipeline order {list(STAGE_NAMES)}, got {list(exp.stages)}"
        )
    if "train" in exp.stages and exp.model.checkpoint:
        raise ConfigError(
            "model.checkpoint: the dense model is loaded from this checkpoint, so it is not "
            "trained; remove 'train' from stages or unset model.checkpoint"
        )
    if "prune" in exp.stages and exp.prune is None:
        raise ConfigError("prune: the prune stage needs a prune section, e.g. prune: {method: l1, rate: 0.4375}")
    if exp.prune is not None and exp.prune.during is not None:
        _check_training_time_stages(exp)


def _check_training_time_stages(exp: Experiment) -> None:
    """A training-time method trains inside the prune stage with the recipe of ``prune.during``: that
    section's own stage would train a second time, so it must not run in the same config."""
    during, method = exp.prune.during, exp.prune.method
    if during not in exp.stages:
        return
    if during == "train":
        raise ConfigError(
            f"stages: with prune.during: train, {method} trains the model from scratch inside the prune stage "
            "with the train section's recipe; remove 'train' from stages (or set prune.during: finetune to "
            "start from a trained dense model)"
        )
    raise ConfigError(
        f"stages: with prune.during: finetune, {method} fine-tunes the dense model inside the prune stage with "
        "the finetune section's recipe; remove 'finetune' from stages (or set prune.during: train)"
    )


def _check_data(exp: Experiment) -> None:
    dataset = DATASETS.get(exp.data.name, "data.name")
    dataset.check(exp.data, any(stage_named(stage).trains(exp) for stage in exp.stages))
    if (exp.data.mean is None) != (exp.data.std is None):
        raise ConfigError("data.mean: give data.mean and data.std together")


def build_section(raw: Any, section: str = "finetune") -> TrainConfig:
    """A training section (``train`` or ``finetune``) alone, built and checked as in a config (the Python
    API's training recipe)."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{section}: a mapping of its keys, e.g. {{epochs: 10, lr: 0.01}}, got {raw!r}")
    keys = dict(raw or {})
    choices = _section_choices(keys, section)
    cfg = replace(build(TrainConfig if section == "train" else FinetuneConfig, keys, section), **choices)
    check_section(cfg, section, [])
    return cfg


def check_section(cfg: TrainConfig, stage: str, labels: list[str]) -> None:
    """What a training section must hold on its own (``labels``: the config's attack labels)."""
    for label in cfg.eval_attacks:
        if label not in labels:
            raise ConfigError(
                f"{stage}.eval_attacks: '{label}' is not the label of an attack in "
                f"'attacks'; labels: {', '.join(labels) or 'none (attacks is empty)'}"
            )
    if cfg.nesterov and (cfg.momentum == 0 or cfg.optimizer.entry.name != "sgd"):
        raise ConfigError(f"{stage}.nesterov: Nesterov momentum is SGD's, and needs {stage}.momentum > 0")
    if cfg.adversarial is not None and cfg.distill is not None:
        raise ConfigError(f"{stage}.distill: a section minimises one loss; drop {stage}.adversarial or {stage}.distill")
    if cfg.schedule == "multistep" and not cfg.milestones:
        raise ConfigError(f"{stage}.milestones: schedule multistep needs milestones, e.g. [150, 225]")
    if list(cfg.milestones) != sorted(set(cfg.milestones)):
        raise ConfigError(f"{stage}.milestones: must be increasing epochs, got {list(cfg.milestones)}")


def _check_training(exp: Experiment) -> None:
    labels = [a.label for a in exp.attacks]
    for stage in TRAINING_SECTIONS:
        cfg: TrainConfig = getattr(exp, stage)
        check_section(cfg, stage, labels)
        used = any(stage_named(name).trains(exp) == stage for name in exp.stages)
        if used and cfg.select_on == "val" and exp.data.val_fraction <= 0:
            raise ConfigError(f"{stage}.select_on: 'val' needs a validation split: set data.val_fraction, e.g. 0.1")


def _check_teacher(exp: Experiment) -> None:
    """The dense model is the teacher: the train section, which trains it, cannot distill from it."""
    if exp.train.distill is not None:
        raise ConfigError(
            "train.distill: the teacher is the dense model, which the train section trains; distill while "
            "fine-tuning (finetune.distill), or in the prune stage with prune.during: finetune"
        )


def _check_eval(exp: Experiment) -> None:
    if not exp.eval.models:
        raise ConfigError("eval.models: name at least one model, e.g. [final]")
    choices = eval_model_choices(exp)
    for name in exp.eval.models:
        if name not in choices:
            raise ConfigError(
                f"eval.models: unknown model '{name}'; valid choices: {', '.join(choices)} "
                "(best_<label> for each label in finetune.eval_attacks, dense_best_<label> for train.eval_attacks; "
                "masked and pruning_best_<label> with a training-time method)"
            )


def build_experiment(raw: Any, default_name: str = "experiment") -> Experiment:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    raw.setdefault("name", default_name)
    prune = build_prune(raw.pop("prune", None))
    attacks = build_attacks(raw.pop("attacks", None))
    chosen = _pop_choices(raw)
    exp = replace(build(Experiment, raw, ""), prune=prune, attacks=attacks)
    for section, choices in chosen.items():
        exp = replace(exp, **{section: replace(getattr(exp, section), **choices)})
    _check_data(exp)
    if exp.model.arch is None and exp.model.checkpoint is None:
        raise ConfigError(
            f"model.arch: required unless model.checkpoint is set; valid choices: {', '.join(MODELS.names())}"
        )
    check_zoo_name(exp.model.checkpoint)
    if exp.model.arch is not None:
        MODELS.get(exp.model.arch, "model.arch")
        check_arch_args(exp.model.arch, exp.model.args)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", exp.name) or not exp.name.strip("."):
        raise ConfigError(
            f"name: must be letters, digits, '_', '.' or '-', and not dots alone (it names a folder), got {exp.name!r}"
        )
    _check_stages(exp)
    _check_training(exp)
    _check_teacher(exp)
    _check_eval(exp)
    return exp


def expand_suites(entries: list[Any]) -> list[tuple[str, Any]]:
    """(key path, attack entry) for every attack, the suites named replaced by their attacks in order."""
    expanded = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and "suite" in entry):
            expanded.append((f"attacks[{i}]", entry))
            continue
        suite = SUITES.get(entry["suite"], f"attacks[{i}].suite")
        name, keys = suite.name, suite.keys
        arguments = {k: v for k, v in entry.items() if k != "suite"}
        for key in arguments:
            if key not in keys:
                raise ConfigError(
                    f"attacks[{i}].{key}: the suite {name} takes {', '.join(keys) if keys else 'no other keys'}"
                )
        if "eps" in keys and "eps" not in arguments:
            raise ConfigError(f"attacks[{i}].eps: the suite {name} needs an eps (pixel units), e.g. 8/255")
        expanded += [(f"attacks[{i}] ({name})", attack) for attack in suite.make(**arguments)]
    return expanded


# ---------------------------------------------------------------- files and --set overrides


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``key.path=value`` (value parsed as YAML; numeric parts index lists) to ``raw``."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.path=value, e.g. prune.rate=0.625")
    value = load_yaml(text, f"--set {key.strip()}: the value") if text.strip() else None
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
        raise ConfigError(f"config file {path} {not_a_file(path)}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' files include each other in a loop")
    raw = load_yaml(read_text(path, "config"), str(path))
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
    if any(assignment.startswith("attacks.") for assignment in overrides) and isinstance(raw.get("attacks"), list):
        raw["attacks"] = [entry for _, entry in expand_suites(raw["attacks"])]  # members by index
    for assignment in overrides:
        apply_override(raw, assignment)
    return build_experiment(raw, default_name=Path(path).stem)


def dump_experiment(exp: Experiment) -> str:
    return to_yaml(exp.to_dict())


__all__ = ["Experiment", "load_experiment", "build_experiment", "dump_experiment"]
