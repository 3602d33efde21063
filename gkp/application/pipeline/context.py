"""What every stage works with: the experiment, its run folder, the device and the loaded data, and where
each model of the run lives (its file in the run folder, or ``model.checkpoint`` for the dense one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from gkp.application.catalog import DATASETS, model_for_data
from gkp.application.checkpoints.io import load_model
from gkp.application.checkpoints.zoo import PREFIX, local_checkpoint
from gkp.application.pipeline.rundir import RunDir
from gkp.application.pipeline.stages import model_file, produced_by, stage_named
from gkp.foundation.errors import RunFolderError
from gkp.foundation.files import file_digest
from gkp.mechanisms.data.bundle import DataBundle

if TYPE_CHECKING:
    from gkp.application.config import Experiment

NEWEST_FIRST = ("final", "pruned", "dense")  # the models "final" may stand for, newest along the pipeline first


def input_contents(exp: Experiment) -> dict[str, str | None]:
    """The content of the files a run reads, by the key naming them: the data files (``Dataset.content``)
    and ``model.checkpoint`` (its digest; None for a zoo name, whose content the zoo verifies, or no file).
    Part of every stage's fingerprint, so that a file rewritten after a run is refused like a changed key."""
    checkpoint = exp.model.checkpoint
    named = checkpoint is not None and not checkpoint.startswith(PREFIX) and Path(checkpoint).is_file()
    return {
        "data": DATASETS.get(exp.data.name).content(exp.data),
        "model.checkpoint": file_digest(Path(checkpoint)) if named else None,
    }


@dataclass
class Context:
    """What every stage works with: the experiment, its run folder, the device, the loaded data and the
    content of the files the run reads (``input_contents``)."""

    exp: Experiment
    run: RunDir
    device: torch.device
    data: DataBundle
    inputs: dict[str, str | None]

    def fingerprint(self, stage: str) -> str:
        return stage_named(stage).fingerprint(self.exp, self.inputs)


def _own_model(ctx: Context, name: str) -> Path | None:
    """The model ``name`` as its stage saved it; the dense model may also be ``model.checkpoint``."""
    candidates = [ctx.run.path / model_file(name)]
    if name == "dense" and ctx.exp.model.checkpoint:
        candidates.append(local_checkpoint(ctx.exp.model.checkpoint))
    return next((p for p in candidates if p.is_file()), None)


def model_path(ctx: Context, name: str) -> Path | None:
    """The checkpoint behind an eval model name, if it exists: ``final`` is the newest model along the
    pipeline (fine-tuned, else pruned, else dense); best-epoch models are their files."""
    if name != "final":
        return _own_model(ctx, name)
    for model in NEWEST_FIRST:
        path, stage = _own_model(ctx, model), produced_by(model, ctx.exp)
        if path is None and stage is not None and ctx.run.is_done(stage):
            raise RunFolderError(
                f"{ctx.run.path / model_file(model)} is missing, though the {stage} stage is done: 'final' would "
                f"fall back to an older model. Run the {stage} stage again (gkp run CONFIG --restart, or --out DIR)"
            )
        if path is not None:
            return path
    return None


def require_model(ctx: Context, name: str) -> Path:
    path = model_path(ctx, name)
    if path is None:
        stage = produced_by(name, ctx.exp)
        raise RunFolderError(
            f"no '{name}' model in {ctx.run.path}: run the {stage} stage first "
            f"(gkp {stage} CONFIG){' or set model.checkpoint' if name == 'dense' else ''}"
        )
    return path


def load_run_model(ctx: Context, name: str) -> nn.Module:
    """The model ``name`` of this run, on the run's device, in eval mode."""
    return load_model(require_model(ctx, name), ctx.device)[0]


def new_model(ctx: Context) -> nn.Module:
    """A freshly initialised model for the configured arch, sized and normalised for the data."""
    return model_for_data(ctx.exp.model.arch, ctx.data, ctx.exp.model.num_classes, ctx.exp.model.args)
