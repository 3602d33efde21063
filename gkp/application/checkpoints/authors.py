"""Import the SR-GKP authors' released checkpoints without executing anything from them.

Their files (e.g. ``adv_robust_gkp_resnet20_cifar10.pt``) are whole-module pickles of their
``models.resnet.CifarResNet``: loading them the usual way would import and run their code. Here a
restricted unpickler rebuilds tensors from the archive's raw storages and turns every module object
into an inert record of its attributes; any other global the file asks for (``os.system``,
``builtins.eval``, ...) is refused before it is looked up. The records' parameters and buffers are then
renamed onto our ResNet (``stage_2.0.conv_a`` -> ``layer2.0.conv1``, ...) and saved in our checkpoint
format, with the authors' input normalisation inside the model.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkp.application.catalog import build_model
from gkp.application.checkpoints.io import save_checkpoint
from gkp.foundation.errors import CheckpointError, not_a_file

AUTHORS_MEAN = (0.4914, 0.4822, 0.4465)
AUTHORS_STD = (0.2023, 0.1994, 0.2010)

STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# Module classes the authors' pickles contain; each becomes an inert ModuleRecord.
AUTHORS_MODULE_CLASSES = {
    ("models.resnet", "CifarResNet"),
    ("models.resnet", "ResNetBasicblock"),
    ("models.res_utils", "DownsampleA"),
}
TORCH_MODULE_PREFIX = "torch.nn.modules."


class ModuleRecord:
    """What a pickled ``nn.Module`` held (its ``__dict__``), with no behaviour of its own."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


def _record_class(module: str, name: str) -> type:
    return type(name, (ModuleRecord,), {"qualified_name": f"{module}.{name}"})


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size, stride, requires_grad=False, backward_hooks=None, metadata=None
) -> torch.Tensor:
    """The view of ``storage`` the pickle describes, once checked to lie inside it and to hold no more
    values than it. The view itself allocates nothing, but loading it into a model copies all its values:
    a crafted size with stride 0 could ask for far more memory than the file holds. Weights are never such
    expanded views, so a view larger than its storage is refused."""
    size, stride = _whole_numbers(size, "size"), _whole_numbers(stride, "stride")
    (offset,) = _whole_numbers((offset,), "offset")
    if len(size) != len(stride):
        raise CheckpointError(f"a tensor of the file has {len(size)} sizes but {len(stride)} strides")
    count = math.prod(size)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True)) if count else offset - 1
    if count > storage.numel() or last >= storage.numel():
        raise CheckpointError(
            f"a tensor of the file (size {size}, stride {stride}, offset {offset}) does not fit its storage of "
            f"{storage.numel()} values: the file is corrupt or crafted"
        )
    return storage.as_strided(size, stride, offset)


def _whole_numbers(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in values):
        raise CheckpointError(f"a tensor of the file has a {what} that is not whole numbers >= 0: {values!r:.60}")
    return tuple(values)


def _rebuild_parameter(data: torch.Tensor, requires_grad=True, backward_hooks=None, *state) -> torch.Tensor:
    return data


class StorageType:
    """Stands for ``torch.FloatStorage`` etc. in persistent ids: it only names a dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


SAFE_CALLABLES = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and module records; refuses every other global."""

    def __init__(self, handle, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(handle)
        self.archive, self.prefix, self.source = archive, prefix, source
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_CALLABLES:
            return SAFE_CALLABLES[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(STORAGE_DTYPES[name])
        if (module, name) in AUTHORS_MODULE_CLASSES or (
            module.startswith(TORCH_MODULE_PREFIX) and re.fullmatch(r"[A-Za-z0-9_]+", name)
        ):
            return _record_class(module, name)
        raise CheckpointError(
            f"{self.source} asks the unpickler for '{module}.{name}', which is neither a "
            "tensor nor a module record; refusing to load it (nothing from the file was run)"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], StorageType)):
            raise CheckpointError(f"{self.source} holds an unknown persistent reference {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            if name not in self.archive.namelist():
                raise CheckpointError(f"{self.source} refers to a storage '{key}' its archive does not hold")
            raw = bytearray(self.archive.read(name))
            flat = torch.frombuffer(raw, dtype=storage_type.dtype) if raw else torch.empty(0, dtype=storage_type.dtype)
            if flat.numel() != numel:
                raise CheckpointError(f"{self.source}: storage {key} holds {flat.numel()} values, expected {numel}")
            self.storages[key] = flat
        return self.storages[key]


def _unpickle(path: Path) -> Any:
    """The object a zip-format torch pickle holds, through the restricted unpickler."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} holds {len(pickles)} data.pkl entries, expected one")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder") != b"little":
            raise CheckpointError(f"{path} was saved on a big-endian machine, which is not supported")
        with archive.open(pickles[0]) as handle:
            return RestrictedUnpickler(handle, archive, prefix, str(path)).load()


def unpickle_records(path: str | Path) -> ModuleRecord:
    """The root module record of a zip-format torch pickle, built without running any of its code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} {not_a_file(path)}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a complete zip-format torch file: it is truncated or corrupt (download it again and "
            "check its sha256), or saved in torch's legacy format, which the authors' releases are not"
        )
    try:
        root = _unpickle(path)
    except (
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        TypeError,
        ValueError,
        RuntimeError,
        MemoryError,
    ) as error:
        raise CheckpointError(f"{path} is corrupt or not a module pickle ({error})") from error
    except (zipfile.BadZipFile, zlib.error, OSError, KeyError) as error:
        raise CheckpointError(f"{path} is a corrupt zip archive ({error})") from error
    if not isinstance(root, ModuleRecord):
        raise CheckpointError(f"{path} does not hold a pickled module (found {type(root).__name__})")
    return root


def flatten_tensors(record: ModuleRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """The parameters and persistent buffers of a record tree, named like ``state_dict`` keys."""
    tensors: dict[str, torch.Tensor] = {}
    state = record.state
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is not None and name not in skipped:
                tensors[f"{prefix}{name}"] = tensor.clone()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            tensors.update(flatten_tensors(child, f"{prefix}{name}."))
    return tensors


AUTHORS_NAME_RULES = (
    (r"^conv_1_3x3\.", "conv1."),
    (r"^bn_1\.", "bn1."),
    (r"^stage_(\d+)\.(\d+)\.conv_a\.", r"layer\1.\2.conv1."),
    (r"^stage_(\d+)\.(\d+)\.bn_a\.", r"layer\1.\2.bn1."),
    (r"^stage_(\d+)\.(\d+)\.conv_b\.", r"layer\1.\2.conv2."),
    (r"^stage_(\d+)\.(\d+)\.bn_b\.", r"layer\1.\2.bn2."),
    (r"^classifier\.", "fc."),
)


def our_name(authors_name: str) -> str:
    for pattern, replacement in AUTHORS_NAME_RULES:
        renamed, hits = re.subn(pattern, replacement, authors_name)
        if hits:
            return renamed
    raise CheckpointError(f"the authors' tensor '{authors_name}' has no counterpart in our ResNet")


def authors_resnet(source: str | Path) -> nn.Module:
    """Our ResNet with the weights of an authors' CIFAR ResNet pickle and their normalisation inside."""
    root = unpickle_records(source)
    if root.qualified_name != "models.resnet.CifarResNet":
        raise CheckpointError(
            f"{source} holds a {root.qualified_name}; the importer knows the authors' models.resnet.CifarResNet"
        )
    tensors = {our_name(name): tensor for name, tensor in flatten_tensors(root).items()}
    blocks = {int(m.group(1)) for name in tensors if (m := re.match(r"layer1\.(\d+)\.", name))}
    num_classes = tensors["fc.weight"].shape[0]
    model = build_model(
        f"resnet{6 * len(blocks) + 2}", num_classes=num_classes, mean=list(AUTHORS_MEAN), std=list(AUTHORS_STD)
    )
    expected = {k for k in model.state_dict() if not k.startswith("normalize.")}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise CheckpointError(f"{source} does not match our ResNet: missing {missing[:5]}, unexpected {extra[:5]}")
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:
        raise CheckpointError(f"{source}: tensor shapes do not match ({error})") from error
    return model


def import_authors_resnet(source: str | Path, destination: str | Path) -> dict[str, Any]:
    """Convert an authors' CIFAR ResNet pickle into our checkpoint at ``destination``; returns its metadata."""
    if Path(destination).is_dir():
        raise CheckpointError(
            f"{destination} is a folder; give the file to write, e.g. {Path(destination) / 'resnet20.ckpt'}"
        )
    model = authors_resnet(source)
    metadata = {
        "source": str(source),
        "imported_from": "authors' whole-module pickle (adv_robust_gkp)",
        "input_size": 32,
    }
    save_checkpoint(destination, model, metadata)
    return metadata
