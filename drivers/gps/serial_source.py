"""The serial source: pyserial reads `port` (u-blox, MediaTek, SiRF in NMEA mode; USB or UART) and
`drivers.gps.nmea` turns the bytes into one fix per epoch, as gpsd would.

- noise, bad checksums, a wrong baud rate: counted per kind in `stats`, never a fix; with
  `baud = "auto"` the common rates are tried in turn until checksummed sentences arrive;
- exclusive open: a second reader (another agent, a forgotten minicom) would steal half the bytes.
Also `probe_port`, `boxtel doctor`'s check that an NMEA receiver answers on a port.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import serial

from drivers.gps import nmea
from drivers.gps.source import Batch

log = logging.getLogger("boxtel.gps")

AUTO = "auto"
COMMON_BAUDS = (9600, 4800, 38400, 115200, 57600, 19200)  # most receivers ship at 9600, old ones 4800
BAUDS = (4800, 9600, 19200, 38400, 57600, 115200)
# A blocking read never holds the thread longer (stop() cancels it sooner): progress stays regular,
# and an idle receiver costs one wake in this long, not several a second.
READ_TIMEOUT_S = 2.0
PROBE_READ_S = 0.5  # `boxtel doctor`'s probe shares a few seconds between baud rates
GATHER_S = 0.1
AUTO_BAUD_WINDOW_S = 2.5  # a receiver talks at least once a second; silence this long: try the next rate


class SerialSource:
    """An NMEA receiver on a serial port (see drivers.gps.source.Source)."""

    def __init__(self, port: str, baud: int | str, stale_after_s: float, stats: dict[str, int]):
        self.port_name = port
        self.auto_baud = baud == AUTO
        self.baud: int | None = None if self.auto_baud else int(baud)
        self.baud_switches = 0
        self.stale_after_s = stale_after_s
        self.stats = stats
        self._cancelled = threading.Event()
        self._port: serial.Serial | None = None

    def details(self) -> dict[str, Any]:
        return {"port": self.port_name, "baud": self.baud}

    def open(self) -> None:
        baud = self.baud or COMMON_BAUDS[0]
        self._port = serial.Serial(self.port_name, baudrate=baud, timeout=self._read_timeout_s(searching=False),
                                   exclusive=True)
        log.info("opened %s at %d baud", self.port_name, baud)
        self._reader = nmea.LineReader(self.stats)
        self._decoder = nmea.EpochDecoder(self.stats, remember_enders=False)
        self._rate_since = time.monotonic()
        # With "auto", start at the rate that worked last; cycle only if nothing valid comes at it
        # (another receiver may have been plugged in).
        self._searching = self.auto_baud
        if self._searching:
            self._port.timeout = self._read_timeout_s(searching=True)

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.close()

    def cancel(self) -> None:
        self._cancelled.set()
        port = self._port
        if port is not None:
            try:
                port.cancel_read()  # wakes a read blocked in select(); harmless once the port is closed
            except (serial.SerialException, OSError, TypeError):
                pass

    def _read_timeout_s(self, *, searching: bool) -> float:
        """Long enough to spare wakes, short enough to notice silence (stale, or the wrong baud)."""
        timeout = min(READ_TIMEOUT_S, self.stale_after_s / 2)
        return min(timeout, AUTO_BAUD_WINDOW_S / 2) if searching else timeout

    def read(self) -> Batch:
        port = self._port
        if port is None:
            raise OSError("port not open")
        data = port.read(max(1, port.in_waiting))
        now = time.monotonic()
        if data:
            data += port.read(port.in_waiting)
        if data and not data.endswith(b"\n") and not self._cancelled.is_set():
            # A UART receiver's epoch trickles in over ~0.5 s at 9600 baud: let it gather instead of
            # waking per byte (CPU on a Pi), yet stamp its first bytes with the time they came. A USB
            # receiver hands over whole sentences: nothing to wait for.
            self._cancelled.wait(GATHER_S)
            data += port.read(port.in_waiting)
        before = nmea.checked_count(self.stats)
        fixes = [fix for line in self._reader.feed(data) for fix in self._decoder.feed(line, now)]
        heard = nmea.checked_count(self.stats) > before
        if heard and self._searching:
            self._searching = False
            port.timeout = self._read_timeout_s(searching=False)
            self.baud = port.baudrate
            log.info("%s talks NMEA at %d baud", self.port_name, port.baudrate)
        elif not heard and self._searching and now - self._rate_since >= AUTO_BAUD_WINDOW_S:
            port.baudrate = _next_baud(port.baudrate)
            self.baud_switches += 1
            self._rate_since = now
            self._reader = nmea.LineReader(self.stats)
            log.debug("no NMEA on %s yet, trying %d baud", self.port_name, port.baudrate)
        return Batch(mono=now, heard=heard, fixes=fixes)


def probe_port(port: str, baud: int | str, timeout_s: float) -> tuple[bool, str]:
    """Is there an NMEA receiver on `port`? For `boxtel doctor`: (ok, one line saying what was found).

    With `baud = "auto"` each common rate gets an equal share of `timeout_s` (at least 1.2 s)."""
    rates = list(COMMON_BAUDS) if baud == AUTO else [int(baud)]
    share_s = max(timeout_s / len(rates), 1.2) if len(rates) > 1 else timeout_s
    try:
        handle = serial.Serial(port, baudrate=rates[0], timeout=PROBE_READ_S, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as err:
        if "exclusively lock" in str(err):  # pyserial's exclusive=True: someone holds the port
            return False, f"{port} is busy: another program (the running agent?) has it open"
        return False, f"cannot open {port}: {first_line(err)}"
    noise = 0
    try:
        for rate in rates:
            handle.baudrate = rate
            handle.reset_input_buffer()
            stats = nmea.new_stats()
            reader, decoder = nmea.LineReader(stats), nmea.EpochDecoder(stats)
            fixes: list[nmea.Fix] = []
            received = 0
            deadline = time.monotonic() + share_s
            while time.monotonic() < deadline:
                data = handle.read(max(1, handle.in_waiting))
                received += len(data)
                for line in reader.feed(data):
                    fixes += decoder.feed(line)
                if nmea.checked_count(stats) >= 3:
                    break
            if nmea.checked_count(stats):
                fixes += decoder.flush()
                kinds = " ".join(sorted(decoder.kinds_seen)) or "proprietary only"
                fix = fixes[-1].fix if fixes else nmea.FIX_NONE
                sats = fixes[-1].sats if fixes else None
                extra = f", {sats} satellites used" if sats is not None else ""
                bad = stats[nmea.BAD_CHECKSUM]
                return True, (f"{port}: NMEA at {rate} baud ({nmea.checked_count(stats)} sentences: {kinds}; "
                              f"fix {fix}{extra}{f'; {bad} bad checksums' if bad else ''})")
            noise += received
    except (serial.SerialException, OSError) as err:
        return False, f"{port}: read failed: {first_line(err)}"
    finally:
        handle.close()
    tried = f"{rates[0]} baud" if len(rates) == 1 else f"any of {', '.join(map(str, rates))} baud"
    if noise:
        return False, f"{port}: {noise} bytes but no valid NMEA at {tried} (wrong baud rate, or a binary protocol?)"
    return False, f"{port}: no data at {tried} (receiver off, unpowered, or another port?)"


def _next_baud(current: int) -> int:
    index = COMMON_BAUDS.index(current) if current in COMMON_BAUDS else -1
    return COMMON_BAUDS[(index + 1) % len(COMMON_BAUDS)]


def first_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text.splitlines()[0]
