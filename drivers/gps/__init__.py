"""GPS: an NMEA 0183 receiver -> position, fix, GPS time, geofence.

- `driver.py`  the driver the registry sees (`GpsDriver`, its `GpsConfig`) and `boxtel doctor`'s probe;
- `nmea.py`    the decoder: bytes -> checksummed sentences -> one `Fix` per epoch;
- `sim.py`     a simulated receiver on a pty for `make demo` and the tests.
"""

from drivers.gps.driver import GpsConfig, GpsDriver

__all__ = ["GpsConfig", "GpsDriver"]
