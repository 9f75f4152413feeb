"""`boxtel fleet`: a live, read-only view of every box on the broker (the console is agent/fleet/console.py).

On a terminal: a table redrawn in place, boxes with alarms first. `--json`: one JSON object per line for
each box whose state changed, each naming its `box`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from agent.errors import UsageError
from agent.fleet.broker import add_broker_arguments, broker_target
from agent.fleet.model import SETTLE_S

HELP = "live table of every box on the broker (read-only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_broker_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per line per change, with `box`")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1,
                        help="subscription QoS (default 1: the broker may not drop messages to the console)")
    parser.add_argument("--for", dest="for_s", type=float, metavar="SECONDS", help="stop after SECONDS")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS",
                        help="redraw interval of the table; with --json, how long a box's changes are "
                             "coalesced into one line (default 1)")
    parser.add_argument("--settle", type=float, default=SETTLE_S, metavar="SECONDS",
                        help=f"a seq gap is lost once this old, unless filled (default {SETTLE_S:g})")


def run(args: argparse.Namespace) -> int:
    # Here, not at the top: the CLI imports every command's module, `boxtel run` on a box too (RSS).
    from agent.fleet.console import FleetConsole, run_json, run_table

    if args.refresh <= 0 or args.settle < 0 or (args.for_s is not None and args.for_s < 0):
        raise UsageError("--refresh must be > 0, --settle and --for >= 0")
    target = broker_target(args)
    console = FleetConsole(target, qos=args.qos, settle_s=args.settle)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.start()
    try:
        if args.json:
            run_json(console, stop, args.for_s, args.refresh, sys.stdout)
        else:
            run_table(console, stop, args.for_s, args.refresh, sys.stdout)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        console.stop()
        _quiet_stdout()
    print(console.summary_line(), file=sys.stderr)
    return 0


def _quiet_stdout() -> None:
    """After a closed pipe (`boxtel fleet --json | head`), Python's exit flush would raise again."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

