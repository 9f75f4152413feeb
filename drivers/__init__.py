"""Hardware drivers. Adding one means one module here and one line in `REGISTRY`.

The registry names modules rather than importing them, so a box that has no GPS never imports pynmea2
and one without GPIO never imports gpiozero: memory on a small Pi is the budget.
"""

from __future__ import annotations

import importlib

# config section -> "module:Class"
REGISTRY: dict[str, str] = {
    "host": "drivers.host:HostDriver",
    "gps": "drivers.gps:GpsDriver",
    "generator": "drivers.generator:GeneratorDriver",
    "water": "drivers.water:WaterDriver",
    "locker": "drivers.locker:LockerDriver",
    "box.tamper": "drivers.tamper:BoxTamperDriver",  # a key of the core [box] section (agent/config.py)
}


def driver_class(section: str) -> type:
    module_name, class_name = REGISTRY[section].split(":")
    return getattr(importlib.import_module(module_name), class_name)
