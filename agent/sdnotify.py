"""systemd's notify protocol (sd_notify(3)) in a few lines, and the watchdog that pings only while alive.

No libsystemd: a datagram to $NOTIFY_SOCKET is the whole protocol. Outside systemd (no NOTIFY_SOCKET)
every call is a no-op, so a technician running `boxtel run` by hand sees no difference.

The watchdog pings (`WATCHDOG=1`) every half `WatchdogSec` only while every part of the agent has shown
progress: the core answers a tick put on its queue, paho's network thread is alive while connected, each
driver's `alive()` holds. A stuck or dead thread stops the pings, and systemd restarts the agent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("boxtel.systemd")

# A check returns None when its part is alive, else why it is not ("driver gps: no progress for 95 s").
LivenessCheck = Callable[[], str | None]


class Notifier:
    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket: its name starts with a NUL byte.
        self.address = ("\0" + address[1:]) if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """Send `READY=1`, `STATUS=...` etc. in one datagram; False when not under systemd or it failed."""
        if not self.enabled:
            return False
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.sendto("\n".join(fields).encode(), self.address)
            except OSError as err:
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), err)
                return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of WatchdogSec, from $WATCHDOG_USEC (meant for us when $WATCHDOG_PID is absent or ours)."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Watchdog:
    """Every `interval_s`: ask the core for a tick, then ping only if every check passes."""

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float,
        *,
        request_tick: Callable[[], None],
        checks: list[LivenessCheck],
    ):
        self.notifier = notifier
        self.interval_s = interval_s
        self._request_tick = request_tick
        self._checks = checks
        self._status = ""  # the core's status line, handed over with its answer to a tick
        self._tick_answered = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sent_status = ""
        self._failing: str | None = None

    def tick_answered(self, status: str) -> None:
        """Called by the core loop when it takes the tick off its queue (figures are the core's to read)."""
        self._status = status
        self._tick_answered.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def check(self) -> str | None:
        """Why the agent is not healthy, or None. Waits briefly for the core to answer a tick."""
        self._tick_answered.clear()
        self._request_tick()
        # A busy core answers within milliseconds; give it a quarter interval (at most 1 s).
        if not self._tick_answered.wait(min(1.0, self.interval_s / 4)):
            return "core loop did not answer within the watchdog interval"
        for check in self._checks:
            reason = check()
            if reason is not None:
                return reason
        return None

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval_s
            reason = self.check()
            if reason is None:
                if self._failing is not None:
                    log.info("watchdog: all parts alive again")
                    self._failing = None
                self.notifier.send("WATCHDOG=1")
            elif reason != self._failing:
                # Logged once per reason: systemd will restart us soon, the journal says why.
                log.error("watchdog: not pinging systemd: %s", reason)
                self._failing = reason
            status = self._status if reason is None else f"unhealthy: {reason}"
            if status and status != self._last_sent_status:
                self._last_sent_status = status
                self.notifier.send(f"STATUS={status}")
