from __future__ import annotations

import argparse

HELP = "validate the config file and exit (78 on any error)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from agent import config as config_module
    from agent.publisher import tls_context

    config = config_module.load(args.config)
    if config.mqtt.tls:
        tls_context(config.mqtt, file=config.file)
    drivers = ", ".join(entry.key for entry in config.drivers) or "none"
    print(f"{config.file}: OK (box {config.box.id}; drivers: {drivers}{'; simulated' if config.simulate else ''})")
    return 0
