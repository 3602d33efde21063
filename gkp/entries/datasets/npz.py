"""npz files of ``images`` (uint8 N x H x W x 3) and ``labels``: ``data.path`` for evaluation only, or
``data.train_path`` and ``data.test_path``."""

from __future__ import annotations

from pathlib import Path

from gkp.entries.datasets.arrays import loader_of, read_npz
from gkp.foundation.contracts import Dataset
from gkp.foundation.errors import ConfigError, DataError
from gkp.foundation.files import file_digest


def check_paths(cfg, trains: bool) -> None:
    if not (cfg.path or (cfg.train_path and cfg.test_path)):
        raise ConfigError(
            "data.path: an npz dataset needs data.path (evaluation only) or both data.train_path and data.test_path"
        )
    if trains and not cfg.train_path:
        raise ConfigError(
            "data.train_path: the train/finetune stages need an npz training file; "
            "data.path is used for evaluation only"
        )


def content(cfg) -> str:
    """The digests of the files the section names, each as ``key: sha256``."""
    named = {key: getattr(cfg, key) for key in ("path", "train_path", "test_path") if getattr(cfg, key)}
    try:
        return ", ".join(f"{key}: {file_digest(Path(path))}" for key, path in named.items())
    except OSError as error:
        raise DataError(f"npz: cannot read {error.filename} ({error.strerror})") from error


ENTRY = Dataset(
    "npz",
    loader_of(lambda cfg, classes: read_npz(cfg.path, cfg.train_path, cfg.test_path)),
    "npz files of uint8 images (N x H x W x 3) and labels: data.path, or data.train_path + data.test_path",
    check_paths,
    content=content,
)
