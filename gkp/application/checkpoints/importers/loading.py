"""What the importers share: reading a file of tensors without running anything from it, the model an
entry of the manifest describes, and loading tensors into it with every mismatch refused."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkp.application.catalog import build_model
from gkp.foundation.errors import CheckpointError


def load_tensors(source: Path) -> dict[str, Any]:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{source} is not a readable torch file of weights ({error})") from error


def model_for(entry: Any) -> nn.Module:
    return build_model(entry.arch, num_classes=entry.num_classes, mean=list(entry.mean), std=list(entry.std))


NORMALISATION = "normalize."  # the entry gives the normalisation, not the file
BATCHNORM_COUNTER = "num_batches_tracked"  # files saved by older torch lack it


def load_into(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """Load the file's tensors, refusing any mismatch but a missing BatchNorm counter."""
    expected = {k for k in model.state_dict() if not k.startswith(NORMALISATION)}
    missing = expected - set(tensors)
    if not set(tensors) <= expected or any(not k.endswith(BATCHNORM_COUNTER) for k in missing):
        missing, extra = sorted(missing), sorted(set(tensors) - expected)
        raise CheckpointError(
            f"{source} does not match {model.gkp_spec.arch}: missing {missing[:4]}, unexpected {extra[:4]}"
        )
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:
        raise CheckpointError(f"{source}: tensor shapes do not match {model.gkp_spec.arch} ({error})") from error
    return model.eval()
