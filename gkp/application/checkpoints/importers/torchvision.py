"""torchvision's ImageNet ResNet weights, whose names are ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from gkp.application.checkpoints.importers.loading import load_into, load_tensors, model_for
from gkp.foundation.contracts import Importer
from gkp.foundation.errors import CheckpointError


def convert_torchvision(source: Path, entry: Any) -> nn.Module:
    state = load_tensors(source)
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} is not a state dict: not one of torchvision's weight files")
    return load_into(model_for(entry), state, source)


ENTRY = Importer("torchvision", convert_torchvision, "torchvision's ImageNet ResNet weights")
