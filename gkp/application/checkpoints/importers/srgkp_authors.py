"""The SR-GKP authors' whole-module pickles (adv_robust_gkp), read by ``gkp.application.checkpoints.authors``
without running their code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from gkp.application.checkpoints.authors import authors_resnet
from gkp.foundation.contracts import Importer
from gkp.foundation.errors import CheckpointError


def convert_authors(source: Path, entry: Any) -> nn.Module:
    model = authors_resnet(source)
    spec = model.gkp_spec
    described = (spec.arch, spec.args["num_classes"], tuple(spec.args["mean"]), tuple(spec.args["std"]))
    if described != (entry.arch, entry.num_classes, tuple(entry.mean), tuple(entry.std)):
        raise CheckpointError(f"{source} holds {described} (arch, classes, mean, std), the manifest says otherwise")
    return model.eval()


ENTRY = Importer("srgkp-authors", convert_authors, "the SR-GKP authors' whole-module pickles (adv_robust_gkp)")
