"""What a GPS source hands the driver, and what the driver asks of it.

A source (the serial port now, gpsd later) owns the transport and the decoding; the driver
(`driver.py`) owns everything that follows from fixes: link state, publishing, geofence, clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from drivers.gps.nmea import Fix


@dataclass
class Batch:
    """What one `Source.read()` brought."""

    mono: float  # time.monotonic() when the data arrived
    heard: bool = False  # something understood came (a checksummed sentence, a gpsd report): the link is alive
    fixes: list[Fix] = field(default_factory=list)  # the epochs it finished, oldest first


class Source(Protocol):
    """The driver's thread calls open(), then read() until it raises, then close(); and again after a
    backoff. stop() calls cancel() from another thread.

    - open() and read() raise OSError (pyserial's SerialException is one) when the receiver is
      missing or lost; ValueError from open() is a setting the device refuses. The message is shown
      to the user as the reason, first line only.
    - read() returns within about `min(2 s, stale_after_s / 2)` even when nothing comes, so the
      driver can tell the watchdog it is alive and notice silence (`heard=False`).
    - `stats` is the driver's counter dict (drivers.gps.nmea.new_stats(), extra keys allowed): every
      counter shows in health as `gps_<key>`.
    """

    stats: dict[str, int]

    def open(self) -> None: ...
    def read(self) -> Batch: ...
    def close(self) -> None: ...
    def cancel(self) -> None: ...

    def details(self) -> dict[str, Any]:
        """Who the receiver is, for the `gps_connected` event and `boxtel status` (e.g. port, baud)."""
        ...
