"""Build frozen dataclasses from plain YAML data with strict, path-naming validation.

``build(cls, data, path)`` checks that ``data`` is a mapping whose keys are fields of ``cls``, converts
each value to the field's annotated type (str, int, float, bool, Literal, Optional, tuple[...], nested
dataclasses) and runs the field's ``check`` from its metadata. Every error names the full key path and
what would be valid. Numbers may be written as fractions (``eps: 8/255``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Literal

import yaml

from gkp.foundation.errors import ConfigError
from gkp.foundation.registry import did_you_mean

Check = Callable[[Any], "str | None"]


def option(
    default: Any = dataclasses.MISSING,
    *,
    check: Check | None = None,
    doc: str = "",
    default_factory: Any = dataclasses.MISSING,
    default_text: str = "",
) -> Any:
    """A dataclass field with an optional validity check (returns an error text or None), a doc line and,
    for a default computed elsewhere, how the config reference shows it (``default_text``)."""
    metadata = {"check": check, "doc": doc, "default_text": default_text}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}, got {v}"


def positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def in_open_unit_interval(v: float) -> str | None:
    return None if 0 < v < 1 else f"must be in (0, 1) (exclusive), got {v}"


def in_unit_interval(v: float) -> str | None:
    return None if 0 <= v <= 1 else f"must be in [0, 1], got {v}"


def parse_number(value: Any, path: str) -> float:
    """A float from a number or a fraction string such as ``"8/255"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: must be a number, got the boolean {value}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{path}: must be a number such as 0.03 or 8/255, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def convert(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return convert(options[0], value, path)
        raise TypeError(f"unsupported union {tp} at {path}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{path}: must be one of {', '.join(map(repr, args))}, got {value!r}"
                f"{did_you_mean(str(value), [str(a) for a in args])}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: must be a list, got {value!r}")
        item_type = args[0]
        return tuple(convert(item_type, item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: must be a whole number, got {value!r}")
        return value
    if tp is float:
        return parse_number(value, path)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {_type_name(tp)} at {path}")


def build(cls: type, data: Any, path: str) -> Any:
    """An instance of dataclass ``cls`` from the mapping ``data`` (``None`` means all defaults)."""
    data = {} if data is None else data
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'the config'}: must be a mapping with keys {', '.join(fields)}, got {data!r}")
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            valid = ", ".join(fields) if fields else "none"
            raise ConfigError(
                f"{prefix}{key}: unknown key{did_you_mean(str(key), list(fields))}; "
                f"valid keys{' under ' + path if path else ''}: {valid}"
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        key_path = f"{prefix}{name}"
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key_path}: required key is missing")
            continue
        value = convert(hints[name], data[name], key_path)
        check = field.metadata.get("check")
        message = check(value) if check is not None and value is not None else None
        if message:
            raise ConfigError(f"{key_path}: {message}")
        values[name] = value
    instance = cls(**values)
    return instance.resolved() if hasattr(instance, "resolved") else instance


def to_yaml(plain: Any) -> str:
    """Plain data as YAML, keys in their own order (resolved configs, as ``gkp check`` prints them)."""
    return yaml.safe_dump(plain, sort_keys=False)


def to_plain(value: Any) -> Any:
    """Dataclasses, tuples and dicts as plain dicts and lists, ready for YAML or JSON; a value that names
    a registry entry gives its own plain form (``plain()``)."""
    if hasattr(value, "plain") and not isinstance(value, type):
        return value.plain()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value
