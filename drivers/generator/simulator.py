"""The generator's simulated hardware, for either source: gpiozero mock pins played by
`drivers.gpio_sim.GeneratorSimulator`, or a real pymodbus server playing a controller
(`drivers.generator.modbus_sim`). Only the one the config needs is imported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivers.simulator import DEMO


def generator_simulator(configs: list[Any], workdir: Path, scenario: str = DEMO) -> Any:
    if configs and configs[0].source == "modbus":
        from drivers.generator.modbus_sim import ControllerSimulator

        return ControllerSimulator(configs, workdir, scenario)
    from drivers.gpio_sim import GeneratorSimulator

    return GeneratorSimulator(configs, workdir, scenario)
