"""Released checkpoints by name: ``model.checkpoint: zoo:NAME``, ``gkp fetch NAME`` and ``gkp zoo``.

``checkpoints/MANIFEST`` lists each entry: its URL, its sha256 (or, where the source publishes only the
first hex digits in the file name, that prefix, checked as torch.hub checks it), the importer that converts
it (``gkp.importers``), its architecture, dataset and normalisation, source, licence and reported metrics.
``fetch`` downloads a file once (torch.hub's downloader, with a progress bar), verifies it, converts it
into our checkpoint format and caches the result in ``$GKP_ZOO_CACHE`` (default
``~/.cache/robust-gkp/zoo``); later calls return the cached checkpoint without touching the network. A file
brought in by hand (``gkp fetch NAME --from FILE``, for machines without internet) is verified and converted
the same way. A file that fails verification is deleted and never converted.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from gkp.checkpoint import save_checkpoint
from gkp.errors import CheckpointError, ConfigError, GkpError

MANIFEST = Path(__file__).resolve().parents[1] / "checkpoints" / "MANIFEST"
PREFIX = "zoo:"


class ZooError(GkpError):
    """A zoo name, download or file that cannot be used."""


@dataclass(frozen=True)
class ZooEntry:
    name: str
    url: str
    format: str
    arch: str
    num_classes: int
    dataset: str
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    licence: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    reported: dict[str, Any] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def check_digest(self, digest: str) -> bool:
        return digest == self.sha256 if self.sha256 else digest.startswith(self.sha256_prefix or "\0")


def _entry(name: str, raw: Any) -> ZooEntry:
    known = {f.name for f in fields(ZooEntry)} - {"name"}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ZooError(f"{MANIFEST}: entry '{name}' must be a mapping of {', '.join(sorted(known))}")
    try:
        entry = ZooEntry(name=name, **{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})
    except (KeyError, TypeError) as error:
        raise ZooError(f"{MANIFEST}: entry '{name}' is incomplete ({error})") from error
    if (entry.sha256 is None) == (entry.sha256_prefix is None):
        raise ZooError(f"{MANIFEST}: entry '{name}' needs exactly one of sha256 and sha256_prefix")
    return entry


def load_manifest(path: Path = MANIFEST) -> dict[str, ZooEntry]:
    raw = yaml.safe_load(path.read_text()) or {}
    return {name: _entry(name, value) for name, value in raw.items()}


def entry_named(name: str, manifest: dict[str, ZooEntry] | None = None) -> ZooEntry:
    manifest = load_manifest() if manifest is None else manifest
    if name not in manifest:
        raise ConfigError(f"zoo: no checkpoint named '{name}'; known: {', '.join(manifest)} (gkp zoo lists them)")
    return manifest[name]


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robust-gkp" / "zoo"
    return Path(os.environ.get("GKP_ZOO_CACHE", default))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected(entry: ZooEntry) -> str:
    return entry.sha256 or f"{entry.sha256_prefix}... (the first hex digits)"


def _download(entry: ZooEntry, destination: Path) -> None:
    """The file at the entry's URL into ``destination``, or a ZooError saying how to bring it in by hand."""
    try:
        torch.hub.download_url_to_file(entry.url, str(destination), progress=True)
    except (urllib.error.URLError, OSError, ValueError) as error:
        destination.unlink(missing_ok=True)
        raise ZooError(
            f"could not download {entry.url} ({getattr(error, 'reason', error)}). Without internet here: "
            f"download that URL on a machine that has it (sha256 {_expected(entry)}), copy the file to this "
            f"machine and run: gkp fetch {entry.name} --from FILE"
        ) from error


def _verified(entry: ZooEntry, path: Path, delete: bool) -> str:
    digest = sha256_of(path)
    if not entry.check_digest(digest):
        if delete:
            path.unlink(missing_ok=True)
        raise ZooError(
            f"{path} has sha256 {digest}, but {entry.name} is {_expected(entry)}: it is not the released file"
            f"{' (the download was deleted)' if delete else ''}"
        )
    return digest


def cached_path(name: str) -> Path:
    return cache_dir() / f"{name}.ckpt"


def fetch(name: str, source_file: str | Path | None = None, manifest: dict[str, ZooEntry] | None = None) -> Path:
    """The converted checkpoint of zoo entry ``name``: cached, else downloaded (or read from
    ``source_file``), verified, converted and cached."""
    from gkp.importers import IMPORTERS

    entry = entry_named(name, manifest)
    destination = cached_path(name)
    if destination.is_file() and source_file is None:
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    download = destination.with_name(f".{name}.{os.getpid()}.download")
    raw = Path(source_file) if source_file is not None else download
    try:
        if source_file is None:
            _download(entry, download)
        elif not raw.is_file():
            raise ZooError(f"--from {raw}: no such file")
        digest = _verified(entry, raw, delete=source_file is None)
        try:
            model = IMPORTERS.get(entry.format).convert(raw, entry)
        except CheckpointError as error:
            raise ZooError(f"{name}: {error}") from error
        metadata = {"zoo": name, "url": entry.url, "sha256": digest, "source": entry.source}
        metadata |= {"licence": entry.licence, "reported": entry.reported, "input_size": entry.input_size}
        save_checkpoint(destination, model, metadata)
    finally:
        download.unlink(missing_ok=True)
    return destination


def is_zoo_name(checkpoint: str | None) -> bool:
    return checkpoint is not None and checkpoint.startswith(PREFIX)


def local_checkpoint(checkpoint: str) -> Path:
    """The file behind a ``model.checkpoint`` value: a path as given, or a zoo entry, fetched if needed."""
    return fetch(checkpoint[len(PREFIX) :]) if is_zoo_name(checkpoint) else Path(checkpoint)


def check_zoo_name(checkpoint: str | None) -> None:
    """A ``zoo:NAME`` in a config must name a manifest entry (checked before any download)."""
    if is_zoo_name(checkpoint):
        try:
            entry_named(checkpoint[len(PREFIX) :])
        except ConfigError as error:
            raise ConfigError(f"model.checkpoint: {error}") from None


def zoo_table(manifest: dict[str, ZooEntry] | None = None) -> str:
    """One line per entry: name, arch, dataset, reported metrics, licence, source, and whether cached."""
    manifest = load_manifest() if manifest is None else manifest
    rows = [("name", "arch", "dataset", "reported", "licence", "cached", "source")]
    for name, entry in manifest.items():
        reported = ", ".join(f"{k} {v}" for k, v in entry.reported.items()) or "-"
        cached = "yes" if cached_path(name).is_file() else "no"
        rows.append((name, entry.arch, entry.dataset, reported, entry.licence, cached, entry.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows)
