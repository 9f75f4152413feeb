"""Declarative config schema: a config section is a dataclass, each key a `setting()`.

Drivers declare their section next to their code (as mqtt-io does); `build()` validates a parsed TOML
table against it completely -- unknown keys, wrong types, ranges, choices, required keys, numbers
that are not finite, strings with control characters -- and raises
`ConfigError` naming the key path, so a user gets one line that says what is wrong and where.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, unsafe_char

_NO_DEFAULT = dataclasses.MISSING


def setting(
    default: Any = _NO_DEFAULT,
    *,
    doc: str = "",
    min: float | None = None,  # noqa: A002 - reads naturally at the call site
    max: float | None = None,  # noqa: A002
    choices: tuple[Any, ...] | None = None,
    keys: tuple[str, ...] | None = None,
    path: bool = False,
    inf_ok: bool = False,
    factory: Any = None,
) -> Any:
    """One config key. `path=True` resolves a relative path against the config file's folder.

    A float is always finite unless `inf_ok` (then `inf`, never `nan` or `-inf`, is accepted: for a
    value where "never" is a meaning, like a deadband). A table (`dict[str, X]`) with `keys` accepts
    only those keys, as a section accepts only its fields."""
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "keys": keys, "path": path, "inf_ok": inf_ok,
            # "" where the default is a real value (a state dir, a port) is a slip, never "use the default"
            "not_empty": default if isinstance(default, str) and default and not choices else None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class SettingError(ValueError):
    """Raised by a section's `validate()`; `key` is relative to the section (may be "")."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def build(cls: type, table: Any, *, where: str, base_dir: Path, file: str) -> Any:
    """Validate `table` against dataclass `cls` and return an instance. `where` is the key path."""
    if not isinstance(table, dict):
        raise ConfigError(f"expected a table, got {_describe(table)}", file=file, key=where or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            raise ConfigError(_unknown_key_message(key, fields), file=file, key=_join(where, key))
    values = {}
    for name, field in fields.items():
        key_path = _join(where, name)
        if name not in table:
            if field.default is _NO_DEFAULT and field.default_factory is _NO_DEFAULT:
                raise ConfigError("missing required key", file=file, key=key_path)
            continue
        values[name] = _convert(hints[name], table[name], field.metadata, key_path, base_dir, file)
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        try:
            validate()
        except SettingError as err:
            raise ConfigError(str(err), file=file, key=_join(where, err.key)) from None
    return instance


def fields_of(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def _convert(hint: Any, value: Any, meta: dict, key: str, base_dir: Path, file: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, meta, key, base_dir, file)
        if all(a in (int, str) for a in inner):  # a number or a word: `baud = 9600` or `baud = "auto"`
            return _convert(str if isinstance(value, str) else int, value, meta, key, base_dir, file)
        if all(dataclasses.is_dataclass(a) for a in inner):  # `door = { pin }` or `door = { chip, channel }`
            return build(_table_kind(inner, value), value, where=key, base_dir=base_dir, file=file)
        raise TypeError(f"unsupported union in schema at {key}")
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where=key, base_dir=base_dir, file=file)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {_describe(value)}", file=file, key=key)
        item_meta = {**meta, "choices": meta.get("choices")}
        return [_convert(args[0], item, item_meta, f"{key}[{i}]", base_dir, file) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a table, got {_describe(value)}", file=file, key=key)
        known = meta.get("keys")
        for name in value:
            _check_text(name, f"{key}.{name}", file, path=False)
            if known is not None and name not in known:
                raise ConfigError(_unknown_key_message(name, known), file=file, key=f"{key}.{name}")
        return {k: _convert(args[1], v, meta, f"{key}.{k}", base_dir, file) for k, v in value.items()}
    return _scalar(hint, value, meta, key, base_dir, file)


def _scalar(hint: Any, value: Any, meta: dict, key: str, base_dir: Path, file: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {_describe(value)}", file=file, key=key)
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {_describe(value)}", file=file, key=key)
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"expected a number, got {_describe(value)}", file=file, key=key)
        value = float(value)
        # nan compares false with every bound, so it would pass any range and switch the check it feeds off
        if math.isnan(value) or (math.isinf(value) and not (meta.get("inf_ok") and value > 0)):
            low, high = meta.get("min"), meta.get("max")
            wanted = _range_text(low, high) if low is not None or high is not None else "a finite number"
            raise ConfigError(f"expected {wanted}{' (or inf)' if meta.get('inf_ok') else ''}, got {_show(value)}",
                              file=file, key=key)
    elif hint is str:
        if not isinstance(value, str):
            expected = "a string"
            if meta.get("choices"):
                expected = "one of " + ", ".join(_show(c) for c in meta["choices"]) + " (quoted)"
            raise ConfigError(f"expected {expected}, got {_describe(value)}", file=file, key=key)
        _check_text(value, key, file, path=bool(meta.get("path")))
        if not value and meta.get("not_empty"):
            raise ConfigError(f"must not be empty (leave it out for {meta['not_empty']})", file=file, key=key)
    else:
        raise TypeError(f"unsupported type {hint!r} in schema at {key}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join(_show(c) for c in choices)
        raise ConfigError(f"expected one of {shown}, got {_show(value)}", file=file, key=key)
    low, high = meta.get("min"), meta.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"expected {_range_text(low, high)}, got {_show(value)}", file=file, key=key)
    if meta.get("path") and value:
        path = Path(value).expanduser()
        value = str(path if path.is_absolute() else (base_dir / path))
    return value


def _table_kind(kinds: list[type], value: Any) -> type:
    """Of several table kinds, the one whose keys best cover the table's (the first wins a tie): a key
    no kind knows is then reported against the kind the table most resembles."""
    keys = set(value) if isinstance(value, dict) else set()

    def known(kind: type) -> tuple[bool, int]:
        names = {f.name for f in dataclasses.fields(kind)}
        return keys <= names, len(keys & names)

    return max(kinds, key=known)


MAX_TEXT = 256  # a name, host, site or topic level; it rides in payloads billed per MB
MAX_PATH = 4096  # PATH_MAX


def _check_text(value: str, key: str, file: str, *, path: bool) -> None:
    """Refuse control characters in every string: they become topics, client ids, payloads and log lines.
    Paths too: a device or state path is named in log lines, and none real holds a newline or an escape."""
    longest = MAX_PATH if path else MAX_TEXT
    if len(value) > longest:
        raise ConfigError(f"{len(value)} characters long: at most {longest}", file=file, key=key)
    for index, char in enumerate(value):
        if unsafe_char(char):
            raise ConfigError(
                f"control character U+{ord(char):04X} at position {index + 1} is not allowed", file=file, key=key
            )


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"a value from {_show(low)} to {_show(high)}"
    if low is not None:
        return f"a value of at least {_show(low)}"
    return f"a value of at most {_show(high)}"


def _unknown_key_message(key: str, fields: dict | tuple[str, ...]) -> str:
    if not fields:
        return "unknown key (this table takes none)"
    close = difflib.get_close_matches(key, list(fields), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(fields)})"
    return f"unknown key{hint}"


def _describe(value: Any) -> str:
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return kind
    return f"{kind} ({_show(value)})"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= 64 else f'"{value[:60]}..."'
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
