"""Generator driver, Modbus source: polls the genset controller (DSE, ComAp) over RTU or TCP.

Each poll reads the controller's map (`controllers`), validated in one place, into the generator
payload; the controller's alarm table becomes `faults` and alarms with the controller's own severity.
A poll that fails blanks the readings at once (never a stale number) and is counted by kind in health;
`lost_after` failures in a row raise `controller_lost` and stretch the polls (exponential backoff up
to `backoff_max_s`); the first good reply clears it. The controller's alarms stay as they were while
it is silent: cutting the RS-485 pair must not clear a shutdown.

Read-only: the adapter has no write call (BRIEF §8, no remote start/stop).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from drivers.generator import FAIL_TO_START, GeneratorDriver
from drivers.generator.config import GeneratorConfig
from drivers.generator.controllers import ControllerReading, as_fields, controller
from drivers.generator.fuel import FUEL_DROP, FuelAccount

CONTROLLER_LOST = "controller_lost"
_FAULT = "generator_fault:"
_STARTING = {"prestart", "cranking", "pause", "starting"}
_SAVE_S = 60.0  # run hours and fuel level are saved at most this far apart (and on every alarm change)
_ERROR_KINDS = ("timeout", "crc", "exception", "connect", "bad_value")


class ModbusGenerator(GeneratorDriver):
    alarm_prefixes = ("fuel_low", "generator_fault", FUEL_DROP, CONTROLLER_LOST, FAIL_TO_START)

    def __init__(self, config: GeneratorConfig, ctx: Any):
        super().__init__(config, ctx)
        self.controller = controller(config.controller, config.running_rpm)
        self.saved = ctx.load_state()
        self.link: Any = None
        self.reading: ControllerReading | None = None  # None: no believable reading now
        self.failures = 0  # polls failed in a row
        self.counts = dict.fromkeys(_ERROR_KINDS, 0)
        self._stop = threading.Event()
        self._running: bool | None = None
        self._running_since = time.monotonic()
        self._start_seen: float | None = None  # when the controller began a start that has not run yet
        self._start_failed = False
        self._saved_at = 0.0
        self._dirty = False
        # A poll may back off to backoff_max_s: the watchdog must not take that wait for a stall.
        self.stall_after_s = max(self.stall_after_s, 2 * max(config.poll_s, config.backoff_max_s) + 30)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.open()
        self.start_thread(self._run)

    def open(self) -> None:
        """Make the link and restore what the last run left (start() without the thread; tests poll)."""
        from drivers.generator.modbus_adapter import ControllerLink, LinkSettings  # only now: pymodbus

        c = self.config
        self.link = ControllerLink(LinkSettings(transport=c.transport, unit=c.unit, device=c.device, baud=c.baud,
                                                parity=c.parity, host=c.host, port=c.port, timeout_s=c.timeout_s))
        known = {name: sev for name, sev in self.saved.get("alarms", {}).items()
                 if name.split(":")[0] in self.alarm_prefixes}
        self.ctx.restore_alarms(known)
        self.fuel = FuelAccount(c, alarm=self.alarm, event=self.ctx.event, active=self.ctx.active_alarms(),
                                saved=self.saved)
        self.ctx.reading(self.values(), force=True)

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(timeout=self.config.timeout_s * 8 + 2.0)
        if self.link is not None:
            self._save()
            self.link.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll(time.monotonic())
            except Exception as err:  # noqa: BLE001 - keep polling; the error shows in health
                self.ctx.error("driver_failed", f"{self.ctx.name}: {err!r}")
            self.ctx.progress()
            self._stop.wait(self.next_poll_s())

    def next_poll_s(self) -> float:
        c = self.config
        if self.failures < c.lost_after:
            return c.poll_s
        return min(c.poll_s * 2 ** (self.failures - c.lost_after + 1), c.backoff_max_s)

    # -- one poll ----------------------------------------------------------------------------------
    def poll(self, now: float) -> None:
        from drivers.generator.modbus_adapter import LinkError

        regs: dict[int, int] = {}
        try:
            for address, count in self.controller.blocks():
                regs.update(zip(range(address, address + count), self.link.read(address, count), strict=True))
            for address, count in self.controller.more_blocks(regs):
                regs.update(zip(range(address, address + count), self.link.read(address, count), strict=True))
        except LinkError as err:
            self._failed(now, err.kind, str(err))
            return
        reading = self.controller.decode(regs)
        if reading.rejected:
            self.counts["bad_value"] += 1
            self.ctx.error("modbus_bad_value", f"{self.link.where()}: rejected implausible "
                                               f"{', '.join(sorted(set(reading.rejected)))}")
        self._answered(now, reading)

    def _failed(self, now: float, kind: str, message: str) -> None:
        self.counts[kind] += 1
        self.ctx.error(f"modbus_{kind}", message)
        self.failures += 1
        self.reading = None  # never a stale number
        if self.failures >= self.config.lost_after:
            self.alarm(CONTROLLER_LOST, True, state=self.values(), link=self.link.where(), failed_polls=self.failures)
        self.report(now)

    def _answered(self, now: float, reading: ControllerReading) -> None:
        self.failures = 0
        self.reading = reading
        self.alarm(CONTROLLER_LOST, False, state=self.values())
        self._track_running(now, reading.running)
        self._controller_alarms(now, reading)
        self.fuel.update(now, reading.fuel_pct, reading.running, self.values)
        self.report(now)

    def _track_running(self, now: float, running: bool | None) -> None:
        if running is None or running == self._running:
            return
        was, self._running = self._running, running
        if was is None:
            saved = self.saved.get("running")
            if saved is None or saved == running:
                return
            # the set started or stopped while the agent was down
            self.ctx.event("generator_started" if running else "generator_stopped", at_start=True,
                           **({} if running else {"run_s": None}))
        elif running:
            self.ctx.event("generator_started")
        else:
            self.ctx.event("generator_stopped", run_s=round(now - self._running_since))
        self._running_since = now
        self._dirty = True

    def _controller_alarms(self, now: float, reading: ControllerReading) -> None:
        wanted: dict[str, tuple[str, str]] = {}  # alarm -> (severity, the controller's name)
        for name, severity in reading.alarms.items():
            wanted[FAIL_TO_START if name == FAIL_TO_START else _FAULT + name] = (severity, name)
        # A start that never reaches running: the controller's own alarm, or our watch of its state.
        if reading.running:
            self._start_seen, self._start_failed = None, False
        elif reading.engine_state in _STARTING:
            self._start_seen = self._start_seen if self._start_seen is not None else now
            if now - self._start_seen >= self.config.fail_to_start_s:
                self._start_failed = True
        if self._start_failed and FAIL_TO_START not in wanted:
            wanted[FAIL_TO_START] = ("alarm", "start_watch")
        for alarm, (severity, name) in sorted(wanted.items()):
            self.alarm(alarm, True, severity=severity, state=self.values(), controller_alarm=name)
        for alarm in self.ctx.active_alarms():
            if (alarm.startswith(_FAULT) or alarm == FAIL_TO_START) and alarm not in wanted:
                self.alarm(alarm, False, state=self.values())

    def alarm(self, alarm: str, active: bool, *, severity: str = "alarm", state: dict[str, Any] | None = None,
              **details: Any) -> bool:
        if active:
            changed = self.ctx.raise_alarm(alarm, severity, state=state, **details)
        else:
            changed = self.ctx.clear_alarm(alarm, state=state, **details)
        self._dirty |= changed
        return changed

    def report(self, now: float) -> None:
        values = self.values()
        if values != self.ctx.last_values:
            self.ctx.reading(values)
        if self._dirty or now - self._saved_at >= _SAVE_S:
            self._save(now)

    # -- state -------------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        r = self.reading if self.reading is not None else ControllerReading()
        answered = self.reading is not None
        faults = sorted(r.alarms) if answered else None
        values: dict[str, Any] = {
            "running": r.running,
            "fuel_pct": r.fuel_pct,
            "run_hours": r.run_hours,
            "fault": bool(faults) if answered else None,
            "faults": faults,
            **as_fields(r),
        }
        if self.config.tank_litres is not None and hasattr(self, "fuel"):
            values.update(self.fuel.values() if answered else {"fuel_l": None, "fuel_lph": None,
                                                                "hours_to_empty": None})
        return values

    def _save(self, now: float | None = None) -> None:
        data: dict[str, Any] = {"alarms": self.ctx.active_alarms()}
        if self._running is not None:
            data["running"] = self._running
        if self.reading is not None and self.reading.run_hours is not None:
            data["run_hours"] = self.reading.run_hours
        elif "run_hours" in self.saved:
            data["run_hours"] = self.saved["run_hours"]
        if hasattr(self, "fuel"):
            data.update(self.fuel.persistent())
        try:
            self.ctx.save_state(data)
        except OSError as err:
            self.ctx.error("state_save", f"cannot save {self.ctx.name} state: {err.strerror}")
            return
        self.saved = data
        self._dirty = False
        self._saved_at = time.monotonic() if now is None else now

    def health(self) -> dict[str, Any]:
        fields = {f"generator_modbus_{kind}": count for kind, count in self.counts.items()}
        run_hours = self.reading.run_hours if self.reading is not None else None
        fields["generator_run_hours"] = run_hours
        return fields

    def status(self) -> dict[str, Any]:
        # `link` as `boxtel status` reads it for any driver: "connected" or what is wrong
        if self.reading is not None:
            link = "connected"
        else:
            link = "lost" if self.failures >= self.config.lost_after else ("not answering" if self.failures else "connecting")
        return {**super().status(), "link": link, "controller": self.config.controller,
                "port": self.link.where() if self.link is not None else None,
                "failed_polls": self.failures, "modbus_errors": dict(self.counts)}
