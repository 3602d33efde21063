"""The pipeline's four stages as plain data: train -> prune -> finetune -> eval.

What the command line (one subcommand per stage), the config (valid ``stages`` and ``eval.models``), the
run folder (each stage's fingerprint) and the docs need to know about each stage sits here: its name, the
models it reads and saves, its other files and the config sections in its fingerprint. What each stage
does is an ordinary function (``training.train``, ``prune.prune``, ``training.finetune``,
``evaluation.evaluate_models``); ``run.run_stages`` calls them in this order. Importing this module
loads nothing heavy, so the command line starts in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RESULTS_FILE = "results.json"
TRAINING_SECTIONS = ("train", "finetune")  # the config sections that hold a training recipe
EXECUTION_ONLY = (("data", "num_workers"),)  # keys that change how a run executes, not what it computes
# Bumped whenever what a fingerprint covers changes: a run folder of another version is refused with
# a message, never silently reused (``gkp.application.pipeline.rundir``).
FINGERPRINT_VERSION = 3
# The run-folder file of each model a stage saves; best-epoch models are ``<name>.ckpt``.
MODEL_FILES = {"dense": "dense.ckpt", "masked": "masked.ckpt", "pruned": "pruned.ckpt", "final": "finetuned.ckpt"}


def no_models(exp: Any) -> tuple[str, ...]:
    return ()


def no_training(exp: Any) -> str | None:
    return None


@dataclass(frozen=True)
class Stage:
    """One stage: its ``name`` and ``summary``; the config ``sections`` its fingerprint adds to the earlier
    stages' (with the section it trains with); the models it ``reads`` and ``saves`` under a config (eval
    names: dense, masked, pruned, final, and best-epoch models); the ``files`` it writes in the run folder;
    the section whose recipe it ``trains`` with (None: it does not train), and the prefix of the best-epoch
    models it then keeps (``<best_prefix>best_<metric>``); ``repeatable``: a change of its own settings
    alone reruns it beside its earlier results instead of refusing the folder."""

    name: str
    summary: str
    sections: tuple[str, ...]
    reads: Callable[[Any], tuple[str, ...]]
    saves: Callable[[Any], tuple[str, ...]]
    files: tuple[str, ...]
    trains: Callable[[Any], str | None] = no_training
    best_prefix: str = ""
    repeatable: bool = False

    def fingerprint_sections(self, exp: Any) -> tuple[str, ...]:
        """This stage's sections and those of the stages before it, each with the section it trains with."""
        upto = STAGES[: STAGES.index(self) + 1]
        sections = [s for stage in upto for s in (*stage.sections, *filter(None, [stage.trains(exp)]))]
        return tuple(dict.fromkeys(sections))

    def fingerprint(self, exp: Any, inputs: dict[str, str | None]) -> str:
        """A hash of the fingerprint version, of this stage's config sections (execution-only keys left
        out) and of the content of the files the run reads (``context.input_contents``): equal
        fingerprints, equal results."""
        plain = exp.to_dict()
        chosen = {section: plain.get(section) for section in self.fingerprint_sections(exp)}
        for section, key in EXECUTION_ONLY:
            if isinstance(chosen.get(section), dict):
                chosen[section] = {k: v for k, v in chosen[section].items() if k != key}
        chosen["inputs"] = inputs  # every stage reads the data, or a model trained on it
        text = json.dumps({"version": FINGERPRINT_VERSION, **chosen}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def best_models(exp: Any, stage_name: str) -> tuple[str, ...]:
    """The best-epoch models a stage keeps under this config: one per metric of the section it trains with."""
    stage = stage_named(stage_name)
    section = stage.trains(exp)
    if section is None:
        return ()
    return tuple(f"{stage.best_prefix}best_{metric}" for metric in ("benign", *getattr(exp, section).eval_attacks))


def pruning_trains(exp: Any) -> str | None:
    """The section a training-time pruning method trains with (``prune.during``), or None."""
    return exp.prune.during if getattr(exp, "prune", None) is not None else None


def keeps_trained_models(exp: Any) -> bool:
    """A training-time method whose model as it trains is the architecture with zeroed filters: the prune
    stage keeps it (``masked``) and its best epochs. A method that trains with modules of its own
    (``prepare``, ``finalize``) has no such checkpoint, only its physical model."""
    if pruning_trains(exp) is None:
        return False
    from gkp.application.catalog import PRUNING_METHODS

    return not PRUNING_METHODS.get(exp.prune.method).training.changes_structure


def teacher_models(exp: Any, section: str | None) -> tuple[str, ...]:
    """("dense",) when the loss of ``section`` reads the dense model as its teacher."""
    loss = getattr(exp, section).loss if section else None
    return ("dense",) if loss is not None and loss.entry.teacher else ()


TRAIN = Stage(
    "train",
    "train the dense model",
    sections=("seed", "deterministic", "model", "data", "train"),
    reads=no_models,
    saves=lambda exp: ("dense", *best_models(exp, "train")),
    files=(
        "dense.ckpt",
        "dense_best_<metric>.ckpt",
        "train.json",
        "snapshots/",
        "metrics.csv",
        "training_curves.png",
        "tb/train/",
    ),
    trains=lambda exp: "train",
    best_prefix="dense_",
)
PRUNE = Stage(
    "prune",
    "prune the dense model one-shot; a training-time method trains while it prunes (and alone writes "
    "masked.ckpt, the model as trained, its best epochs, prune.json and metrics)",
    sections=("prune",),
    reads=lambda exp: (
        *(() if pruning_trains(exp) == "train" else ("dense",)),
        *teacher_models(exp, pruning_trains(exp)),
    ),
    saves=lambda exp: ("pruned", *(("masked", *best_models(exp, "prune")) if keeps_trained_models(exp) else ())),
    files=(
        "pruned.ckpt",
        "plan.json",
        "masked.ckpt",
        "pruning_best_<metric>.ckpt",
        "prune.json",
        "metrics.csv",
        "training_curves.png",
        "tb/prune/",
    ),
    trains=pruning_trains,
    best_prefix="pruning_",
)
FINETUNE = Stage(
    "finetune",
    "fine-tune the pruned model",
    sections=("finetune",),
    reads=lambda exp: ("pruned", *teacher_models(exp, "finetune")),
    saves=lambda exp: ("final", *best_models(exp, "finetune")),
    files=(
        "finetuned.ckpt",
        "best_<metric>.ckpt",
        "finetune.json",
        "metrics.csv",
        "training_curves.png",
        "tb/finetune/",
    ),
    trains=lambda exp: "finetune",
)
EVAL = Stage(
    "eval",
    "evaluate benign and adversarial accuracy",
    sections=("attacks", "eval"),
    reads=lambda exp: tuple(exp.eval.models),
    saves=no_models,
    files=(RESULTS_FILE, "per_sample_<model>.npz", "evaluations/<fingerprint>/", "tb/eval/"),
    repeatable=True,
)
STAGES: tuple[Stage, ...] = (TRAIN, PRUNE, FINETUNE, EVAL)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def stage_named(name: str) -> Stage:
    return STAGES[STAGE_NAMES.index(name)]


def eval_model_choices(exp: Any) -> list[str]:
    """The names ``eval.models`` may use under this config: final, each stage's models and best epochs."""
    named = [model for stage in STAGES for model in stage.saves(exp)]
    return ["final", *(m for m in dict.fromkeys(named) if m != "final")]


def model_file(name: str) -> str:
    """The run-folder file of a model: a stage's saved model, or a best-epoch model (``<name>.ckpt``)."""
    return MODEL_FILES.get(name, f"{name}.ckpt")


def produced_by(model: str, exp: Any) -> str | None:
    """The stage that saves ``model`` under this config."""
    return next((stage.name for stage in STAGES if model in stage.saves(exp)), None)


def models_made_by(stages: tuple[str, ...], exp: Any) -> frozenset[str]:
    """The models (eval names) that running ``stages`` saves, best-epoch models included."""
    return frozenset(model for name in stages for model in stage_named(name).saves(exp))
