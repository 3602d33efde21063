"""Files written whole or not at all: a crash never leaves a half-written checkpoint, JSON or array file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` (a hidden name ending in ``suffix``) to write to; it is renamed
    over ``path`` when the block ends normally and removed when it does not."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
