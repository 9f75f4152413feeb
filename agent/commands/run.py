from __future__ import annotations

import argparse

HELP = "run the agent (as the systemd service does)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--simulate", action="store_true", help="run every driver on simulated hardware")


def run(args: argparse.Namespace) -> int:
    from agent import config as config_module
    from agent import logsetup
    from agent.runtime import Agent

    logsetup.setup(args.verbose)
    config = config_module.load(args.config, simulate=True if args.simulate else None)
    Agent(config).run()
    return 0
