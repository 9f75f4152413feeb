"""The generator: one driver kind whose readings come from a source chosen in config.

- `gpio_source`: a bare genset through contacts (running, faults) and an ADC fuel sender;
- `modbus_source`: the genset's controller (DSE GenComm, ComAp InteliLite) over Modbus RTU or TCP,
  through `modbus_adapter` (the only module that touches pymodbus) and the maps in `controllers`;
- `fuel`: litres, consumption, refuels and the theft signature, shared by both;
- `simulator`: the simulated hardware for either source (mock pins, or a real pymodbus server).

The core sees one class, `GeneratorDriver`; building it builds the configured source. Only the chosen
source's module is imported, so a box without Modbus never loads pymodbus.
"""

from __future__ import annotations

import os
from typing import Any

from drivers.base import Driver
from drivers.generator.config import GeneratorConfig

FAIL_TO_START = "fail_to_start"  # raised by either source: the controller's own alarm, or a start that never ran


class GeneratorDriver(Driver):
    section = "generator"
    Config = GeneratorConfig
    simulator = "drivers.generator.simulator:generator_simulator"
    counters = ("run_hours",)  # never goes back (the GPIO source resumes it; a controller counts its own)

    def __new__(cls, config: GeneratorConfig, ctx: Any) -> Any:
        if cls is GeneratorDriver:
            if config.source == "modbus":
                from drivers.generator.modbus_source import ModbusGenerator as cls
            else:
                from drivers.generator.gpio_source import GpioGenerator as cls
        return super().__new__(cls)

    @classmethod
    def claims(cls, config: GeneratorConfig, key: str) -> list[tuple[str, str]]:
        if config.source == "modbus":
            if config.transport == "rtu":
                return [(f"{key}.device", f"serial port {os.path.realpath(config.device)}")]
            return []
        from drivers.generator.gpio_source import GpioGenerator

        return GpioGenerator.gpio_claims(config, key)


__all__ = ["GeneratorConfig", "GeneratorDriver"]
