"""`boxtel pins`: every configured GPIO input with its raw level, debounced state and edges per second,
refreshed live -- for checking wiring with a multimeter in hand. `--once` prints one table (scripts).
A supervised door loop shows its ADC channel, raw counts, loop state, and the band of raw counts that
state is read from, with the band its resistors are expected in (calibration: docs/deploy.md)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

HELP = "live table of every GPIO input: raw level, debounced state, edges/s (69: no agent running)"

_COLUMNS = (("input", "INPUT"), ("pin", "PIN"), ("raw", "RAW"), ("state", "STATE"), ("edges_per_s", "EDGES/S"))
_CLEAR = "\x1b[H\x1b[2J"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="print the table once and exit")
    parser.add_argument("--interval", type=float, default=0.5, metavar="S", help="refresh period (default 0.5 s)")


def run(args: argparse.Namespace) -> int:
    from agent import control
    from agent.errors import UsageError

    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    path = control.socket_path(args.config)
    terminal = sys.stdout.isatty()
    try:
        while True:
            rows = control.request(path, "pins", state_dir=control.state_dir_path(args.config))["pins"]
            if not rows:
                print("no GPIO inputs in the running agent (no [generator], [water] or [[locker]] configured)")
                return 0
            table = render(rows)
            if args.once:
                print(table)
                return 0
            if terminal:
                print(f"{_CLEAR}{table}\n\nrefreshing every {args.interval:g} s; Ctrl-C to quit", flush=True)
            else:
                print(f"{table}\n", flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def render(rows: list[dict[str, Any]]) -> str:
    columns = _COLUMNS
    if any("band" in row for row in rows):  # a supervised loop: the raw counts its state is read from
        columns = (*_COLUMNS[:4], ("band", "BAND"), *_COLUMNS[4:])
    cells = [[title for _, title in columns]]
    cells += [[_cell(key, row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "edges_per_s":
        return f"{float(value):.1f}"
    return str(value)
