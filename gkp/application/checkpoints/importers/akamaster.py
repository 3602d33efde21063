"""akamaster/pytorch_resnet_cifar10's option-A CIFAR ResNets: ``{"state_dict": ...}`` files whose keys carry
DataParallel's ``module.`` prefix, trained on ImageNet-normalised inputs. Their option-A shortcut pads the new
channels of a stage on *both* sides of the old ones (planes/4 before and after), ours appends them, so their
residual stream is a channel permutation of ours: every tensor that writes to or reads from the stream (each
block's second conv and BatchNorm, each block's first conv's inputs, the classifier's inputs) is permuted
into our order, and the model computes exactly their function with our shortcut."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkp.application.checkpoints.importers.loading import load_into, load_tensors, model_for
from gkp.foundation.contracts import Importer
from gkp.foundation.errors import CheckpointError


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
    payload = load_tensors(source)
    state = payload.get("state_dict") if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} has no 'state_dict': not one of akamaster's checkpoint files")
    model = model_for(entry)
    try:
        tensors = akamaster_tensors(state, model)
    except (KeyError, IndexError) as error:
        raise CheckpointError(f"{source} does not match {entry.arch}: {error}") from error
    return load_into(model, tensors, source)


ENTRY = Importer("akamaster", convert_akamaster, "akamaster/pytorch_resnet_cifar10's option-A CIFAR ResNets")
