from __future__ import annotations

import argparse
import sys

HELP = "validate the config file and exit (78 on any error)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", metavar="NAME",
                        help="the user the agent runs as, who must own its secret files "
                             "(default: as root, the installed unit's User=; else you)")


def run(args: argparse.Namespace) -> int:
    from agent import config as config_module
    from agent.errors import ConfigError
    from agent.publisher import tls_context
    from agent.serviceuser import secret_owner

    config = config_module.load(args.config, secret_owner=secret_owner(args.user))
    if config.mqtt.tls:
        tls_context(config.mqtt, file=config.file)
    if config.mqtt.tls_insecure:
        warning = ConfigError("certificate verification is off: anyone on the path can pose as the broker "
                              "(set ca_file to the broker's CA instead)", file=config.file, key="mqtt.tls_insecure")
        print(f"boxtel: warning: {warning}", file=sys.stderr)
    drivers = ", ".join(entry.key for entry in config.drivers) or "none"
    print(f"{config.file}: OK (box {config.box.id}; drivers: {drivers}{'; simulated' if config.simulate else ''})")
    return 0
