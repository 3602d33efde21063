"""The config and checkpoint readers on random bytes and on random mutations of valid files: every case
ends in a valid result or in one of our errors (``GkpError``, a one-line message at the command line),
never in another exception, and never maps more memory than the file's size warrants (the process's
address space is bounded while the cases run: a reader that believed a damaged size and allocated for it
fails the test). A few hundred seeded cases in the default run, many more behind ``slow``."""

from __future__ import annotations

import resource
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gkp.application.catalog import build_model
from gkp.application.checkpoints.authors import unpickle_records
from gkp.application.checkpoints.export import write_safetensors
from gkp.application.checkpoints.io import checkpoint_payload, model_from_payload, read_checkpoint
from gkp.application.config import load_experiment
from gkp.foundation.errors import GkpError
from gkp.mechanisms.pruning.plan import Plan
from gkp.mechanisms.pruning.surgery import apply

from conftest import tiny_config

QUICK, THOROUGH = 120, 2000  # cases per reader: in the default run, behind slow


def mutated(original: bytes, rng: np.random.Generator) -> bytes:
    """``original`` with a few random edits: bytes changed, a span deleted, duplicated or cut off, or
    random bytes inserted; now and then only random bytes."""
    data = bytearray(original)
    if rng.random() < 0.1 or not data:
        return bytes(rng.integers(0, 256, int(rng.integers(0, 512)), dtype=np.uint8))
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.integers(0, len(data))) if data else 0
        kind = rng.integers(0, 5)
        if kind == 0 and data:
            data[at] = int(rng.integers(0, 256))
        elif kind == 1:
            del data[at : at + int(rng.integers(1, 32))]
        elif kind == 2:
            data[at:at] = data[at : at + int(rng.integers(1, 64))]
        elif kind == 3:
            data = data[:at]
        else:
            data[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
    return bytes(data)


def ours_or_fine(read, path) -> None:
    """Reading ends in a result or in our error."""
    try:
        read(path)
    except GkpError:
        pass


MEMORY_PER_BYTE, MEMORY_FLOOR = 64, 256 << 20  # what reading a file may map beyond the process's own


@contextmanager
def address_space_bounded(extra: int):
    """Allocations fail (MemoryError, or torch's RuntimeError) beyond ``extra`` bytes more than the process
    maps now: the soft RLIMIT_AS, restored after."""
    status = Path("/proc/self/status")
    if not status.is_file():  # not Linux: the cases run unbounded
        yield
        return
    mapped = next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines() if line.startswith("VmSize"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    bound = mapped + extra if hard == resource.RLIM_INFINITY else min(mapped + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (bound, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def fuzz(tmp_path, name: str, original: bytes, read, cases: int) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / name
    ours_or_fine(read, _written(path, original))  # the valid file, read once unbounded (lazy imports, caches)
    for case in range(cases):
        data = mutated(original, rng)
        try:
            with address_space_bounded(max(MEMORY_FLOOR, MEMORY_PER_BYTE * len(data))):
                ours_or_fine(read, _written(path, data))
        except Exception as error:  # noqa: BLE001 (the point: which exception, on which bytes)
            (tmp_path / f"failing-{case}-{name}").write_bytes(data)
            raise AssertionError(f"case {case} of {name} ended in {type(error).__name__}: {error}") from error


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def valid_config() -> bytes:
    config = tiny_config(stages=["train", "prune", "eval"], prune={"method": "srgkp", "rate": 0.5})
    return yaml.safe_dump(config).encode()


def read_model(path) -> None:
    model_from_payload(read_checkpoint(path), str(path))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, bytes]:
    """A pruned checkpoint in each format gkp writes."""
    folder = tmp_path_factory.mktemp("valid")
    dense = build_model("resnet8")
    layers = {"layer1.0.conv1": {"type": "filters", "kept": [0, 2, 4]}, "layer2.0": {"type": "removed_block"}}
    pruned = apply(dense, Plan.from_dict({"format": 1, "method": "x", "rate": None, "layers": layers}))
    torch.save(checkpoint_payload(pruned), folder / "pruned.ckpt")
    write_safetensors(checkpoint_payload(pruned), folder / "pruned.safetensors")
    return {name: (folder / name).read_bytes() for name in ("pruned.ckpt", "pruned.safetensors")}


@pytest.mark.parametrize("cases", [QUICK, pytest.param(THOROUGH, marks=pytest.mark.slow)])
def test_the_config_reader_on_damaged_configs(tmp_path, cases):
    fuzz(tmp_path, "config.yaml", valid_config(), load_experiment, cases)


@pytest.mark.parametrize("cases", [QUICK, pytest.param(THOROUGH, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["pruned.ckpt", "pruned.safetensors"])
def test_the_checkpoint_reader_on_damaged_checkpoints(tmp_path, checkpoints, name, cases):
    fuzz(tmp_path, name, checkpoints[name], read_model, cases)


@pytest.mark.parametrize("cases", [QUICK // 2, pytest.param(THOROUGH, marks=pytest.mark.slow)])
def test_the_authors_importer_on_damaged_releases(tmp_path, shared, cases):
    release = (shared / "checkpoints" / "adv_robust_gkp_resnet20_cifar10.pt").read_bytes()
    fuzz(tmp_path, "release.pt", release, unpickle_records, cases)


def test_the_memory_bound_stops_a_reader_that_believes_a_damaged_size(tmp_path):
    """The bound the cases run under bites: a reader allocating 4 GB for a 1 KB file fails the fuzz test."""

    def credulous(path):
        torch.empty(1 << 30, dtype=torch.float32).fill_(0)  # 4 GB, as a size read from damaged bytes would ask

    def reader(path):  # the valid file reads fine; a damaged one is believed
        return path.read_bytes() == bytes(1024) or credulous(path)

    with pytest.raises(AssertionError, match=r"case \d+ of damaged.bin ended in (RuntimeError|MemoryError)"):
        fuzz(tmp_path, "damaged.bin", bytes(1024), reader, 50)
