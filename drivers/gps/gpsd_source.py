"""The gpsd source: a client of gpsd's JSON protocol, for boxes where gpsd owns the receiver.

It connects to `gpsd` (host:port, loopback in practice), asks `?WATCH={"enable":true,"json":true}` and
turns TPV reports (time, mode, position, speed, course) into one `Fix` each, with the satellites and DOPs
of the latest SKY. gpsd's output is input like any other: a line is at most MAX_LINE bytes, a line that
is not JSON is counted (`json_errors`), and every field a fix takes passes `_number()` (finite, within
the decoder's PLAUSIBLE bounds) or is dropped and counted (`bad_fields`); nothing in a report can raise
out of `read()`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from agent.clock import iso_ms
from drivers.gps import nmea
from drivers.gps.source import Batch

log = logging.getLogger("boxtel.gps")

DEFAULT_PORT = 2947
MAX_LINE = 32 * 1024  # a SKY with every satellite of four constellations is ~10 KB
MAX_SATELLITES = nmea.SKY_MAX  # the one bound on a sky, the NMEA decoder's
READ_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 5.0
WATCH = b'?WATCH={"enable":true,"json":true}\n'
# counters (in the driver's stats, so health shows them as gps_<key>)
REPORTS = "gpsd_reports"  # TPV and SKY taken
JSON_ERRORS = "json_errors"  # a line that is not a JSON object
BAD_FIELDS = "bad_fields"  # a field of the wrong type, not finite, or out of range: dropped
OVERLONG = nmea.OVERLONG
_MODES = {0: nmea.FIX_NONE, 1: nmea.FIX_NONE, 2: nmea.FIX_2D, 3: nmea.FIX_3D}
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z")
EARLIEST, LATEST = datetime(1980, 1, 6, tzinfo=UTC).timestamp(), datetime(2200, 1, 1, tzinfo=UTC).timestamp()


def parse_address(text: str) -> tuple[str, int]:
    """`host:port`, `host` (port 2947) or `[v6]:port` -> (host, port); ValueError saying what is wrong."""
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f'expected "[address]:port", got "{text[:60]}"')
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f'expected "[address]:port", got "{text[:60]}"')
            port = _port(rest[1:])
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            raise ValueError(f'"{host[:60]}" is not an IPv6 address') from None
        return host, port
    if text.count(":") == 1:
        host, rest = text.split(":")
        port = _port(rest)
    if not _HOST.fullmatch(host) or len(host) > 253:
        raise ValueError(f'expected "host:port" (e.g. "127.0.0.1:2947"), got "{text[:60]!s}"')
    return host, port


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text[:6]) < 65536:
        raise ValueError(f"port must be 1 to 65535, got \"{text[:10]}\"")
    return int(text)


class GpsdSource:
    """gpsd's reports as fixes (see drivers.gps.source.Source)."""

    def __init__(self, address: str, stale_after_s: float, stats: dict[str, int]):
        self.address = address
        self.host, self.port = parse_address(address)
        self.stale_after_s = stale_after_s
        self.stats = stats
        for key in (REPORTS, JSON_ERRORS, BAD_FIELDS):
            stats.setdefault(key, 0)
        self.device: str | None = None  # the receiver gpsd reads, as it says in TPV
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._discarding = False  # inside an overlong line: drop until its end
        self._cancelled = threading.Event()
        self._sky: dict[str, Any] = {}

    def details(self) -> dict[str, Any]:
        return {"gpsd": self.address, "device": self.device}

    def open(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        try:
            sock.settimeout(min(READ_TIMEOUT_S, self.stale_after_s / 2))
            sock.sendall(WATCH)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._buffer.clear()
        self._discarding = False
        self._sky = {}
        log.info("connected to gpsd at %s", self.address)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def cancel(self) -> None:
        self._cancelled.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv()
            except OSError:
                pass

    def read(self) -> Batch:
        sock = self._sock
        if sock is None:
            raise OSError("not connected to gpsd")
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return Batch(mono=time.monotonic())
        if not data:
            raise ConnectionResetError(f"gpsd at {self.address} closed the connection")
        return self.take(data, time.monotonic())

    def take(self, data: bytes, now: float) -> Batch:
        """What gpsd sent (any bytes, any cut) -> the fixes it finished; never raises."""
        batch = Batch(mono=now)
        for line in self._lines(data):
            fix = self._report(line, now)
            if fix is not None:  # what the receiver said, through gpsd: the link is alive
                batch.heard = True
            if isinstance(fix, nmea.Fix):
                batch.fixes.append(fix)
        return batch

    def _lines(self, data: bytes) -> list[bytes]:
        """Complete lines, each at most MAX_LINE bytes; an overlong line is counted and dropped whole."""
        lines = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if self._discarding or len(self._buffer) + end - start > MAX_LINE:
                if not self._discarding:
                    self.stats[OVERLONG] += 1
                self._discarding = False
                self._buffer.clear()
            else:
                self._buffer += data[start:end]
                lines.append(bytes(self._buffer))
                self._buffer.clear()
            start = end + 1
        rest = data[start:]
        if not self._discarding and len(self._buffer) + len(rest) > MAX_LINE:
            self.stats[OVERLONG] += 1
            self._discarding = True
            self._buffer.clear()
        elif not self._discarding:
            self._buffer += rest
        return lines

    def _report(self, line: bytes, now: float) -> nmea.Fix | bool | None:
        """A Fix for a TPV, True for a SKY, None for gpsd's own reports (VERSION, DEVICES, ...) and junk:
        only the receiver's reports say the receiver is alive."""
        line = line.strip()
        if not line:
            return None
        try:
            report = json.loads(line, parse_constant=_reject_constant)
        except (ValueError, RecursionError):  # bad JSON, NaN/Infinity, a number of 5000 digits
            self.stats[JSON_ERRORS] += 1
            return None
        if not isinstance(report, dict) or not isinstance(report.get("class"), str):
            self.stats[JSON_ERRORS] += 1
            return None
        kind = report["class"]
        if kind == "TPV":
            self.stats[REPORTS] += 1
            return self._tpv(report, now)
        if kind == "SKY":
            self.stats[REPORTS] += 1
            self._sky = self._sky_values(report)
            return True
        return None

    # -- the one place gpsd's values are bounded ---------------------------------------------------
    def _number(self, report: dict, key: str, low: float, high: float) -> float | None:
        value = report.get(key)
        if value is None:
            return None
        # (an int of 4000 digits is finite but not a float: compared as it is, never converted)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
            self.stats[BAD_FIELDS] += 1
            return None
        return float(value)

    def _tpv(self, report: dict, now: float) -> nmea.Fix:
        mode = report.get("mode")
        fix = nmea.Fix(mono=now, **self._sky)
        device = report.get("device")
        if isinstance(device, str) and device.isprintable():
            self.device = device[:128]
        when = report.get("time")
        if when is not None:
            epoch_s = _epoch(when)
            if epoch_s is None:
                self.stats[BAD_FIELDS] += 1
            else:
                fix.epoch_s = epoch_s
                fix.time = iso_ms(epoch_s)
        if not isinstance(mode, int) or isinstance(mode, bool) or mode not in _MODES:
            if mode is not None:
                self.stats[BAD_FIELDS] += 1
            return fix
        lat = self._number(report, "lat", -90.0, 90.0)
        lon = self._number(report, "lon", -180.0, 180.0)
        if _MODES[mode] == nmea.FIX_NONE or lat is None or lon is None or (lat == 0 and lon == 0):
            return fix
        fix.fix, fix.lat, fix.lon = _MODES[mode], lat, lon
        if mode == 3:
            altitude = "altMSL" if "altMSL" in report else "alt"  # gpsd < 3.20 had only alt (MSL)
            fix.alt_m = self._number(report, altitude, *nmea.PLAUSIBLE["alt_m"])
        speed = self._number(report, "speed", *nmea.PLAUSIBLE["speed_mps"])
        fix.speed_mps = None if speed is None else round(speed, 3)
        fix.course_deg = self._number(report, "track", *nmea.PLAUSIBLE["course_deg"])
        return fix

    def _sky_values(self, report: dict) -> dict[str, Any]:
        values: dict[str, Any] = {}
        satellites = report.get("satellites")
        if isinstance(satellites, list):
            listed = [s for s in satellites[:MAX_SATELLITES] if isinstance(s, dict)]
            values["sats_seen"] = len(listed)
            values["sats"] = sum(1 for s in listed if s.get("used") is True)
            # signal strengths, as GSV gives them to the serial path (integrity judges their spread)
            strengths = (self._number(s, "ss", 0.0, 99.0) for s in listed if s.get("ss") is not None)
            values["snr"] = tuple(int(ss) for ss in strengths if ss is not None and ss > 0)
        else:
            seen, used = self._number(report, "nSat", 0, MAX_SATELLITES), self._number(report, "uSat", 0, MAX_SATELLITES)
            if seen is not None:
                values["sats_seen"] = int(seen)
            if used is not None:
                values["sats"] = int(used)
        for key in ("hdop", "pdop"):
            value = self._number(report, key, *nmea.PLAUSIBLE[key])
            if value is not None:
                values[key] = round(value, 2)
        return values


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or len(value) > 40 or not _TIME.fullmatch(value):
        return None
    try:  # at most microseconds (26 characters), as UTC
        epoch_s = datetime.fromisoformat(value[:26].removesuffix("Z") + "+00:00").timestamp()
    except ValueError:
        return None
    return epoch_s if EARLIEST <= epoch_s <= LATEST else None

