"""GPIO test helpers: a driver on MockFactory pins with a real bus and state dir, the agent in-process
(so the test drives the same mock pins the agent's drivers read), and pin helpers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.bus import Bus, Event, Reading
from agent.clock import Clock
from agent.config import GpioSettings
from agent.runtime import Agent
from agent.schema import build
from drivers.base import DriverContext
from drivers.gpio_sim import wire_pin
from tests import diag_support
from tests.support import wait_until

_rigs: list[Rig] = []


def close_rigs() -> None:
    """Stop every driver a test built. An unclosed gpiozero device closed later by the garbage collector
    takes the factory's reservation lock from inside a reservation and deadlocks."""
    while _rigs:
        _rigs.pop().driver.stop()


class Rig:
    """One GPIO driver, built from a config table as `boxtel run` would, on the mock factory."""

    def __init__(self, cls: type, table: dict[str, Any], state_dir: Path, factory: Any):
        self.config = build(cls.Config, table, where=cls.section, base_dir=state_dir, file="test.toml")
        self.bus = Bus()
        self.ctx = DriverContext(
            cls.instance_name(self.config), stream=cls.stream_name(self.config), bus=self.bus,
            clock=Clock(lambda: False), state_dir=state_dir, simulate=False,
            settings={"gpio": GpioSettings(pin_factory="mock")},
        )
        self.driver = cls(self.config, self.ctx)
        self.factory = factory
        self.items: list[Any] = []
        _rigs.append(self)

    # -- pins --------------------------------------------------------------------------------------
    def wire(self, pin: int, high: bool) -> Any:
        """Hold `pin` at a level before the driver opens it (a plain MockPin would follow the pull)."""
        return wire_pin(self.factory, pin, high=high)

    def drive(self, pin: int, high: bool) -> None:
        mock = self.factory.pin(pin)
        (mock.drive_high if high else mock.drive_low)()

    def pulse(self, pin: int, count: int, active_high: bool = True) -> None:
        for _ in range(count):
            self.drive(pin, active_high)
            self.drive(pin, not active_high)

    # -- what the driver put on the bus --------------------------------------------------------------
    def drain(self) -> list[Any]:
        while (item := self.bus.get_nowait()) is not None:
            self.items.append(item)
        return self.items

    def events(self, kind: str | None = None) -> list[Event]:
        return [i for i in self.drain() if isinstance(i, Event) and (kind is None or i.kind == kind)]

    def alarms(self, kind: str = "alarm_raised") -> list[str]:
        return [e.details["alarm"] for e in self.events(kind)]

    def state(self) -> dict[str, Any]:
        readings = [i for i in self.drain() if isinstance(i, Reading)]
        assert readings, "the driver published no state"
        return readings[-1].values

    def wait_event(self, kind: str, timeout: float = 5.0) -> Event:
        return wait_until(lambda: next(iter(self.events(kind)), None), timeout, f"a {kind} event")

    def step(self, seconds_from_now: float = 0.0) -> float:
        """Settle and tick the driver as if `seconds_from_now` had passed (for drivers not start()ed)."""
        now = time.monotonic() + seconds_from_now
        self.driver.step(now)
        return now


@contextmanager
def agent_in_process(config_path: Path) -> Iterator[Agent]:
    """`boxtel run` in this process (its GPIO drivers open the test's mock pins), once it has started:
    its control socket up and its first connection made."""
    with diag_support.agent_in_process(config_path) as agent:
        wait_until(lambda: agent.publisher.connected, 15, "the agent to connect")
        yield agent


def fast_demo_hardware(speed: float) -> dict[str, Any]:
    """The GPIO sections of config/simulate.toml (generator, water, lockers) with their time thresholds
    shrunk by `speed`, so the scenario's minute plays in 60/speed s. Set `GpioScenario.speed` to match."""
    import tomllib

    from tests.support import ROOT

    demo = tomllib.loads((ROOT / "config" / "simulate.toml").read_text())
    sections = {"generator": demo["generator"], "water": demo["water"], "locker": demo["locker"],
                "box": {"tamper": demo["box"]["tamper"]}}
    sections["generator"]["fuel"]["interval_s"] = sections["water"]["tank"]["interval_s"] = 1.0 / speed
    sections["generator"]["fuel"]["smoothing"] = sections["water"]["tank"]["smoothing"] = 1
    sections["water"]["continuous_flow_s"] /= speed
    sections["water"]["flow_window_s"] /= speed
    for locker in sections["locker"]:
        locker["open_too_long_s"] /= speed
        locker["chatter_clear_s"] /= speed
        locker["armed_schedule"] = []  # armory-1 unarmed whatever the time of day
    return sections
