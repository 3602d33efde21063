"""The checkpoint formats the model zoo converts (``gkp.foundation.contracts.Importer``), one per source:

- ``srgkp-authors``: the SR-GKP authors' whole-module pickles, read by ``gkp.application.checkpoints.authors`` without running
  their code.
- ``akamaster``: akamaster/pytorch_resnet_cifar10's option-A CIFAR ResNets, ``{"state_dict": ...}`` files
  whose keys carry DataParallel's ``module.`` prefix, trained on ImageNet-normalised inputs. Their
  option-A shortcut pads the new channels of a stage on *both* sides of the old ones (planes/4 before and
  after), ours appends them, so their residual stream is a channel permutation of ours: every tensor that
  writes to or reads from the stream (each block's second conv and BatchNorm, each block's first conv's
  inputs, the classifier's inputs) is permuted into our order, and the model computes exactly their
  function with our shortcut.
- ``torchvision``: torchvision's ImageNet ResNet weights, whose names are ours.

Each reads its file with ``weights_only=True`` (or the authors' restricted unpickler): nothing in a
downloaded file is executed.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkp.application.catalog import build_model
from gkp.application.checkpoints.authors import authors_resnet
from gkp.foundation.contracts import Importer
from gkp.foundation.errors import CheckpointError
from gkp.foundation.registry import Registry


def _load_tensors(source: Path) -> dict[str, Any]:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{source} is not a readable torch file of weights ({error})") from error


def _model_for(entry: Any) -> nn.Module:
    return build_model(entry.arch, num_classes=entry.num_classes, mean=list(entry.mean), std=list(entry.std))


NORMALISATION = "normalize."  # the entry gives the normalisation, not the file
BATCHNORM_COUNTER = "num_batches_tracked"  # files saved by older torch lack it


def _load_into(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> nn.Module:
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


# ------------------------------------------------------------------------------------------- akamaster


def stream_orders(widths: list[int]) -> list[torch.Tensor]:
    """For each stage of widths ``widths``, ``order[i]``: their residual-stream channel that is our channel i.

    Their shortcut into a stage of width w puts the previous stream at channels [w/4, w/4 + previous)
    and zeros around it; ours puts it at [0, previous) and zeros after. Our zero channels take their zero
    channels in order."""
    orders = [torch.arange(widths[0])]
    for previous, width in zip(widths, widths[1:], strict=False):
        pad = width // 4
        if previous + 2 * pad != width:
            raise CheckpointError(f"a stage from {previous} to {width} channels is not akamaster's option-A shortcut")
        zeros = [*range(pad), *range(pad + previous, width)]
        orders.append(torch.cat([orders[-1] + pad, torch.tensor(zeros, dtype=torch.long)]))
    return orders


def _akamaster_name(name: str) -> str:
    return re.sub(r"^linear\.", "fc.", name)


def akamaster_tensors(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Their state dict renamed and permuted into ours (``model`` gives the stages' blocks and widths)."""
    tensors = {
        _akamaster_name(re.sub(r"^module\.", "", k)): v.float() if v.is_floating_point() else v
        for k, v in state.items()
    }
    stages = [model.layer1, model.layer2, model.layer3]
    orders = stream_orders([stage[0].conv2.out_channels for stage in stages])
    for s, (stage, order) in enumerate(zip(stages, orders, strict=True), start=1):
        for b in range(len(stage)):
            prefix = f"layer{s}.{b}."
            incoming = orders[s - 2] if b == 0 and s > 1 else order
            tensors[prefix + "conv1.weight"] = tensors[prefix + "conv1.weight"][:, incoming]
            tensors[prefix + "conv2.weight"] = tensors[prefix + "conv2.weight"][order]
            for key in ("weight", "bias", "running_mean", "running_var"):
                tensors[prefix + f"bn2.{key}"] = tensors[prefix + f"bn2.{key}"][order]
    tensors["fc.weight"] = tensors["fc.weight"][:, orders[-1]]
    return tensors


def convert_akamaster(source: Path, entry: Any) -> nn.Module:
    payload = _load_tensors(source)
    state = payload.get("state_dict") if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} has no 'state_dict': not one of akamaster's checkpoint files")
    model = _model_for(entry)
    try:
        tensors = akamaster_tensors(state, model)
    except (KeyError, IndexError) as error:
        raise CheckpointError(f"{source} does not match {entry.arch}: {error}") from error
    return _load_into(model, tensors, source)


# ------------------------------------------------------------------------------------------- torchvision


def convert_torchvision(source: Path, entry: Any) -> nn.Module:
    state = _load_tensors(source)
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} is not a state dict: not one of torchvision's weight files")
    return _load_into(_model_for(entry), state, source)


# ------------------------------------------------------------------------------------------- the authors'


def convert_authors(source: Path, entry: Any) -> nn.Module:
    model = authors_resnet(source)
    spec = model.gkp_spec
    described = (spec.arch, spec.args["num_classes"], tuple(spec.args["mean"]), tuple(spec.args["std"]))
    if described != (entry.arch, entry.num_classes, tuple(entry.mean), tuple(entry.std)):
        raise CheckpointError(f"{source} holds {described} (arch, classes, mean, std), the manifest says otherwise")
    return model.eval()


IMPORTERS: Registry[Importer] = Registry.of(
    "checkpoint format",
    (
        Importer("srgkp-authors", convert_authors, "the SR-GKP authors' whole-module pickles (adv_robust_gkp)"),
        Importer("akamaster", convert_akamaster, "akamaster/pytorch_resnet_cifar10's option-A CIFAR ResNets"),
        Importer("torchvision", convert_torchvision, "torchvision's ImageNet ResNet weights"),
    ),
)
