"""The in-process bus: drivers put readings and events on it, the core takes them off.

Drivers call from their own threads (pyserial readers, gpiozero callbacks); the core's one thread
consumes. A `queue.SimpleQueue` is enough: put() never blocks a driver, and get() with a timeout lets
an idle core sleep until its next deadline.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "alarm")


@dataclass(frozen=True)
class Reading:
    """Periodic state of one stream (`gps`, `generator`, `locker/armory-1`, `health`)."""

    stream: str
    values: dict[str, Any]
    mono: float = field(default_factory=time.monotonic)
    force: bool = False  # publish now, past deadband and minimum interval (an alarm changed)


@dataclass(frozen=True)
class Event:
    """An edge or alarm: `door_opened`, `alarm_raised`, ... Every event is delivered."""

    kind: str
    source: str
    severity: str = "info"
    details: dict[str, Any] = field(default_factory=dict)
    mono: float = field(default_factory=time.monotonic)


class Bus:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def get(self, timeout: float | None) -> Any:
        """The next item, or None when `timeout` passes first."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def get_nowait(self) -> Any:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None
