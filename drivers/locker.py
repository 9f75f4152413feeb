"""Weapons-locker driver: one door contact per `[[locker]]`, published on `locker/<name>`.

The door is a reed switch on a GPIO pin, or a supervised loop on an ADC channel (drivers/loop.py: end-
of-line resistors tell closed, open, shorted and cut apart). Armed always, by a local-time schedule
("22:00-06:00": nights), or by a key switch: any one of them arms it (a key cannot disarm a scheduled
window). A door that opens while armed is an alarm; so is a door left open too long, a switch that
chatters far beyond bouncing (a loose wire), and a supervised loop that is shorted, cut or unreadable
(`door_tamper`: the door then reads `unknown`, never `closed`, and counts as opened if armed).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from agent.schema import SettingError, setting
from drivers.gpio import GpioDriver, GpioDriverSettings, InputConfig, adc_claims, input_claims
from drivers.loop import TAMPER, LoopConfig, LoopSampler, SupervisedLoop

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")

OPEN = "open"
CLOSED = "closed"
UNKNOWN = "unknown"  # a supervised loop in tamper: nothing can be said about the door
_LOOP_STALL_S = 30.0  # no loop sample for this long: the sampler is stuck (the watchdog is told)


@dataclass(kw_only=True)
class LockerConfig(GpioDriverSettings):
    name: str = setting(doc="locker name, a topic level: locker/<name> (letters, digits, - _ .)")
    door: InputConfig | LoopConfig = setting(
        doc="door contact: a reed switch { pin } (active while open), or a supervised loop on an ADC "
            "{ chip, channel, eol, r_eol_ohm, r_alarm_ohm, r_pullup_ohm } (docs/deploy.md)")
    arm_switch: InputConfig | None = setting(None, doc="key switch, active (high) while it arms the locker")
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
    alarm_prefixes = ("door_open_too_long", "door_opened_while_armed", "door_switch_fault", "door_tamper")

    @classmethod
    def instance_name(cls, config: LockerConfig) -> str:
        return f"locker/{config.name}"

    @classmethod
    def claims(cls, config: LockerConfig, key: str) -> list[tuple[str, str]]:
        switch = {"arm_switch": config.arm_switch}
        if isinstance(config.door, LoopConfig):
            return adc_claims(f"{key}.door", config.door) + input_claims(key, switch)
        return input_claims(key, {"door": config.door, **switch})

    def local_minute(self) -> int:
        """Minute of the day in local time, from the core's clock (GPS time when NTP is missing)."""
        local = time.localtime(self.ctx.clock.now())
        return local.tm_hour * 60 + local.tm_min

    def open(self, factory: Any) -> None:
        self.loop: SupervisedLoop | None = None
        if isinstance(self.config.door, LoopConfig):
            self.loop = self.add_device(SupervisedLoop(f"{self.ctx.name} door", self.config.door, factory,
                                                       self._wake.set, self.ctx.error))
        else:
            self.add_input("door", self.config.door, label=f"{self.ctx.name} door")
        if self.config.arm_switch is not None:
            self.add_input("arm_switch", self.config.arm_switch, label=f"{self.ctx.name} arm switch")

    def start(self) -> None:
        super().start()
        if self.loop is not None:
            LoopSampler.attach(self.loop, self)

    def begin(self, now: float) -> None:
        self.armed = self._armed_now()
        self.loop_state = None if self.loop is None else self.loop.state  # this thread's view of the loop
        door = self._door()
        saved_door = self.saved.get("door")
        if door == UNKNOWN:  # a loop in tamper: the door is as last known
            self.known_door = self.saved.get("known_door", saved_door) if saved_door != UNKNOWN else CLOSED
            self.known_door = self.known_door if self.known_door in (OPEN, CLOSED) else CLOSED
        else:
            self.known_door = door
        self.opened_mono: float | None = None
        if door == saved_door and self.saved.get("since"):
            self.since = self.saved["since"]
            if door == OPEN and self.saved.get("opened_epoch") is not None:
                open_s = max(0.0, self.ctx.clock.now() - float(self.saved["opened_epoch"]))
                self.opened_mono = now - open_s
        else:
            self.since = self.ctx.clock.iso_at(now)
            if door != UNKNOWN and saved_door is not None and \
                    self.saved.get("known_door", saved_door) != door:  # it changed while we were not watching
                self.ctx.event("door_opened" if door == OPEN else "door_closed", at_start=True,
                               **({"armed": self.armed} if door == OPEN else {"open_s": None}))
                if door == OPEN and self.armed:  # opened during an armed period the agent missed
                    self.alarm("door_opened_while_armed", True, at_start=True)
        if door == OPEN and self.opened_mono is None:
            self.opened_mono = now
        if door == CLOSED:
            self.alarm("door_open_too_long", False, at_start=True)
            self.alarm("door_opened_while_armed", False, at_start=True)
        if self.loop is not None:
            self._loop_alarms(None, at_start=True)
        self.ctx.reading(self.values(), force=True)

    def step(self, now: float, *, tick: bool = True) -> None:
        if self.loop is not None:
            for state, mono, raw in self.loop.take():
                self.on_loop(state, mono, raw)
                self.save_soon()
        super().step(now, tick=tick)

    def on_loop(self, state: str, mono: float, raw: int | None) -> None:
        """A settled change of the supervised loop (this driver's thread)."""
        was_door = self._door()
        self.loop_state = state
        door = self._door()
        if door != was_door:
            self.since = self.ctx.clock.iso_at(mono)
        if door == UNKNOWN or door == self.known_door:
            if not self._loop_alarms(raw, mono=mono):
                self.ctx.reading(self.values(), force=True, mono=mono)
            return
        self._loop_alarms(raw, mono=mono)
        self.on_change("door", door == OPEN, mono)

    def _loop_alarms(self, raw: int | None, *, mono: float | None = None, at_start: bool = False) -> bool:
        """door_tamper follows the loop; a tamper while armed counts as the door opened while armed, until
        the loop is sound with the door closed. True if an alarm changed (the state went out with it)."""
        start = {"at_start": True} if at_start else {}
        raw = self.loop.raw if raw is None and at_start else raw
        if self.loop_state in TAMPER:
            changed = self.alarm("door_tamper", True, mono=mono, state=self.values(), loop=self.loop_state,
                                 raw=raw, **start)
            if self.armed:
                changed |= self.alarm("door_opened_while_armed", True, mono=mono, state=self.values(),
                                      loop=self.loop_state, **start)
            return changed
        changed = self.alarm("door_tamper", False, mono=mono, state=self.values(), loop=self.loop_state,
                             raw=raw, **start)
        if self._door() == CLOSED and self.known_door == CLOSED:
            changed |= self.alarm("door_opened_while_armed", False, mono=mono, state=self.values(), **start)
        return changed

    def on_change(self, name: str, active: bool, mono: float) -> None:
        if name == "arm_switch":
            self.tick(mono)  # arming is re-read from every source
            return
        self.known_door = OPEN if active else CLOSED
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
        if name != "door":
            return super().on_chatter(name, chattering, now)
        door = self.inputs["door"]
        details = {"edges_per_s": round(door.edges_per_s(now), 1)} if chattering else {}
        if not self.alarm("door_switch_fault", chattering, state=self.values(), pin=door.config.pin, **details):
            self.ctx.reading(self.values(), force=True)

    def _armed_now(self) -> bool:
        switch = self.inputs.get("arm_switch")
        return self.config.always_armed or (switch is not None and switch.active) or \
            armed_at(self.config.armed_schedule, self.local_minute())

    def _door(self) -> str:
        if self.loop is None:
            return OPEN if self.inputs["door"].active else CLOSED
        return UNKNOWN if self.loop_state in TAMPER else self.loop_state

    def values(self) -> dict[str, Any]:
        if self.loop is not None:
            return {"door": self._door(), "since": self.since, "armed": self.armed, "loop": self.loop_state,
                    "tamper": self.loop_state in TAMPER}
        return {
            "door": self._door(),
            "since": self.since,
            "armed": self.armed,
            "switch_fault": self.inputs["door"].chattering,
        }

    def persistent(self) -> dict[str, Any]:
        opened = None if self.opened_mono is None else self.ctx.clock.epoch_at(self.opened_mono)
        return {"door": self._door(), "since": self.since, "opened_epoch": opened, "known_door": self.known_door}

    def alive(self) -> str | None:
        loop = getattr(self, "loop", None)
        stalled_s = 0.0 if loop is None else time.monotonic() - loop.sampled_at
        if stalled_s > _LOOP_STALL_S:
            return f"driver {self.ctx.name}: its supervised loop was not sampled for {stalled_s:.0f} s"
        return super().alive()

    def pins(self) -> list[dict[str, Any]]:
        rows = super().pins()
        return rows if self.loop is None else [self.loop.row(), *rows]

    def input_state(self, name: str, active: bool) -> str:
        return OPEN if active else CLOSED
