"""The driver interface, and the context through which a driver talks to the core.

A driver turns hardware into readings and events; it knows nothing of MQTT, timestamps, sequence
numbers or rate limits. It gets its hardware through one seam (a serial port path, gpiozero's pin
factory, psutil), so simulation and tests run the same driver code as a Pi does.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from agent import statefile
from agent.bus import SEVERITIES, Bus, Event, Reading
from agent.clock import Clock

_ERROR_LOG_EVERY = 100  # after the first, log every Nth error of a kind: a noisy line must not flood journald


class DriverContext:
    """What a driver may do: report readings, events and alarms, count errors, keep a little state."""

    def __init__(
        self, name: str, *, stream: str | None = None, bus: Bus, clock: Clock, state_dir: Path, simulate: bool,
        settings: dict[str, Any] | None = None, counters: dict[str, float] | None = None,
    ):
        self.name = name  # "gps", "locker/armory-1": the `source` of its events
        self.stream = stream or name  # where its readings go: usually its name, "health" for the host
        self.bus = bus
        self.clock = clock
        self.state_dir = state_dir
        self.simulate = simulate
        self.settings = settings or {}  # the core sections by name ("gpio": its pin factory, ...)
        self._counter_floors = counters or {}  # field -> the highest value the core ever accepted
        self.log = logging.getLogger(f"boxtel.{name.replace('/', '.')}")
        self._lock = threading.Lock()
        self._alarms: dict[str, str] = {}  # alarm -> severity
        self._last_values: dict[str, Any] | None = None
        self.errors: dict[str, int] = {}
        self.last_error: str | None = None
        self.last_progress = time.monotonic()

    # -- readings -----------------------------------------------------------------------------------
    def reading(self, values: dict[str, Any], *, force: bool = False, mono: float | None = None) -> None:
        """Report the stream's current state; the core decides whether it is worth sending."""
        with self._lock:
            self._last_values = dict(values)
            payload = {**values, "alarms": sorted(self._alarms)}
        self.progress()
        self.bus.put(Reading(self.stream, payload, mono if mono is not None else time.monotonic(), force))

    @property
    def last_values(self) -> dict[str, Any] | None:
        with self._lock:
            return None if self._last_values is None else dict(self._last_values)

    # -- events and alarms --------------------------------------------------------------------------
    def event(self, kind: str, severity: str = "info", *, mono: float | None = None, **details: Any) -> None:
        if severity not in SEVERITIES:
            raise ValueError(f"severity {severity!r} is not one of {SEVERITIES}")
        self.bus.put(Event(kind, self.name, severity, details, mono if mono is not None else time.monotonic()))

    def raise_alarm(
        self, alarm: str, severity: str = "alarm", *, mono: float | None = None,
        state: dict[str, Any] | None = None, **details: Any,
    ) -> bool:
        """Raise `alarm` once: True if it was not active. The stream's state (`state`, or the last
        reading) is re-sent at once with the alarm listed."""
        with self._lock:
            if alarm in self._alarms:
                return False
            self._alarms[alarm] = severity
        self.event("alarm_raised", severity, mono=mono, alarm=alarm, **details)
        self._resend_state(mono, state)
        return True

    def clear_alarm(
        self, alarm: str, *, mono: float | None = None, state: dict[str, Any] | None = None, **details: Any
    ) -> bool:
        """Clear `alarm` once: True if it was active."""
        with self._lock:
            severity = self._alarms.pop(alarm, None)
        if severity is None:
            return False
        self.event("alarm_cleared", "info", mono=mono, alarm=alarm, **details)
        self._resend_state(mono, state)
        return True

    def restore_alarms(self, alarms: dict[str, str]) -> None:
        """Alarms that were active before a restart: listed again without a second `alarm_raised`, so an
        alarm is raised once and cleared once across restarts (the driver clears what no longer holds)."""
        with self._lock:
            self._alarms.update(alarms)

    def active_alarms(self) -> dict[str, str]:
        with self._lock:
            return dict(self._alarms)

    def _resend_state(self, mono: float | None, state: dict[str, Any] | None) -> None:
        values = state if state is not None else self.last_values
        if values is not None:
            self.reading(values, force=True, mono=mono)

    # -- errors, liveness, state --------------------------------------------------------------------
    def error(self, kind: str, message: str) -> None:
        """Count an error of `kind` (shown in health per driver); log the first and every Nth."""
        with self._lock:
            count = self.errors.get(kind, 0) + 1
            self.errors[kind] = count
            self.last_error = message
        if count == 1 or count % _ERROR_LOG_EVERY == 0:
            self.log.warning("%s (%s, %d so far)", message, kind, count)

    def error_total(self) -> int:
        with self._lock:
            return sum(self.errors.values())

    def progress(self) -> None:
        """Mark this driver alive (the systemd watchdog only pings while every driver makes progress)."""
        self.last_progress = time.monotonic()

    def resume_counter(self, field: str, saved: float) -> float:
        """Where a counter (one of the driver's `counters`) resumes after a restart: what the driver saved,
        or, if higher, the last value any subscriber could have seen (the core records it with the outbox
        commit that carried it, so a SIGKILL or a power cut between two saves never takes it back)."""
        return max(saved, self._counter_floors.get(field, saved))

    def _state_path(self) -> Path:
        return self.state_dir / f"driver-{self.name.replace('/', '_')}.json"

    def load_state(self) -> dict[str, Any]:
        return statefile.load(self._state_path())

    def save_state(self, data: dict[str, Any]) -> None:
        statefile.save(self._state_path(), data)


class Driver:
    """Base class: subclasses set `section` and `Config` and implement start() and stop()."""

    section: ClassVar[str]
    Config: ClassVar[type]
    many: ClassVar[bool] = False  # True: the section is an array of tables ([[locker]]), one driver each
    simulator: ClassVar[str | None] = None  # "module:Class" of the simulated hardware for this kind
    # No ctx.progress() for this long means the driver is stuck (the systemd watchdog stops pinging).
    stall_after_s: ClassVar[float] = 120.0
    # Fields of its readings that only grow (Home Assistant: total_increasing): they resume after a
    # restart from at least the last value published (`ctx.resume_counter`).
    counters: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, ctx: DriverContext):
        self.config = config
        self.ctx = ctx
        self.threads: list[threading.Thread] = []  # the driver's own threads: one dying stops the watchdog

    def start_thread(self, target: Any) -> threading.Thread:
        """Start one of the driver's own threads, watched by `alive()`."""
        thread = threading.Thread(target=target, name=f"driver-{self.ctx.name}", daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def alive(self) -> str | None:
        """None while the driver works; else why not (its thread died, no progress for too long)."""
        for thread in self.threads:
            if not thread.is_alive():
                return f"driver {self.ctx.name}: thread {thread.name} is not running"
        idle_s = time.monotonic() - self.ctx.last_progress
        if idle_s > self.stall_after_s:
            return f"driver {self.ctx.name}: no progress for {idle_s:.0f} s"
        return None

    @classmethod
    def instance_name(cls, config: Any) -> str:
        """The name of the driver built from `config`: the `source` of its events."""
        return cls.section

    @classmethod
    def stream_name(cls, config: Any) -> str:
        """The stream (topic level) its readings go to."""
        return cls.instance_name(config)

    @classmethod
    def claims(cls, config: Any, key: str) -> list[tuple[str, str]]:
        """Hardware this config would take, as (key path, resource) -- a pin or port used twice is an error."""
        return []

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def health(self) -> dict[str, Any]:
        """Flat fields this driver adds to the `health` payload (prefixed with its name)."""
        return {}

    def pins(self) -> list[dict[str, Any]]:
        """For `boxtel pins`: one dict per configured GPIO input --
        {"input": "locker/armory-1 door", "pin": 17, "raw": 0 or 1, "state": "open", "edges_per_s": 0.0}."""
        return []

    def status(self) -> dict[str, Any]:
        """A snapshot for local diagnostics: last reading, state, anything a technician should see."""
        return {
            "values": self.ctx.last_values,
            "alarms": self.ctx.active_alarms(),
            "errors": dict(self.ctx.errors),
            "last_error": self.ctx.last_error,
        }
