"""Exceptions with messages meant for the user: each names the problem and how to fix it."""

import os
from pathlib import Path


class GkpError(Exception):
    """Base class of every error the command line reports without a traceback."""


class ConfigError(GkpError, ValueError):
    """A config key is unknown, has the wrong type or an impossible value."""


class DataError(GkpError):
    """A dataset is missing or malformed."""


class CheckpointError(GkpError):
    """A checkpoint file is missing, corrupt, foreign or does not fit the model."""


class RunFolderError(GkpError):
    """A run folder holds a different experiment, or finished results would be overwritten."""


class NonFiniteLossError(GkpError):
    """The training loss became NaN or infinite."""


class PruningError(GkpError):
    """A pruning plan cannot be computed or applied (impossible rate, invalid indices, ...)."""


class AttackSanityError(GkpError):
    """An attack produced an invalid adversarial batch (outside the eps-ball or image range, NaN)."""


def relative_path_note(path: str | Path) -> str:
    """What a missing relative path was read against: configs' paths resolve from the current folder."""
    if Path(path).is_absolute():
        return ""
    return f" (relative paths are read from the current folder, {os.getcwd()}, not from the config file's)"


def not_a_file(path: str | Path) -> str:
    """Why ``path`` cannot be read as a file, for a message: "is a folder, not a file", or "does not
    exist" with the note on relative paths."""
    if Path(path).is_dir():
        return "is a folder, not a file"
    return f"does not exist{relative_path_note(path)}"


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name where the message is empty."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def own_message(error: BaseException) -> str:
    """An error's message, also when a DataLoader worker raised it: torch raises it again in the main
    process with the worker's traceback as its text, the original message on the last line."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    return text.strip().splitlines()[-1].split(": ", 1)[-1]
