"""Files written whole or not at all: a crash never leaves a half-written checkpoint, JSON or array file.

In a run that spans several processes (``torchrun``, see ``gkp.mechanisms.engine.distributed``) every process computes
the same thing and only the first (rank 0) writes: elsewhere these helpers write nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replaced_atomically(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` (a hidden name ending in ``suffix``) to write to; it is renamed
    over ``path`` when the block ends normally and removed when it does not."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        yield temporary
        if writes_files():
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def writes_files() -> bool:
    """Whether this process writes the run's files: always, except in the processes of a multi-process run
    other than rank 0."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def write_text_atomic(path: Path, text: str) -> None:
    with replaced_atomically(path) as temporary:
        temporary.write_text(text)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
