"""The box's own tamper switch: `[box] tamper = { pin = N }`, a switch on the Pi's enclosure or the
container's equipment cabinet, published on `tamper`.

`box_tamper` is raised while the enclosure is open, and while the switch's wire chatters (a loose or cut
wire is what tampering looks like). Wire it so that the closed enclosure holds the contact closed to
ground: the pull-up then reads high -- tamper -- for an open lid and for a cut wire alike.

The key sits in the core `[box]` section; the driver is registered as "box.tamper" (drivers/__init__.py),
and the config loader hands it that key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.gpio import GpioDriver, GpioDriverSettings, InputConfig

OPEN = "open"
CLOSED = "closed"


@dataclass(kw_only=True)
class TamperConfig(GpioDriverSettings, InputConfig):
    """The enclosure switch: a pin, active (high) while the enclosure is open."""

    def validate(self) -> None:
        GpioDriverSettings.validate(self)
        InputConfig.validate(self)


class BoxTamperDriver(GpioDriver):
    section = "box.tamper"
    Config = TamperConfig
    simulator = "drivers.gpio_sim:TamperSimulator"
    alarm_prefixes = ("box_tamper",)

    @classmethod
    def instance_name(cls, config: TamperConfig) -> str:
        return "tamper"

    @classmethod
    def claims(cls, config: TamperConfig, key: str) -> list[tuple[str, str]]:
        return [(f"{key}.pin", f"GPIO{config.pin}")]

    def open(self, factory: Any) -> None:
        self.switch = self.add_input("enclosure", self.config, label="box tamper")

    def begin(self, now: float) -> None:
        self.since = self.ctx.clock.iso_at(now)
        self._follow(at_start=True)

    def on_change(self, name: str, active: bool, mono: float) -> None:
        self.since = self.ctx.clock.iso_at(mono)
        self._follow(mono=mono)

    def on_chatter(self, name: str, chattering: bool, now: float) -> None:
        self._follow(mono=now)

    def tick(self, now: float) -> None:
        self.report(self.values())

    def _follow(self, *, mono: float | None = None, at_start: bool = False) -> None:
        start = {"at_start": True} if at_start else {}
        tampered = self.switch.active or self.switch.chattering
        details = {"enclosure": self._enclosure(), "switch_fault": self.switch.chattering} if tampered else {}
        if not self.alarm("box_tamper", tampered, mono=mono, state=self.values(), **details, **start):
            self.ctx.reading(self.values(), force=True, mono=mono)

    def _enclosure(self) -> str:
        return OPEN if self.switch.active else CLOSED

    def values(self) -> dict[str, Any]:
        return {"enclosure": self._enclosure(), "since": self.since, "switch_fault": self.switch.chattering}

    def input_state(self, name: str, active: bool) -> str:
        return OPEN if active else CLOSED
