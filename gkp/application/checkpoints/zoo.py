"""Released checkpoints by name: ``model.checkpoint: zoo:NAME``, ``gkp fetch NAME`` and ``gkp zoo``.

``MANIFEST`` (beside this file, shipped in the package) lists each entry: its URL, its sha256 (or, where
the source publishes only the first hex digits in the file name, that prefix, checked as torch.hub checks
it), the importer that converts it (``gkp.application.checkpoints.importers``), its architecture, dataset
and normalisation, source, licence and reported metrics.
``fetch`` downloads a file once (torch.hub's downloader, with a progress bar), verifies it, converts it
into our checkpoint format and caches the result in ``$GKP_ZOO_CACHE`` (default
``$XDG_CACHE_HOME/robust-gkp/zoo``, i.e. ``~/.cache/robust-gkp/zoo``) under a name that carries the
published hash; later calls return the cached checkpoint without touching the network. A file brought in
by hand (``gkp fetch NAME --from FILE``, for machines without internet) is copied, verified and converted
the same way. A file that fails verification is deleted and never converted.
"""

from __future__ import annotations

import os
import shutil
import textwrap
import urllib.error
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from gkp.application.checkpoints.io import read_checkpoint, save_checkpoint
from gkp.foundation.errors import CheckpointError, ConfigError, GkpError
from gkp.foundation.files import file_digest, sha256_of, user_cache, write_text_atomic

MANIFEST = Path(__file__).resolve().parent / "MANIFEST"  # package data: installed with the package
PREFIX = "zoo:"
TABLE_WIDTH = 100  # gkp zoo's lines, at most


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

    @property
    def digest(self) -> str:
        """The published hash, in full or its prefix."""
        return (self.sha256 or self.sha256_prefix).lower()

    def check_digest(self, digest: str) -> bool:
        return digest == self.digest if self.sha256 else digest.startswith(self.digest)


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
    return user_cache("zoo", "GKP_ZOO_CACHE")


def _expected(entry: ZooEntry) -> str:
    return entry.sha256 or f"{entry.sha256_prefix}... (the first hex digits)"


def _by_hand(entry: ZooEntry) -> str:
    return (
        f"download {entry.url} on a machine that has internet (sha256 {_expected(entry)}), copy the file "
        f"to this machine and run: gkp fetch {entry.name} --from FILE"
    )


def _download(entry: ZooEntry, destination: Path) -> None:
    """The file at the entry's URL into ``destination``, or a ZooError saying how to bring it in by hand."""
    try:
        torch.hub.download_url_to_file(entry.url, str(destination), progress=True)
    except urllib.error.HTTPError as error:
        message = f"{entry.url} answered {error.code} {error.reason}: the file may have moved; {_by_hand(entry)}"
        raise ZooError(message) from None
    except urllib.error.URLError as error:
        message = f"could not reach {entry.url} ({error.reason}). Without internet here: {_by_hand(entry)}"
        raise ZooError(message) from None
    except OSError as error:
        raise ZooError(f"could not write the download of {entry.url} to {destination.parent} ({error})") from error


def _verified(entry: ZooEntry, path: Path, origin: str | Path) -> str:
    """The sha256 of ``path`` (a download or copy of ``origin``), or a ZooError when it is not the
    entry's; the caller deletes the file."""
    digest = sha256_of(path)
    if not entry.check_digest(digest):
        raise ZooError(
            f"{origin} has sha256 {digest}, but {entry.name} is {_expected(entry)}: it is not the released file, "
            "so nothing was converted"
        )
    return digest


def cached_path(entry: ZooEntry) -> Path:
    """The converted checkpoint's file, named by the published hash, so that a changed entry is fetched anew."""
    return cache_dir() / f"{entry.name}-{entry.digest[:8]}.ckpt"


def recorded_digest(converted: Path) -> Path:
    """The file beside a converted checkpoint holding the sha256 it had when it was converted."""
    return converted.with_name(converted.name + ".sha256")


def _check_cached(entry: ZooEntry, converted: Path) -> None:
    """A cached checkpoint is used only while it is what was converted: its digest (recomputed when its
    size or time changed) must be the one recorded then. A cache made before digests were recorded is
    checked against its own record of the release it came from, and its digest recorded."""
    digest, record = file_digest(converted), recorded_digest(converted)
    if not record.is_file():
        metadata = read_checkpoint(converted)["metadata"]
        if metadata.get("zoo") != entry.name or not entry.check_digest(str(metadata.get("sha256"))):
            raise ZooError(
                f"{converted} is not {entry.name}'s converted checkpoint: {_replace_cached(entry, converted)}"
            )
        write_text_atomic(record, digest + "\n")
    elif record.read_text().strip() != digest:
        raise ZooError(
            f"{converted} changed since it was converted (sha256 {digest}): {_replace_cached(entry, converted)}"
        )


def _replace_cached(entry: ZooEntry, converted: Path) -> str:
    return f"delete it (and {recorded_digest(converted).name}) and fetch it again: gkp fetch {entry.name}"


def fetch(name: str, source_file: str | Path | None = None, manifest: dict[str, ZooEntry] | None = None) -> Path:
    """The converted checkpoint of zoo entry ``name``: cached (and checked to be what was converted),
    else downloaded (or copied from ``source_file``), verified, converted and cached."""
    entry = entry_named(name, manifest)
    if cache_dir().exists() and not cache_dir().is_dir():
        raise ZooError(f"the zoo's cache {cache_dir()} is a file, not a folder; set GKP_ZOO_CACHE to a folder")
    destination = cached_path(entry)
    if destination.is_file() and source_file is None:
        _check_cached(entry, destination)
        return destination
    raw = destination.with_name(f".{destination.name}.{os.getpid()}.download")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        _bring_in(entry, source_file, raw)
        digest = _verified(entry, raw, source_file or entry.url)
        _convert(entry, raw, digest, destination)
    except OSError as error:
        raise ZooError(f"{name}: {error}") from error
    finally:
        raw.unlink(missing_ok=True)
    return destination


def _bring_in(entry: ZooEntry, source_file: str | Path | None, raw: Path) -> None:
    """The released file at ``raw``: downloaded, or a copy of ``source_file`` (so that what is verified is
    what is converted, and the user's file is never touched)."""
    if source_file is None:
        _download(entry, raw)
    elif not Path(source_file).is_file():
        raise ZooError(f"--from {source_file}: no such file")
    else:
        shutil.copyfile(source_file, raw)


def _convert(entry: ZooEntry, raw: Path, digest: str, destination: Path) -> None:
    from gkp.application.catalog import IMPORTERS

    try:
        model = IMPORTERS.get(entry.format).convert(raw, entry)
    except CheckpointError as error:
        raise ZooError(f"{entry.name}: {error}") from error
    metadata = {"zoo": entry.name, "url": entry.url, "sha256": digest, "source": entry.source}
    metadata |= {"licence": entry.licence, "reported": entry.reported, "input_size": entry.input_size}
    save_checkpoint(destination, model, metadata)
    write_text_atomic(recorded_digest(destination), file_digest(destination) + "\n")


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
    """One line per entry (name, arch, dataset, reported metrics, licence, whether cached), then each
    source with the entries from it and the licence's details, wrapped to TABLE_WIDTH."""
    manifest = load_manifest() if manifest is None else manifest
    rows = [("name", "arch", "dataset", "reported", "licence", "cached")]
    sources: dict[str, list[str]] = {}
    for name, entry in manifest.items():
        metrics = ", ".join(f"{k.removeprefix(entry.dataset + '_')} {v}" for k, v in entry.reported.items())
        licence, _, details = entry.licence.partition(" (")
        cached = "yes" if cached_path(entry).is_file() else "no"
        rows.append((name, entry.arch, entry.dataset, metrics or "-", licence, cached))
        sources.setdefault(entry.source + (f"; licence: {entry.licence}" if details else ""), []).append(name)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    notes = [
        textwrap.fill(f"{', '.join(names)}: {source}", TABLE_WIDTH, subsequent_indent="    ")
        for source, names in sources.items()
    ]
    return "\n".join([*table, "", "sources:", *notes])
