"""The `boxtel` command line. Each subcommand is a module in agent/commands with `HELP`,
`add_arguments(parser)` and `run(args) -> exit code`; adding one is one line in `COMMANDS`.

Errors the user can act on print one line and exit with a sysexits code; only a bug shows a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from agent import __version__
from agent.config import DEFAULT_PATH
from agent.errors import EX_USAGE, BoxtelError, one_line

COMMANDS: dict[str, str] = {
    "run": "agent.commands.run",
    "check-config": "agent.commands.check_config",
    "status": "agent.commands.status",
    "watch": "agent.commands.watch",
    "doctor": "agent.commands.doctor",
    "pins": "agent.commands.pins",
    "gps": "agent.commands.gps",
    "fleet": "agent.commands.fleet",
    "simulate-fleet": "agent.commands.simulate_fleet",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2; sysexits says 64 for usage errors
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"config file (default {DEFAULT_PATH})")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    parser = _Parser(prog="boxtel", description="Telemetry agent for containerised field stations.",
                     parents=[common])
    parser.add_argument("--version", action="version", version=f"boxtel {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP, parents=[common])
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", DEFAULT_PATH)
    args.verbose = getattr(args, "verbose", False)
    try:
        return args._module.run(args)
    except BoxtelError as err:
        print(f"boxtel: {one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `boxtel doctor | head`: the reader has all it wanted, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one from the final flush
        return 128 + 13  # as a shell reports a command ended by SIGPIPE
