"""The core's clock: every `ts` comes from here, never from `datetime.now()` in a driver.

A Pi has no RTC and the field often has no NTP, so the wall clock may be years off until something
disciplines it. Source order: `ntp` when the kernel says the clock is synchronised, else `gps` once a GPS
driver has supplied a time (anchored to the monotonic clock, so later jumps of the system clock do not
move it), else `unsynced` (the system clock as it is, flagged as such in health).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

NTP = "ntp"
GPS = "gps"
UNSYNCED = "unsynced"

_SYNC_CACHE_S = 10.0  # adjtimex is cheap, but a timestamp per reading need not ask every time


def iso_ms(epoch_s: float) -> str:
    """UTC ISO 8601 with milliseconds and `Z`, the one timestamp format on the wire."""
    dt = datetime.fromtimestamp(epoch_s, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class Clock:
    def __init__(self, kernel_synced: Callable[[], bool] | None = None):
        self._kernel_synced = kernel_synced or kernel_clock_synchronised
        self._lock = threading.Lock()
        self._gps_anchor: tuple[float, float] | None = None  # (gps epoch seconds, monotonic at receipt)
        self._gps_offset_s: float | None = None  # system clock minus GPS time at the last fix
        self._synced_cache: tuple[float, bool] = (-_SYNC_CACHE_S * 2, False)

    def gps_time(self, gps_epoch_s: float, mono_at_receipt: float) -> None:
        """A GPS driver reports a UTC time read at `mono_at_receipt` (time.monotonic())."""
        wall_at_receipt = time.time() - (time.monotonic() - mono_at_receipt)
        with self._lock:
            self._gps_anchor = (gps_epoch_s, mono_at_receipt)
            self._gps_offset_s = wall_at_receipt - gps_epoch_s

    def source(self) -> str:
        if self._ntp_synced():
            return NTP
        with self._lock:
            return GPS if self._gps_anchor is not None else UNSYNCED

    def offset_s(self) -> float | None:
        """How far the system clock is from GPS time (positive: system clock ahead), if measured."""
        with self._lock:
            return self._gps_offset_s

    def epoch_at(self, mono: float) -> float:
        """Wall-clock seconds for a monotonic instant, from the best source."""
        if not self._ntp_synced():
            with self._lock:
                anchor = self._gps_anchor
            if anchor is not None:
                return anchor[0] + (mono - anchor[1])
        return time.time() - (time.monotonic() - mono)

    def now(self) -> float:
        return self.epoch_at(time.monotonic())

    def iso_at(self, mono: float) -> str:
        return iso_ms(self.epoch_at(mono))

    def iso_now(self) -> str:
        return iso_ms(self.now())

    def snapshot(self) -> dict:
        offset = self.offset_s()
        return {
            "clock_source": self.source(),
            "clock_offset_s": None if offset is None else round(offset, 3),
        }

    def _ntp_synced(self) -> bool:
        now = time.monotonic()
        checked_at, synced = self._synced_cache
        if now - checked_at >= _SYNC_CACHE_S:
            synced = self._kernel_synced()
            self._synced_cache = (now, synced)
        return synced


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only `status` is read, the rest is padding for the kernel to fill.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


_TIME_ERROR = 5  # adjtimex() return value: clock not synchronised
_STA_UNSYNC = 0x0040


@functools.cache
def _libc() -> ctypes.CDLL:
    # Once: find_library runs `ldconfig -p` in a subprocess, far too dear for every clock check.
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def kernel_clock_synchronised() -> bool:
    """What `timedatectl` calls "System clock synchronized": the kernel's NTP state via adjtimex(2)."""
    try:
        libc = _libc()
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return False
    return state not in (-1, _TIME_ERROR) and not (timex.status & _STA_UNSYNC)
