"""`boxtel simulate-fleet --boxes N`: N simulated boxes in one process, each its own MQTT client.

For load-testing a central broker, its dashboards and `boxtel fleet`. See agent/fleet/sim.py for what
each box does. Prints a progress line to stderr every few seconds; stops cleanly (every box says a
clean `offline`) on Ctrl-C, SIGTERM or after `--for` seconds.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from agent.errors import UnavailableError, UsageError
from agent.fleet.broker import add_broker_arguments, broker_target

if TYPE_CHECKING:
    from agent.fleet.sim import FleetSim

HELP = "simulate N boxes, each its own MQTT client, against a broker"

_PROGRESS_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--boxes", type=int, required=True, metavar="N", help="how many boxes")
    add_broker_arguments(parser)
    parser.add_argument("--rate", type=float, default=0.2, metavar="MSG_PER_S",
                        help="messages per second per box (default 0.2: a box at default settings "
                             "publishes a few a minute)")
    parser.add_argument("--for", dest="for_s", type=float, metavar="SECONDS", help="stop after SECONDS")
    parser.add_argument("--seed", type=int, default=1, help="scenario seed: the same seed, the same fleet")
    parser.add_argument("--id-prefix", default="sim", metavar="TEXT", help="box ids are TEXT-0001, ... (default sim)")
    parser.add_argument("--quiet-scenarios", action="store_true",
                        help="periodic readings only: no random events, outages or seq gaps")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5",
                        help="MQTT version of the simulated boxes (default 5, as the agent; 3.1.1 costs the "
                             "simulator less CPU per message)")
    parser.add_argument("--workers", type=int, metavar="N", help="threads driving the clients (default: 1 per 500 boxes, at most 4)")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.boxes <= 100_000:
        raise UsageError("--boxes must be from 1 to 100000")
    if args.rate < 0 or (args.for_s is not None and args.for_s < 0):
        raise UsageError("--rate and --for must not be negative")
    if args.workers is not None and not 1 <= args.workers <= 64:
        raise UsageError("--workers must be from 1 to 64")
    if any(c in args.id_prefix for c in "+#/ \t") or not args.id_prefix:
        raise UsageError("--id-prefix must not be empty nor contain '+', '#', '/' or whitespace")
    from agent.fleet.sim import FleetSim  # here: the CLI imports every command's module, on a box too

    target = broker_target(args)
    _raise_fd_limit(args.boxes)
    sim = FleetSim(target, args.boxes, rate=args.rate, seed=args.seed, id_prefix=args.id_prefix,
                   scenarios=not args.quiet_scenarios, workers=args.workers, protocol=args.protocol)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sim.start()
    try:
        if not sim.wait_connected(timeout_s=max(30.0, args.boxes / 50)):
            connected = sim.stats()["connected"]
            raise UnavailableError(
                f"{target.url}: {sim.error or f'only {connected} of {args.boxes} boxes connected'}"
            )
        print(f"simulate-fleet: {args.boxes} boxes connected to {target.url} as {args.id_prefix}-0001..., "
              f"{args.rate:g} msg/s each", file=sys.stderr, flush=True)
        _progress(sim, stop, args.for_s)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


def _progress(sim: FleetSim, stop: threading.Event, for_s: float | None) -> None:
    deadline = None if for_s is None else time.monotonic() + for_s
    last_sent, last_mono = sim.stats()["sent"], time.monotonic()
    while True:
        wait = _PROGRESS_S if deadline is None else min(_PROGRESS_S, max(0.0, deadline - time.monotonic()))
        if stop.wait(wait) or (deadline is not None and time.monotonic() >= deadline):
            return
        if sim.error:
            raise UnavailableError(sim.error)
        stats, now = sim.stats(), time.monotonic()
        rate = (stats["sent"] - last_sent) / (now - last_mono)
        last_sent, last_mono = stats["sent"], now
        print(f"simulate-fleet: {stats['connected']}/{stats['boxes']} connected, {stats['sent']} sent, "
              f"{rate:,.0f} msg/s, {stats['skipped']} seq skipped, {stats['dropped']} dropped", file=sys.stderr,
              flush=True)


def _raise_fd_limit(boxes: int) -> None:
    """One socket per box: lift the soft descriptor limit as far as the hard one allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = boxes + 64
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            raise UsageError(f"--boxes {boxes} needs {wanted} file descriptors; the hard limit is {hard}")
