"""Export a checkpoint for use outside this project: ``gkp export CKPT --format safetensors|onnx``.

- **safetensors**: the weights, written and read by the ``safetensors`` package (Hugging Face's, which
  checks the format: byte ranges that cover the data exactly, no shared bytes), with the model's arch,
  constructor arguments, plan and metadata as JSON under the header's ``__metadata__`` (``gkp``);
  ``gkp.application.checkpoints.io`` loads such a file wherever a checkpoint is expected, pruned and
  grouped models included.
- **onnx**: the model in eval mode, input ``images`` (N, 3, H, W) in [0, 1] with a dynamic batch, output
  ``logits``; normalisation is inside. Needs the ``onnx`` package (``pip install onnx``); ONNX Runtime
  runs the result (the tests compare it with PyTorch to 1e-5 when it is installed).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from gkp.foundation.errors import CheckpointError
from gkp.foundation.files import replaced_atomically

PAYLOAD_KEYS = ("arch", "arch_args", "plan", "metadata")


def write_safetensors(payload: dict[str, Any], path: str | Path) -> None:
    """A checkpoint payload (``gkp.application.checkpoints.io``) as a safetensors file, written atomically."""
    try:
        described = json.dumps({key: payload[key] for key in PAYLOAD_KEYS})
    except TypeError as error:
        raise CheckpointError(f"the checkpoint's description is not JSON ({error})") from error
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in payload["state_dict"].items()}
    try:
        data = save(tensors, metadata={"format": "pt", "gkp": described})
    except (SafetensorError, ValueError, TypeError) as error:
        raise CheckpointError(f"safetensors cannot store this checkpoint ({error})") from error
    try:
        with replaced_atomically(Path(path)) as temporary:
            temporary.write_bytes(data)
    except OSError as error:
        raise CheckpointError(f"cannot write {path} ({error.strerror or error})") from error


def read_safetensors(path: str | Path) -> dict[str, Any]:
    """The checkpoint payload of a safetensors file written by ``write_safetensors``."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            state = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (not a dict)
        described = json.loads(metadata["gkp"])
        if not isinstance(described, dict):
            raise ValueError(f"its gkp metadata is {type(described).__name__}, not a mapping")
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is not a safetensors file written by gkp export ({error})") from error
    return {**described, "state_dict": state}


def export_onnx(model: nn.Module, path: str | Path, input_size: int) -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError as error:
        raise CheckpointError("--format onnx needs the onnx package: pip install onnx") from error
    example = torch.rand(1, 3, input_size, input_size)
    try:
        with warnings.catch_warnings():
            # The option-A shortcuts' strided slices (x[:, :, ::2, ::2]) are of activations, which constant
            # folding never applies to: torch warns three times per export that it cannot fold them.
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1 can be constant folded")
            torch.onnx.export(
                model.eval(),
                (example,),
                str(path),
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
    except (RuntimeError, OSError, torch.onnx.errors.OnnxExporterError) as error:
        raise CheckpointError(f"the ONNX export to {path} failed ({error})") from error
