"""The pipeline's stages, declared once: train -> prune -> finetune -> eval.

``STAGES`` is the one table of what each stage runs, which models it reads, the model and the files it
writes in the run folder, the config sections its fingerprint covers and what it checks before any
compute. The config (valid ``stages`` and ``eval.models``), the command line (one subcommand per stage),
the run folder (fingerprints), the runner (order, preflight, which file holds which model) and the
config reference all read it. Each stage's work is a function of the run context in ``gkp.application.pipeline.steps``,
named here by its import path so that reading the table loads nothing heavy (the command line starts
in a fraction of a second).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Keys that change how a run executes, not what it computes (device is in no stage's sections).
EXECUTION_ONLY = (("data", "num_workers"),)
# Keys added after run folders existed, left out of the fingerprints while at their defaults, so that
# the stages those folders finished keep their fingerprints: (section, key, default).
ADDED_LATER = (
    ("train", "adversarial", None),
    ("finetune", "adversarial", None),
    ("prune", "during", None),
    ("data", "subset", "seeded"),
    ("train", "sync_batchnorm", False),
    ("finetune", "sync_batchnorm", False),
)
# Attack parameters added later, left out of the fingerprints at their defaults: (attack, key, default).
ADDED_LATER_TO_ATTACKS = (("square", "rescale_schedule", True),)
RESULTS_FILE = "results.json"
TRAINING_SECTIONS = ("train", "finetune")  # the config sections that hold a training recipe


def resolve(path: str) -> Callable[..., Any]:
    """The function at ``"package.module:name"``."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def fingerprint(plain_config: dict[str, Any], sections: tuple[str, ...]) -> str:
    """A hash of the config ``sections`` (execution-only keys left out) of a plain config."""
    chosen = {k: plain_config.get(k) for k in sections}
    for section, key in EXECUTION_ONLY:
        if isinstance(chosen.get(section), dict):
            chosen[section] = {k: v for k, v in chosen[section].items() if k != key}
    for section, key, default in ADDED_LATER:
        if isinstance(chosen.get(section), dict) and key in chosen[section] and chosen[section][key] == default:
            chosen[section] = {k: v for k, v in chosen[section].items() if k != key}
    if isinstance(chosen.get("attacks"), list):
        chosen["attacks"] = [_without_later_defaults(attack) for attack in chosen["attacks"]]
    text = json.dumps(chosen, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _without_later_defaults(attack: Any) -> Any:
    if not isinstance(attack, dict):
        return attack
    later = {
        key
        for name, key, default in ADDED_LATER_TO_ATTACKS
        if attack.get("name") == name and attack.get(key) == default
    }
    return {k: v for k, v in attack.items() if k not in later}


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    ``function`` ("module:name") does the work, given the run context; ``check`` (optional, the same way)
    raises before any compute when the stage could not run, given the context and the models the stages
    about to run will save. ``reads(exp)`` names the models it loads (eval names: dense, pruned, final,
    best_<metric>); ``saves`` is the model it writes, as (eval name, file); ``files`` are its other outputs
    in the run folder. ``sections`` are the config sections this stage adds to the ones earlier stages
    depend on: together they make its fingerprint. A stage that ``trains`` runs the training loop on the
    training split with the config section of its own name, and keeps the best epoch of each metric as
    ``<best_prefix>best_<metric>.ckpt``.
    """

    name: str
    summary: str
    function: str
    sections: tuple[str, ...]
    reads: Callable[[Any], tuple[str, ...]]
    saves: tuple[str, str] | None
    files: tuple[str, ...]
    trains: Callable[[Any], str | None] = lambda exp: None
    best_prefix: str = ""
    check: str | None = None
    reads_sections: Callable[[dict[str, Any]], tuple[str, ...]] = lambda plain: ()
    reads_sections_doc: str = ""
    also_saves: Callable[[Any], tuple[str, ...]] = lambda exp: ()
    repeatable: bool = False

    def run(self, ctx: Any) -> None:
        resolve(self.function)(ctx)

    def preflight(self, ctx: Any, will_make: frozenset[str]) -> None:
        if self.check is not None:
            resolve(self.check)(ctx, will_make)

    def fingerprint_sections(self, plain_config: dict[str, Any]) -> tuple[str, ...]:
        earlier = STAGES[: STAGE_NAMES.index(self.name) + 1]
        sections = [s for stage in earlier for s in (*stage.sections, *stage.reads_sections(plain_config))]
        return tuple(dict.fromkeys(sections))

    def fingerprint(self, plain_config: dict[str, Any]) -> str:
        return fingerprint(plain_config, self.fingerprint_sections(plain_config))

    def best_models(self, exp: Any) -> tuple[str, ...]:
        """The best-epoch models a training stage saves: one per metric it tracks."""
        section = self.trains(exp)
        if section is None:
            return ()
        metrics = ("benign", *getattr(exp, section).eval_attacks)
        return tuple(f"{self.best_prefix}best_{metric}" for metric in metrics)

    def models(self, exp: Any) -> tuple[str, ...]:
        """Every model (eval name) the stage saves for this config."""
        return (*((self.saves[0],) if self.saves else ()), *self.also_saves(exp), *self.best_models(exp))


def training_time(exp: Any) -> str | None:
    """The section a training-time pruning method trains with (``prune.during``), or None."""
    return exp.prune.during if getattr(exp, "prune", None) is not None else None


def _prune_reads_sections(plain: dict[str, Any]) -> tuple[str, ...]:
    return ("finetune",) if (plain.get("prune") or {}).get("during") == "finetune" else ()


STAGES: tuple[Stage, ...] = (
    Stage(
        "train",
        "train the dense model",
        "gkp.application.pipeline.steps:train",
        sections=("seed", "deterministic", "model", "data", "train"),
        reads=lambda exp: (),
        saves=("dense", "dense.ckpt"),
        files=("train.json", "snapshots/", "metrics.csv", "training_curves.png", "tb/train/"),
        trains=lambda exp: "train",
        best_prefix="dense_",
    ),
    Stage(
        "prune",
        "prune the dense model one-shot; a training-time method trains while it prunes (and alone writes "
        "masked.ckpt, the model as trained, its best epochs, prune.json and metrics)",
        "gkp.application.pipeline.steps:prune",
        sections=("prune",),
        reads=lambda exp: () if training_time(exp) == "train" else ("dense",),
        saves=("pruned", "pruned.ckpt"),
        files=("plan.json", "masked.ckpt", "prune.json", "metrics.csv", "training_curves.png", "tb/prune/"),
        check="gkp.application.pipeline.steps:check_pruning",
        trains=training_time,
        best_prefix="pruning_",
        reads_sections=_prune_reads_sections,
        reads_sections_doc="finetune, when a training-time method trains with it",
        also_saves=lambda exp: ("masked",) if training_time(exp) else (),
    ),
    Stage(
        "finetune",
        "fine-tune the pruned model",
        "gkp.application.pipeline.steps:finetune",
        sections=("finetune",),
        reads=lambda exp: ("pruned",),
        saves=("final", "finetuned.ckpt"),
        files=("finetune.json", "metrics.csv", "training_curves.png", "tb/finetune/"),
        trains=lambda exp: "finetune",
    ),
    Stage(
        "eval",
        "evaluate benign and adversarial accuracy",
        "gkp.application.pipeline.steps:evaluate_models",
        sections=("attacks", "eval"),
        reads=lambda exp: tuple(exp.eval.models),
        saves=None,
        files=(RESULTS_FILE, "per_sample_<model>.npz", "evaluations/<fingerprint>/"),
        repeatable=True,
    ),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
SAVED_MODELS: tuple[str, ...] = tuple(stage.saves[0] for stage in STAGES if stage.saves)


def stage_named(name: str) -> Stage:
    return STAGES[STAGE_NAMES.index(name)]


def trains(stage: str, exp: Any) -> str | None:
    """The section whose recipe stage ``stage`` trains with under this config, or None."""
    return stage_named(stage).trains(exp)


def eval_model_choices(exp: Any) -> list[str]:
    """The names ``eval.models`` may use under this config: final, each stage's models and best epochs."""
    named = [model for stage in STAGES for model in stage.models(exp)]
    return ["final", *(m for m in dict.fromkeys(named) if m != "final")]


def model_file(name: str) -> str:
    """The run-folder file of a model: a stage's saved model, or a best-epoch model (``<name>.ckpt``)."""
    return next((stage.saves[1] for stage in STAGES if stage.saves and stage.saves[0] == name), f"{name}.ckpt")


def produced_by(model: str, exp: Any) -> str | None:
    """The stage that saves ``model`` under this config."""
    return next((stage.name for stage in STAGES if model in stage.models(exp)), None)


def models_made_by(stages: tuple[str, ...], exp: Any) -> frozenset[str]:
    """The models (eval names) that running ``stages`` saves, best-epoch models included."""
    return frozenset(model for name in stages for model in stage_named(name).models(exp))
