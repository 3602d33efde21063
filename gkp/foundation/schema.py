"""Build frozen dataclasses from plain YAML data with strict, path-naming validation.

``build(cls, data, path)`` checks that ``data`` is a mapping whose keys are fields of ``cls``, converts
each value to the field's annotated type (str, int, float, bool, Literal, Optional, tuple[...], nested
dataclasses) and runs the field's ``check`` from its metadata. Every error names the full key path and
what would be valid. Numbers may be written as fractions (``eps: 8/255``).
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from collections.abc import Callable, Hashable
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import yaml

from gkp.foundation.errors import ConfigError, first_line
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


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 40, 40


def shown(value: Any) -> str:
    """A value as an error message shows it, cut short: the repr of a YAML alias bomb, which the loader
    builds as shared references, would be exponential."""
    return _SHORT.repr(value)


def in_unit_interval(v: float) -> str | None:
    return None if 0 <= v <= 1 else f"must be in [0, 1], got {v}"


def parse_number(value: Any, path: str) -> float:
    """A finite float from a number or a fraction string such as ``"8/255"`` or ``"0.5/255"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: must be a number, got the boolean {value}")
    number = None
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str) and value.count("/") <= 1:
            numerator, _, denominator = value.replace(" ", "").partition("/")
            number = float(Fraction(numerator)) / (float(Fraction(denominator)) if denominator else 1.0)
    except OverflowError:  # beyond a float: as infinite
        number = math.inf
    except (ValueError, ZeroDivisionError):
        pass
    if number is None:
        raise ConfigError(f"{path}: must be a number such as 0.03 or 8/255, got {shown(value)}")
    if not math.isfinite(number):
        raise ConfigError(f"{path}: must be a finite number, got {shown(value)}")
    return number


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (which would silently keep the last);
    keys a merge (``<<: *defaults``) brings in may be given again, as YAML means them to be."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # the safe loader's own error says so
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """Plain data from YAML text (safe: no tags that build objects; no key twice in a mapping), or a
    ConfigError naming ``source`` and the place of the problem."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise ConfigError(f"{source} nests its lists or mappings too deeply to be read") from None
    except yaml.YAMLError as error:
        place = getattr(error, "problem_mark", None)
        where = f" (line {place.line + 1}, column {place.column + 1})" if place is not None else ""
        problem = getattr(error, "problem", None) or first_line(error)
        raise ConfigError(f"{source} is not valid YAML: {problem}{where}") from None


def read_text(path: Path, what: str = "file") -> str:
    """A text file's content, or a ConfigError when it is not UTF-8 or cannot be read."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.start}); save the {what} as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path} cannot be read ({error.strerror or error})") from None


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
                f"{path}: must be one of {', '.join(map(repr, args))}, got {shown(value)}"
                f"{did_you_mean(str(value), [str(a) for a in args])}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: must be a list, got {shown(value)}")
        item_type = args[0]
        return tuple(convert(item_type, item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a mapping, got {shown(value)}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false, got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: must be a whole number, got {shown(value)}")
        return value
    if tp is float:
        return parse_number(value, path)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string, got {shown(value)}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {_type_name(tp)} at {path}")


def build(cls: type, data: Any, path: str) -> Any:
    """An instance of dataclass ``cls`` from the mapping ``data`` (``None`` means all defaults)."""
    data = {} if data is None else data
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'the config'}: must be a mapping with keys {', '.join(fields)}, got {shown(data)}")
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
