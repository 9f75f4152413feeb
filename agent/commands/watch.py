"""`boxtel watch`: every reading and event the agent accepts, as it accepts them, until Ctrl-C.

On a terminal: coloured by severity and cut to the terminal's width. Piped: plain full lines, one per
message, flushed at once (for `grep` and `tee`)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

from agent.errors import EX_UNAVAILABLE

HELP = "live readings and events as the agent accepts them, until Ctrl-C (69: no agent running)"

_SEVERITY_COLOURS = {"info": "\x1b[36m", "warning": "\x1b[33m", "alarm": "\x1b[31;1m"}
_EVENT_FIELDS = ("kind", "source", "severity", "ts")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from agent import control

    terminal = sys.stdout.isatty()
    try:
        for message in control.watch(control.socket_path(args.config),
                                     state_dir=control.state_dir_path(args.config)):
            width = shutil.get_terminal_size().columns if terminal else None
            print(format_line(message, colour=terminal, width=width), flush=True)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `boxtel watch | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print("boxtel: the agent stopped", file=sys.stderr)
    return EX_UNAVAILABLE


def format_line(message: dict[str, Any], *, colour: bool = False, width: int | None = None) -> str:
    """One message as one line; `width` cuts it to a terminal's width, `colour` marks events by severity."""
    kind = message.get("type")
    if kind == "dropped":
        return f"... {message.get('count')} lines dropped: this watcher read too slowly"
    payload = dict(message.get("payload") or {})
    ts = str(payload.pop("ts", ""))[11:]  # the time of day is enough on a screen
    seq = f"#{message.get('seq')}"
    head, severity = str(message.get("stream")), None
    if kind == "event":
        severity = payload.get("severity", "info")
        head = f"EVENT {payload.get('source')} {payload.get('kind')} ({severity})"
        payload = {k: v for k, v in payload.items() if k not in _EVENT_FIELDS}
    elif not payload.get("alarms"):
        payload.pop("alarms", None)
    line = f"{ts} {seq:>7} {head} {_fields(payload)}".rstrip()
    if width is not None and len(line) > width:
        line = line[: max(width - 1, 0)] + "…"
    if colour and severity is not None and head in line:
        line = line.replace(head, f"{_SEVERITY_COLOURS.get(severity, '')}{head}\x1b[0m", 1)
    return line


def _fields(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in values.items())


def _value(value: Any) -> str:
    if isinstance(value, str) and value and " " not in value:
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, separators=(",", ":"))
