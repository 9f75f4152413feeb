"""Weapons-locker driver: one door reed switch per `[[locker]]`, published on `locker/<name>`.

Armed by a local-time schedule ("22:00-06:00": nights) or always. A door that opens while armed is an
alarm; so is a door left open too long, and a switch that chatters far beyond bouncing (a cut or loose
wire -- on a weapons locker that is what tampering looks like).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from agent.schema import SettingError, setting
from drivers.gpio import GpioDriver, GpioDriverSettings, InputConfig, input_claims

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")

OPEN = "open"
CLOSED = "closed"


@dataclass(kw_only=True)
class LockerConfig(GpioDriverSettings):
    name: str = setting(doc="locker name, a topic level: locker/<name> (letters, digits, - _ .)")
    door: InputConfig = setting(doc="door reed switch, active while the door is open")
    open_too_long_s: float = setting(300.0, min=1.0, max=86400.0, doc="door_open_too_long is raised after the door is open this long")
    always_armed: bool = setting(False, doc="armed around the clock (e.g. an armory without day access)")
    armed_schedule: list[str] = setting([], doc='local-time windows when armed, e.g. ["22:00-06:00"]')
    min_interval_s: float = setting(0.0, min=0.0, max=3600.0, doc="never publish this stream more often")

    def validate(self) -> None:
        GpioDriverSettings.validate(self)
        if not _NAME.match(self.name):
            raise SettingError("name", f'"{self.name}" is not a valid locker name: 1-32 of letters, digits, - _ .')
        for i, window in enumerate(self.armed_schedule):
            match = _WINDOW.match(window)
            if not match or match.group(1, 2) == match.group(3, 4):
                raise SettingError(f"armed_schedule[{i}]", f'"{window}" is not a window like "22:00-06:00"')


def armed_at(schedule: list[str], minute_of_day: int) -> bool:
    """Whether `minute_of_day` (local time) falls in one of the windows; a window may wrap midnight."""
    for window in schedule:
        start_h, start_m, end_h, end_m = (int(g) for g in _WINDOW.match(window).groups())
        start, end = start_h * 60 + start_m, end_h * 60 + end_m
        inside = start <= minute_of_day < end if start < end else (minute_of_day >= start or minute_of_day < end)
        if inside:
            return True
    return False


class LockerDriver(GpioDriver):
    section = "locker"
    Config = LockerConfig
    many = True
    simulator = "drivers.gpio_sim:LockerSimulator"
    alarm_prefixes = ("door_open_too_long", "door_opened_while_armed", "door_switch_fault")

    @classmethod
    def instance_name(cls, config: LockerConfig) -> str:
        return f"locker/{config.name}"

    @classmethod
    def claims(cls, config: LockerConfig, key: str) -> list[tuple[str, str]]:
        return input_claims(key, {"door": config.door})

    def local_minute(self) -> int:
        """Minute of the day in local time, from the core's clock (GPS time when NTP is missing)."""
        local = time.localtime(self.ctx.clock.now())
        return local.tm_hour * 60 + local.tm_min

    def open(self, factory: Any) -> None:
        self.add_input("door", self.config.door, label=f"{self.ctx.name} door")

    def begin(self, now: float) -> None:
        self.armed = self._armed_now()
        door = self._door()
        saved_door = self.saved.get("door")
        self.opened_mono: float | None = None
        if door == saved_door and self.saved.get("since"):
            self.since = self.saved["since"]
            if door == OPEN and self.saved.get("opened_epoch") is not None:
                open_s = max(0.0, self.ctx.clock.now() - float(self.saved["opened_epoch"]))
                self.opened_mono = now - open_s
        else:
            self.since = self.ctx.clock.iso_at(now)
            if saved_door is not None:  # it changed while we were not watching
                self.ctx.event("door_opened" if door == OPEN else "door_closed", at_start=True,
                               **({"armed": self.armed} if door == OPEN else {"open_s": None}))
                if door == OPEN and self.armed:  # opened during an armed period the agent missed
                    self.alarm("door_opened_while_armed", True, at_start=True)
        if door == OPEN and self.opened_mono is None:
            self.opened_mono = now
        if door == CLOSED:
            self.alarm("door_open_too_long", False, at_start=True)
            self.alarm("door_opened_while_armed", False, at_start=True)
        self.ctx.reading(self.values(), force=True)

    def on_change(self, name: str, active: bool, mono: float) -> None:
        self.since = self.ctx.clock.iso_at(mono)
        if active:
            self.opened_mono = mono
            self.ctx.event("door_opened", mono=mono, armed=self.armed)
            if self.armed and self.alarm("door_opened_while_armed", True, mono=mono, state=self.values()):
                return
        else:
            open_s = None if self.opened_mono is None else round(mono - self.opened_mono, 1)
            self.opened_mono = None
            self.ctx.event("door_closed", mono=mono, open_s=open_s)
            changed = self.alarm("door_open_too_long", False, mono=mono, state=self.values())
            changed |= self.alarm("door_opened_while_armed", False, mono=mono, state=self.values())
            if changed:
                return
        self.ctx.reading(self.values(), force=True, mono=mono)

    def tick(self, now: float) -> None:
        armed = self._armed_now()
        if armed != self.armed:
            self.armed = armed
            self.save_soon()
            self.ctx.reading(self.values(), force=True)
        if self.opened_mono is not None and now - self.opened_mono >= self.config.open_too_long_s:
            self.alarm("door_open_too_long", True, state=self.values(), open_s=round(now - self.opened_mono),
                       limit_s=self.config.open_too_long_s)
        self.report(self.values())

    def timer(self) -> float | None:
        if self.opened_mono is None or "door_open_too_long" in self.ctx.active_alarms():
            return None
        return self.opened_mono + self.config.open_too_long_s

    def on_chatter(self, name: str, chattering: bool, now: float) -> None:
        door = self.inputs["door"]
        details = {"edges_per_s": round(door.edges_per_s(now), 1)} if chattering else {}
        if not self.alarm("door_switch_fault", chattering, state=self.values(), pin=door.config.pin, **details):
            self.ctx.reading(self.values(), force=True)

    def _armed_now(self) -> bool:
        return self.config.always_armed or armed_at(self.config.armed_schedule, self.local_minute())

    def _door(self) -> str:
        return OPEN if self.inputs["door"].active else CLOSED

    def values(self) -> dict[str, Any]:
        return {
            "door": self._door(),
            "since": self.since,
            "armed": self.armed,
            "switch_fault": self.inputs["door"].chattering,
        }

    def persistent(self) -> dict[str, Any]:
        opened = None if self.opened_mono is None else self.ctx.clock.epoch_at(self.opened_mono)
        return {"door": self._door(), "since": self.since, "opened_epoch": opened}

    def input_state(self, name: str, active: bool) -> str:
        return OPEN if active else CLOSED
