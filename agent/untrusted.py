"""Input from outside the agent -- control-socket requests, the status topic -- read in one place.

Both are small flat JSON objects. Anything else is refused before `json.loads` can recurse or build
something big: a request of 1 500 nested brackets is one ValueError here, not a RecursionError in a
thread. And a value from outside is never logged as it came: `printable()` escapes and shortens it,
so a newline in a forged field cannot forge a journal line.
"""

from __future__ import annotations

import json
import math
from typing import Any

from agent.errors import one_line

Scalar = str | int | float | bool | None


def flat_object(raw: bytes | bytearray | str, *, max_bytes: int) -> dict[str, Scalar]:
    """The JSON object in `raw`, whose values are all scalars; ValueError saying what is wrong."""
    if len(raw) > max_bytes:
        raise ValueError(f"longer than {max_bytes} bytes")
    if isinstance(raw, bytes | bytearray):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not UTF-8") from None
    else:
        text = raw
    if not text.lstrip().startswith("{"):
        raise ValueError("not a JSON object")
    if _containers(text) > 1:
        raise ValueError("not a flat JSON object (nested lists or objects)")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):  # RecursionError cannot happen after the scan; kept as a guard
        raise ValueError("not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def printable(value: Any, limit: int = 64) -> str:
    """`value` for a log line: control characters and line breaks escaped (errors.one_line), at most
    `limit` characters."""
    shown = one_line(value if isinstance(value, str) else repr(value))
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _containers(text: str) -> int:
    """How many `{` and `[` stand outside strings (a flat object has exactly one)."""
    count = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            count += 1
            if count > 1:
                return count
    return count


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("number out of range")
    return number
