"""Export a checkpoint for use outside this project: ``gkp export CKPT --format safetensors|onnx``.

- **safetensors**: the weights in the safetensors layout (an 8-byte little-endian header length, a JSON
  header of each tensor's dtype, shape and byte range, then the raw little-endian bytes), with the
  model's arch, constructor arguments, plan and metadata as JSON under the header's ``__metadata__``
  (``gkp``). Written and read here (a few dozen lines, no extra dependency); ``gkp.application.checkpoints.io``
  loads such a file wherever a checkpoint is expected, pruned and grouped models included.
- **onnx**: the model in eval mode, input ``images`` (N, 3, H, W) in [0, 1] with a dynamic batch, output
  ``logits``; normalisation is inside. Needs the ``onnx`` package (``pip install onnx``); ONNX Runtime
  runs the result (the tests compare it with PyTorch to 1e-5 when it is installed).
"""

from __future__ import annotations

import json
import math
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkp.foundation.errors import CheckpointError
from gkp.foundation.files import replaced_atomically

SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
TORCH_DTYPES = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}
PAYLOAD_KEYS = ("arch", "arch_args", "plan", "metadata")


def write_safetensors(payload: dict[str, Any], path: str | Path) -> None:
    """A checkpoint payload (``gkp.application.checkpoints.io``) as a safetensors file, written atomically."""
    if sys.byteorder != "little":
        raise CheckpointError("safetensors stores little-endian bytes; export on a little-endian machine")
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name, tensor in payload["state_dict"].items():
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{name}: safetensors has no type for {tensor.dtype}")
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape)}
        header[name]["data_offsets"] = [offset, offset + len(raw)]
        blobs.append(raw)
        offset += len(raw)
    try:
        described = json.dumps({key: payload[key] for key in PAYLOAD_KEYS})
    except TypeError as error:
        raise CheckpointError(f"the checkpoint's description is not JSON ({error})") from error
    header["__metadata__"] = {"format": "pt", "gkp": described}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    _write_atomic(Path(path), struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        with replaced_atomically(path) as temporary:
            temporary.write_bytes(data)
    except OSError as error:
        raise CheckpointError(f"cannot write {path} ({error.strerror or error})") from error


def read_safetensors(path: str | Path) -> dict[str, Any]:
    """The checkpoint payload of a safetensors file written by ``write_safetensors``."""
    data = Path(path).read_bytes()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = _mapping(json.loads(data[8 : 8 + length]), "header")
        described = _mapping(json.loads(_mapping(header.pop("__metadata__"), "metadata")["gkp"]), "gkp metadata")
        body = memoryview(data)[8 + length :]
        _check_byte_ranges(header, len(body))
        state = {name: _tensor(spec, body) for name, spec in header.items()}
    except (struct.error, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path} is not a safetensors file written by gkp export ({error})") from error
    return {**described, "state_dict": state}


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"its {what} is {type(value).__name__}, not a mapping")
    return value


def _check_byte_ranges(header: dict[str, Any], size: int) -> None:
    """As the safetensors format requires: the tensors' byte ranges cover the data exactly, in order,
    without overlapping (two tensors reading the same bytes would be accepted otherwise)."""
    ranges = sorted(tuple(_mapping(spec, "tensor entry")["data_offsets"]) for spec in header.values())
    end = 0
    for begin, stop in ranges:
        if begin != end or stop < begin:
            raise ValueError(f"its tensors' byte ranges overlap or leave a gap at byte {end}")
        end = stop
    if end != size:
        raise ValueError(f"its tensors' byte ranges end at byte {end}, its data at {size}")


def _tensor(spec: dict[str, Any], body: memoryview) -> torch.Tensor:
    dtype = TORCH_DTYPES[spec["dtype"]]
    begin, end = spec["data_offsets"]
    expected = math.prod(spec["shape"]) * torch.empty(0, dtype=dtype).element_size()
    if end - begin != expected or end > len(body):
        raise ValueError(f"bytes {begin}..{end} do not hold a {spec['dtype']} tensor of shape {spec['shape']}")
    raw = bytearray(body[begin:end])
    flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    return flat.view(dtype).reshape(spec["shape"])


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
