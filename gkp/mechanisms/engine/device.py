"""Device, precision and determinism settings resolved from the config."""

from __future__ import annotations

import os

import torch

from gkp.foundation.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the first CUDA GPU when one is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' was asked for but no CUDA GPU is visible; use device: auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device: '{name}' does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: 'mps' was asked for but is not available; use device: auto or cpu")
    return device


def benchmark_device(name: str) -> torch.device:
    """``resolve_device`` for a benchmark, with cuDNN set as a run sets it by default (its fastest kernels,
    not bit-identical ones), so that a benchmark measures what a run gets."""
    set_determinism(False)
    return resolve_device(name)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bfloat16 on CUDA GPUs that support it (else float16), none on CPU."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError(f"amp: fp16 needs a CUDA device, the run uses {device}; use amp: auto, off or bf16")
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if setting == "fp16" else torch.bfloat16


def use_channels_last(setting: str, device: torch.device) -> bool:
    """``auto`` trains in channels_last on CUDA (cuDNN's fast convolutions) and on the CPU (oneDNN's:
    ResNet-20 on one core, our loop against the plain DataLoader loop, 1.15-1.25x channels_last, 1.02-1.06x
    contiguous); other devices' support varies, so there it stays off."""
    return setting == "on" or (setting == "auto" and device.type in ("cuda", "cpu"))


def set_determinism(deterministic: bool) -> None:
    """Deterministic kernels make reruns (and resumed runs) bit-identical on the same machine.

    On the CPU every kernel we use is deterministic. On CUDA a few backward kernels (adaptive average
    pooling, index accumulation) have no deterministic version; torch then warns instead of stopping.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
