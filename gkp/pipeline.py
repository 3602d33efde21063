"""The pipeline's stages, declared once: train -> prune -> finetune -> eval.

``STAGES`` is the one table of what each stage runs, which models it reads, the model and the files it
writes in the run folder, the config sections its fingerprint covers and what it checks before any
compute. The config (valid ``stages`` and ``eval.models``), the command line (one subcommand per stage),
the run folder (fingerprints), the runner (order, preflight, which file holds which model) and the
config reference all read it. Each stage's work is a function of the run context in ``gkp.stages``,
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
RESULTS_FILE = "results.json"


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
    text = json.dumps(chosen, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    trains: bool = False
    best_prefix: str = ""
    check: str | None = None

    def run(self, ctx: Any) -> None:
        resolve(self.function)(ctx)

    def preflight(self, ctx: Any, will_make: frozenset[str]) -> None:
        if self.check is not None:
            resolve(self.check)(ctx, will_make)

    def fingerprint_sections(self) -> tuple[str, ...]:
        earlier = STAGES[: STAGE_NAMES.index(self.name) + 1]
        return tuple(section for stage in earlier for section in stage.sections)

    def fingerprint(self, plain_config: dict[str, Any]) -> str:
        return fingerprint(plain_config, self.fingerprint_sections())

    def best_models(self, exp: Any) -> tuple[str, ...]:
        """The best-epoch models a training stage saves: one per metric it tracks."""
        if not self.trains:
            return ()
        metrics = ("benign", *getattr(exp, self.name).eval_attacks)
        return tuple(f"{self.best_prefix}best_{metric}" for metric in metrics)


STAGES: tuple[Stage, ...] = (
    Stage(
        "train",
        "train the dense model",
        "gkp.stages:train",
        sections=("seed", "deterministic", "model", "data", "train"),
        reads=lambda exp: (),
        saves=("dense", "dense.ckpt"),
        files=("train.json", "snapshots/", "metrics.csv", "tb/train/"),
        trains=True,
        best_prefix="dense_",
    ),
    Stage(
        "prune",
        "prune the dense model one-shot",
        "gkp.stages:prune",
        sections=("prune",),
        reads=lambda exp: ("dense",),
        saves=("pruned", "pruned.ckpt"),
        files=("plan.json",),
        check="gkp.stages:check_pruning",
    ),
    Stage(
        "finetune",
        "fine-tune the pruned model",
        "gkp.stages:finetune",
        sections=("finetune",),
        reads=lambda exp: ("pruned",),
        saves=("final", "finetuned.ckpt"),
        files=("finetune.json", "metrics.csv", "tb/finetune/"),
        trains=True,
    ),
    Stage(
        "eval",
        "evaluate benign and adversarial accuracy",
        "gkp.stages:evaluate_models",
        sections=("attacks", "eval"),
        reads=lambda exp: tuple(exp.eval.models),
        saves=None,
        files=(RESULTS_FILE, "per_sample_<model>.npz"),
    ),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
TRAINING_STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.trains)
SAVED_MODELS: tuple[str, ...] = tuple(stage.saves[0] for stage in STAGES if stage.saves)


def stage_named(name: str) -> Stage:
    return STAGES[STAGE_NAMES.index(name)]


def model_file(name: str) -> str:
    """The run-folder file of a model: a stage's saved model, or a best-epoch model (``<name>.ckpt``)."""
    return next((stage.saves[1] for stage in STAGES if stage.saves and stage.saves[0] == name), f"{name}.ckpt")


def produced_by(model: str) -> str | None:
    """The stage that saves ``model``: its own model, or a training stage's best-epoch model."""
    for stage in STAGES:
        if stage.saves and stage.saves[0] == model:
            return stage.name
    best = [stage for stage in STAGES if stage.trains and model.startswith(f"{stage.best_prefix}best_")]
    return max(best, key=lambda stage: len(stage.best_prefix)).name if best else None


def models_made_by(stages: tuple[str, ...], exp: Any) -> frozenset[str]:
    """The models (eval names) that running ``stages`` saves, best-epoch models included."""
    made = set()
    for stage in (stage_named(name) for name in stages):
        made |= {stage.saves[0]} if stage.saves else set()
        made |= set(stage.best_models(exp))
    return frozenset(made)
