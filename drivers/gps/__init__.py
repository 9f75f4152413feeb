"""GPS: a GNSS receiver -> position, fix, GPS time, geofence.

- `driver.py`         the driver the registry sees (`GpsDriver`, its `GpsConfig`): link state
                      (connected/stale/disconnected), publishing, geofence, home, the clock feed;
- `source.py`         the interface between a source and the driver (`Source`, `Batch`);
- `serial_source.py`  the serial source: pyserial + the NMEA decoder, auto-baud; `probe_port` for doctor;
- `nmea.py`           the decoder: bytes -> checksummed sentences -> one `Fix` per epoch;
- `integrity.py`      GNSS integrity: each fix `ok` or `suspect` (jamming, spoofing), `gnss_interference`;
- `sim.py`            a simulated receiver on a pty for `make demo` and the tests.

A source yields decoded epochs; the driver never sees bytes. The driver's thread loops
`open()` -> `read()` ... until OSError -> `close()` -> backoff -> `open()`; each `read()` returns a
`Batch(mono, heard, fixes)` within ~2 s (`heard`: the link is alive; `fixes`: `nmea.Fix`, oldest first).
`GpsDriver._make_source()` picks the source from the config. See `source.Source` for the contract.

Trust: `GpsDriver._on_fix` judges every fix first (`self.verdict = self.integrity.judge(fix)`). Whatever
disciplines a clock from a fix (the core's `ts`, a chrony feed) asks `verdict.trusted`: not suspect,
and its GPS time agreed with the monotonic clock for several epochs. `verdict.position_trusted` gates
the geofence and home learning.
"""

from drivers.gps.driver import GpsConfig, GpsDriver

__all__ = ["GpsConfig", "GpsDriver"]
