"""Files written whole or not at all: a crash never leaves a half-written checkpoint, JSON or array file.
And what this machine keeps across runs: the user cache folder, small JSON caches, the digests of files.

In a run that spans several processes (``torchrun``, see ``gkp.mechanisms.engine.distributed``) every process
computes the same thing and only the first (rank 0) writes: elsewhere these helpers write nothing."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gkp.foundation.errors import RunFolderError

log = logging.getLogger(__name__)

FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk or quota: the work written before is safe


@contextmanager
def replaced_atomically(path: Path, extension: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to (a hidden name ending in ``.tmp`` and ``extension``, for
    writers that judge a file by its extension); it is renamed over ``path`` when the block ends normally
    and removed when it does not."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{extension}")
    try:
        yield temporary
        if writes_files():
            os.replace(temporary, path)
    except OSError as error:
        if error.errno in FULL:  # a write names no file: say which one could not be written
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    finally:
        temporary.unlink(missing_ok=True)


TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp(\.\w+)?$")  # the names ``replaced_atomically`` gives


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files that writes interrupted by a kill left under ``folder`` (those whose
    process is gone); returns how many."""
    removed = 0
    for path in folder.rglob(".*.tmp*"):
        match = TEMPORARY.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def writes_files() -> bool:
    """Whether this process writes the run's files: always, except in the processes of a multi-process run
    other than rank 0."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def read_json_mapping(path: Path, recovery: str) -> dict[str, Any]:
    """A JSON file holding a mapping (a run folder's results, markers, summaries), or a RunFolderError naming
    the file and ``recovery``, how to get past it, when it is truncated, unreadable or of another shape."""
    try:
        found = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RunFolderError(f"{path} is damaged or unreadable ({error}); {recovery}") from None
    if not isinstance(found, dict):
        raise RunFolderError(f"{path} holds a {type(found).__name__}, not what gkp writes there; {recovery}")
    return found


def write_text_atomic(path: Path, text: str) -> None:
    with replaced_atomically(path) as temporary:
        temporary.write_text(text)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------------------------- this machine's caches


def user_cache(leaf: str, variable: str) -> Path:
    """``$variable`` if set, else ``$XDG_CACHE_HOME/robust-gkp/<leaf>`` (``~/.cache`` without it): where
    what this machine keeps across runs lives (converted checkpoints, form timings, file digests;
    scripts/env.sh keeps its virtual environment beside them)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robust-gkp" / leaf
    return Path(os.environ.get(variable, default))


def read_json_cache(path: Path) -> dict[str, Any]:
    """A cache file's mapping; an absent, unreadable or foreign file is an empty cache."""
    try:
        found = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def add_to_json_cache(path: Path, new: dict[str, Any], keep_recorded: bool = False) -> None:
    """Add entries to a cache file, replacing those of the same keys, or, with ``keep_recorded``, keeping
    an entry another process recorded meanwhile (so that all keep one choice). A cache that cannot be
    written is only logged: it will be computed again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recorded = read_json_cache(path)
        write_json_atomic(path, {**new, **recorded} if keep_recorded else {**recorded, **new})
    except OSError as error:
        log.warning("could not record in the cache %s (%s): it will be computed again", path, error)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_cache() -> Path:
    return user_cache("digests.json", "GKP_DIGEST_CACHE")


def cached_digest(key: str, stamp: Any, compute: Callable[[], str]) -> str:
    """A digest kept in the digest cache under ``key`` while ``stamp`` (what changes when the content does:
    sizes, modification times) is the one recorded with it; computed (and recorded) otherwise."""
    known = read_json_cache(digest_cache()).get(key)
    if isinstance(known, list) and len(known) == 2 and known[0] == stamp:
        return known[1]
    digest = compute()
    add_to_json_cache(digest_cache(), {key: [stamp, digest]})
    return digest


def file_digest(path: Path) -> str:
    """The sha256 of a file's content, computed again only when its size or modification time changed."""
    path = Path(path).resolve()
    status = path.stat()
    return cached_digest(str(path), [status.st_size, status.st_mtime_ns], lambda: sha256_of(path))
