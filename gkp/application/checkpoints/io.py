"""Checkpoints: ``{arch, arch_args, plan, state_dict, metadata}`` files, never pickled modules.

Saving is atomic (a temporary file in the same folder, then a rename), so an interrupted save leaves
the previous file intact. Loading uses ``torch.load(weights_only=True)``, which refuses to run code
from the file; a pruned checkpoint is rebuilt by applying its plan to a freshly built dense model and
then loading the weights. Resume files add ``training`` (the loop's position, optimizers, schedules, step
count, hooks' state, history and best epochs: ``gkp.mechanisms.engine.train.TrainingState``).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkp.application.catalog import MODELS, build_model
from gkp.application.checkpoints.export import read_safetensors
from gkp.foundation.contracts import model_spec
from gkp.foundation.errors import CheckpointError, GkpError, first_line, not_a_file
from gkp.foundation.files import replaced_atomically
from gkp.mechanisms.pruning.plan import Plan
from gkp.mechanisms.pruning.surgery import apply as apply_plan

REQUIRED_KEYS = ("arch", "arch_args", "plan", "state_dict", "metadata")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as temporary, open(temporary, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def checkpoint_payload(model: nn.Module, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = model_spec(model)
    return {
        "arch": spec.arch,
        "arch_args": spec.args,
        "plan": spec.plan,
        "state_dict": model.state_dict(),
        "metadata": dict(metadata or {}),
    }


def save_checkpoint(path: str | Path, model: nn.Module, metadata: dict[str, Any] | None = None, **extra: Any) -> None:
    atomic_save({**checkpoint_payload(model, metadata), **extra}, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict, loaded without executing anything from the file (a ``.safetensors`` file of
    ``gkp export`` as well)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {not_a_file(path)}")
    payload = read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_file(path)
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a gkp checkpoint: expected keys {', '.join(REQUIRED_KEYS)}, "
            f"found {found}. A plain state_dict can be wrapped with gkp.application.checkpoints.io.save_checkpoint"
        )
    if not all(isinstance(payload[key], dict) for key in ("arch_args", "state_dict", "metadata")):
        raise CheckpointError(
            f"{path} is not a gkp checkpoint: its arch_args, state_dict and metadata must be mappings"
        )
    size = payload["metadata"].get("input_size")
    if size is not None and (type(size) is not int or size < 1):
        raise CheckpointError(f"{path}: its metadata's input_size must be a whole number >= 1, got {size!r:.40}")
    return payload


def input_size_of(payload: dict[str, Any], asked: int | None = None) -> int:
    """The image side a checkpoint's model is measured or exported at: ``asked``, else the one its
    metadata records, else its architecture's usual one."""
    return asked or payload["metadata"].get("input_size") or MODELS.get(payload["arch"]).input_size


def _read_torch_file(path: Path) -> Any:
    """What a zip-format torch file holds, loaded with ``weights_only``: tensors and plain data only."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is corrupt or not a torch checkpoint (not a zip archive)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        asked = f"'{found.group(1)}'" if found else "Python objects"
        raise CheckpointError(
            f"{path} is not a gkp checkpoint: it asks to rebuild {asked}, which is refused. If it is a "
            f"whole-model pickle such as the SR-GKP authors' released files, convert it with: "
            f"gkp import-checkpoint {path} OUT.ckpt"
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path} is corrupt or not a torch checkpoint ({error})") from error
    return payload


def model_from_payload(payload: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild the (possibly pruned) model a checkpoint describes and load its weights."""
    try:
        model = build_model(payload["arch"], **payload["arch_args"])
        if payload["plan"] is not None:
            model = apply_plan(model, Plan.from_dict(payload["plan"], f"{source}: plan"))
    except (GkpError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{source}: cannot rebuild its model ({first_line(error)})") from error
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{source}: its weights do not fit {payload['arch']} ({first_line(error)} ...)"
        ) from error
    return model


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model on ``device`` in eval mode, metadata) from a checkpoint file."""
    payload = read_checkpoint(path)
    model = model_from_payload(payload, str(path)).to(device)
    return model.eval(), payload["metadata"]
