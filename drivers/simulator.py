"""Simulated hardware: the real drivers run against it, so simulation exercises the code a Pi runs.

Each driver kind may name a `simulator` ("module:Class"). Before the drivers are built, a simulator
points its kind's config at what it made -- a pseudo-terminal carrying NMEA, gpiozero `MockFactory`
pins, a fake sysfs tree -- and once they run, it plays its scenario until stopped.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from drivers import REGISTRY, driver_class

log = logging.getLogger("boxtel.simulate")

DEMO, QUIET = "demo", "quiet"  # [simulation] scenario


class Simulator:
    """Base class for one driver kind's simulated hardware: prepare() makes it, a thread plays `_run`."""

    def __init__(self, configs: list[Any], workdir: Path, scenario: str = DEMO):
        self.configs = configs  # this kind's driver configs, adjusted in place by prepare()
        self.workdir = workdir
        self.scenario = scenario  # DEMO: every event in turn; QUIET: a parked box where nothing happens
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def prepare(self) -> None:
        """Make the simulated hardware and point the configs at it (before drivers start)."""

    def start(self) -> None:
        """Start the scenario (drivers are running)."""
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"sim-{type(self).__name__}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the scenario, then release what prepare() made."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.release()

    def release(self) -> None:
        """Free what prepare() made (the scenario thread has stopped)."""

    def _run(self) -> None:
        """The scenario, until `self._stop` is set."""


class Simulation:
    def __init__(self, config: Any):
        self.config = config
        self.workdir = Path(tempfile.mkdtemp(prefix="boxtel-sim-"))
        self.parts: list[Simulator] = []

    def prepare(self) -> None:
        self.config.gpio.pin_factory = "mock"
        for section in REGISTRY:
            configs = self.config.driver_configs(section)
            cls = driver_class(section)
            if not configs or cls.simulator is None:
                continue
            module_name, class_name = cls.simulator.split(":")
            simulator_cls = getattr(importlib.import_module(module_name), class_name)
            part = simulator_cls(configs, self.workdir, self.config.simulation.scenario)
            part.prepare()
            self.parts.append(part)

    def start(self, agent: Any = None) -> None:
        for part in self.parts:
            part.start()
        log.info("simulated hardware: %s", ", ".join(type(p).__name__ for p in self.parts) or "none")

    def stop(self) -> None:
        for part in self.parts:
            try:
                part.stop()
            except Exception:  # noqa: BLE001 - stopping the rest matters more
                log.exception("simulator %s failed to stop", type(part).__name__)
        shutil.rmtree(self.workdir, ignore_errors=True)
