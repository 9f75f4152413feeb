"""GPS driver: fixes from a source -> position, fix, GPS time, geofence.

The source (`serial_source.SerialSource`: pyserial and the NMEA decoder) hands over one fix per epoch;
this module does what follows from them, and survives what a container's receiver does:
- unplug and replug: a source that fails reports `disconnected`, one that goes quiet `stale` (health
  and an event); reopening retries with backoff and resumes on its own;
- no NTP: every valid dated fix hands GPS time to the core's clock (`Clock.gps_time`).
It publishes on the `gps` stream every `publish_interval_s`, sooner when the box moved more than
`min_move_m` or the fix mode changed, and raises `container_moved` when the box leaves its geofence.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from agent.schema import SettingError, setting
from agent.throttle import StreamSettings
from drivers.base import Driver
from drivers.gps import nmea
from drivers.gps.chrony import ChronyFeed, ChronySources
from drivers.gps.gpsd_source import GpsdSource, parse_address
from drivers.gps.integrity import IntegrityMonitor, IntegrityVerdict
from drivers.gps.serial_source import AUTO, BAUDS, SerialSource, first_line
from drivers.gps.source import Source

log = logging.getLogger("boxtel.gps")

RECONNECT_MIN_S = 1.0
CONNECTED, DISCONNECTED, STALE = "connected", "disconnected", "stale"
MOVED = "container_moved"
INTERFERENCE = "gnss_interference"
STATE_HOME = "home"
SERIAL, GPSD = "serial", "gpsd"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with its NUL


@dataclass(kw_only=True)
class GpsConfig(StreamSettings):
    source: str = setting(SERIAL, choices=(SERIAL, GPSD),
                          doc='"serial": read the receiver on `port`; "gpsd": ask gpsd, which owns it')
    port: str = setting("/dev/serial0", path=True, doc="serial device of the receiver (/dev/ttyUSB0, /dev/ttyACM0, ...)")
    gpsd: str = setting("127.0.0.1:2947", doc='gpsd\'s address (host:port), with source = "gpsd"')
    chrony_socket: str = setting(
        "", path=True, doc='feed GPS time to chrony\'s `refclock SOCK` here (e.g. "/run/chrony.boxtel.sock"); "": off'
    )
    chrony_command_socket: str = setting(
        "/run/chrony/chronyd.sock", path=True, doc="chrony's command socket: health tells whether chrony uses GPS"
    )
    baud: int | str = setting(AUTO, doc='4800 to 115200, or "auto": try the common rates until NMEA arrives')
    publish_interval_s: float = setting(10.0, min=1.0, max=3600.0, doc="publish the position this often")
    min_move_m: float = setting(
        25.0, min=0.0, max=100000.0, doc="publish at once when the box moved further (0: every epoch)"
    )
    stale_after_s: float = setting(5.0, min=1.0, max=600.0, doc="no valid sentence this long: link stale")
    reconnect_max_s: float = setting(30.0, min=1.0, max=3600.0, doc="longest wait between reopen attempts")
    home_lat: float | None = setting(None, min=-90.0, max=90.0, doc="geofence centre; default: learned")
    home_lon: float | None = setting(None, min=-180.0, max=180.0, doc="geofence centre; default: learned")
    geofence_radius_m: float = setting(200.0, min=0.0, max=1e7, doc="leaving this circle raises container_moved; 0: off")
    geofence_hysteresis_m: float = setting(
        50.0, min=0.0, max=1e6, doc="back inside radius minus this clears the alarm (GPS jitter must not flap it)"
    )
    geofence_dwell_s: float = setting(30.0, min=0.0, max=86400.0, doc="outside (or back inside) this long first")
    learn_home: bool = setting(True, doc="without home_lat/home_lon: learn home from the first stable fix")
    home_learn_s: float = setting(60.0, min=1.0, max=86400.0, doc="a fix must hold still this long to become home")
    min_interval_s: float = setting(0.0, min=0.0, max=3600.0, doc="never publish gps more often (the driver paces)")
    # Parked, a receiver jitters by metres and its course is noise: neither is news (0.0002 deg is 22 m of
    # latitude). Moving, lat/lon change every epoch and carry speed and course along.
    deadband: dict[str, float] = setting(
        {"lat": 0.0002, "lon": 0.0002, "alt_m": 20.0, "speed_mps": 1.0, "course_deg": float("inf"), "sats": 3.0,
         "sats_seen": float("inf"), "hdop": 1.0, "pdop": 1.5, "home_distance_m": float("inf")},
        min=0.0, inf_ok=True, doc="per field: a smaller change is no change; inf: never a reason to send on its own",
        keys=("lat", "lon", "alt_m", "speed_mps", "course_deg", "sats", "sats_seen", "hdop", "pdop", "home_distance_m"))

    def validate(self) -> None:
        StreamSettings.validate(self)
        try:
            parse_address(self.gpsd)
        except ValueError as err:
            raise SettingError("gpsd", str(err)) from None
        for key in ("chrony_socket", "chrony_command_socket"):
            path = getattr(self, key)
            if len(path.encode(errors="replace")) > MAX_SOCKET_PATH or not path.isprintable():
                raise SettingError(key, f"expected a socket path of at most {MAX_SOCKET_PATH} printable bytes")
        if isinstance(self.baud, str) and self.baud != AUTO:
            raise SettingError("baud", f'expected a baud rate or "auto", got "{self.baud}"')
        if isinstance(self.baud, int) and self.baud not in BAUDS:
            raise SettingError("baud", f"expected one of {', '.join(map(str, BAUDS))} or \"auto\", got {self.baud}")
        if (self.home_lat is None) != (self.home_lon is None):
            raise SettingError("home_lat", "home_lat and home_lon go together")
        if self.geofence_hysteresis_m >= self.geofence_radius_m > 0:
            raise SettingError("geofence_hysteresis_m", "must be smaller than geofence_radius_m")


class GpsDriver(Driver):
    section = "gps"
    Config = GpsConfig
    simulator = "drivers.gps.sim:GpsSimulator"

    @classmethod
    def claims(cls, config: GpsConfig, key: str) -> list[tuple[str, str]]:
        claims = [] if config.source == GPSD else [(f"{key}.port", f"serial port {os.path.realpath(config.port)}")]
        if config.chrony_socket:  # two feeds into one refclock would be one source with two clocks
            claims.append((f"{key}.chrony_socket", f"chrony socket {config.chrony_socket}"))
        return claims

    def __init__(self, config: GpsConfig, ctx):
        super().__init__(config, ctx)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stats = nmea.new_stats()
        self.source: Source = self._make_source()
        self.link = DISCONNECTED
        self._link_reported: str | None = None  # None until the first open attempt tells
        self.reconnects = 0
        self.last_sentence_mono: float | None = None
        self.fix: nmea.Fix = nmea.Fix()
        self._published: dict[str, Any] | None = None
        self._next_publish = 0.0
        self.geofence = Geofence(config.geofence_radius_m, config.geofence_hysteresis_m, config.geofence_dwell_s)
        self.home_learner = HomeLearner(config.home_learn_s, max(config.geofence_hysteresis_m, 10.0))
        self.home_source = "none"
        self.chrony = ChronyFeed(config.chrony_socket) if config.chrony_socket else None
        self.chrony_sources = ChronySources(config.chrony_command_socket) if self.chrony else None
        self.integrity = IntegrityMonitor()
        self.verdict = IntegrityVerdict()  # of the latest fix: `verdict.trusted` says whether its time may be used

    def _make_source(self) -> Source:
        if self.config.source == GPSD:
            return GpsdSource(self.config.gpsd, self.config.stale_after_s, self.stats)
        return SerialSource(self.config.port, self.config.baud, self.config.stale_after_s, self.stats)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._load_home()
        self._thread = self.start_thread(self._run)

    def stop(self) -> None:
        self._stop.set()
        self.source.cancel()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self.chrony is not None:
            self.chrony.close()

    def _run(self) -> None:
        delay = RECONNECT_MIN_S
        source = self.source
        while not self._stop.is_set():
            try:
                source.open()
            except (OSError, ValueError) as err:
                self._set_link(DISCONNECTED, reason=first_line(err))
                self._wait(delay)
                delay = min(delay * 2, self.config.reconnect_max_s)
                continue
            opened = time.monotonic()
            try:
                self._read_until_lost(source, opened)
            except OSError as err:
                self._set_link(DISCONNECTED, reason=first_line(err))
            except Exception as err:  # noqa: BLE001 - keep the driver alive; the error shows in health
                self.ctx.error("read_failed", f"GPS read failed: {err!r}")
                log.exception("GPS read failed")
                self._set_link(DISCONNECTED, reason=repr(err))
            finally:
                source.close()
            if self.last_sentence_mono is not None and self.last_sentence_mono >= opened:
                delay = RECONNECT_MIN_S  # it worked for a while: the next attempt may well work again
            if not self._stop.is_set():
                self.reconnects += 1
                self._wait(delay)
                delay = min(delay * 2, self.config.reconnect_max_s)

    def _wait(self, seconds: float) -> None:
        """Sleep before a retry, still telling the watchdog this thread is alive and well."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            self.ctx.progress()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(min(remaining, 1.0))

    # -- reading -----------------------------------------------------------------------------------
    def _read_until_lost(self, source: Source, opened: float) -> None:
        """Follow the source until it fails (an exception) or stop()."""
        heard_since_open = False
        while not self._stop.is_set():
            batch = source.read()
            now = batch.mono
            self.ctx.progress()
            if batch.heard:
                self.last_sentence_mono = now
                heard_since_open = True
                self._set_link(CONNECTED)
            for fix in batch.fixes:  # after the link state: "connected" comes before "fix_acquired"
                self._on_fix(fix, now)
            quiet_since = self.last_sentence_mono if heard_since_open else opened
            if now - quiet_since >= self.config.stale_after_s:
                silence = "no report from the receiver through gpsd" if self.config.source == GPSD else "no valid NMEA"
                self._set_link(STALE, reason=f"{silence} for {now - quiet_since:.0f} s")
            self._publish_if_due(now)

    def _on_fix(self, fix: nmea.Fix, now: float) -> None:
        had_position = self.fix.has_position
        verdict = self.integrity.judge(fix)
        with self._lock:
            self.fix = fix
            self.verdict = verdict
        # GPS time only from a fix whose time has agreed with the monotonic clock for several epochs
        # and that is not suspect: one forged RMC must not re-stamp every message.
        if fix.has_position and verdict.trusted and fix.epoch_s is not None and fix.mono is not None:
            self.ctx.clock.gps_time(fix.epoch_s, fix.mono)
            if self.chrony is not None:
                self.chrony.send(fix.epoch_s, fix.mono)
        if self.chrony_sources is not None:  # also while suspect: health shows chrony letting GPS go
            self.chrony_sources.poll(now)
        if fix.has_position and not had_position:
            self.ctx.event("fix_acquired", fix=fix.fix, lat=_round(fix.lat, 7), lon=_round(fix.lon, 7),
                           sats=fix.sats, mono=now)
        elif had_position and not fix.has_position:
            self.ctx.event("fix_lost", "warning", mono=now)
        self._check_interference(now)
        if fix.has_position and verdict.position_trusted:  # a spoofed position moves no geofence
            self._check_geofence(fix, now)
        values = self.values()
        published = self._published
        if published is None or values["fix"] != published["fix"] or self._moved(values):
            self._publish(values, now)

    # -- link state --------------------------------------------------------------------------------
    def _set_link(self, link: str, reason: str = "") -> None:
        """Announce a change of link state (health shows it, an event tells the fleet)."""
        if link == self._link_reported:
            return
        self._link_reported = self.link = link
        if link == CONNECTED:
            self.ctx.event("gps_connected", **self.source.details())
            return
        # Stale or gone: whatever fix there was is over, and the retained state must say so.
        self.home_learner.reset()
        self.integrity.lost()
        if self.fix.has_position:
            self.ctx.event("fix_lost", "warning", reason=reason)
        with self._lock:
            self.fix = nmea.Fix()
        self._publish(self.values(), time.monotonic())
        if link == STALE:
            self.ctx.event("gps_stale", "warning", **self._where(), reason=reason)
        else:
            self.ctx.error("disconnected", f"GPS {next(iter(self._where().values()))}: {reason}")
            self.ctx.event("gps_disconnected", "warning", **self._where(), reason=reason)

    def _where(self) -> dict[str, str]:
        return {"gpsd": self.config.gpsd} if self.config.source == GPSD else {"port": self.config.port}

    # -- publishing --------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        with self._lock:
            fix, verdict = self.fix, self.verdict
        home = self.geofence.home
        distance = None
        if home is not None and fix.has_position:
            distance = round(nmea.distance_m(home[0], home[1], fix.lat, fix.lon), 1)
        return {
            "lat": _round(fix.lat, 7),
            "lon": _round(fix.lon, 7),
            "alt_m": _round(fix.alt_m, 1),
            "speed_mps": _round(fix.speed_mps, 2) if fix.has_position else None,
            "course_deg": _round(fix.course_deg, 1) if fix.has_position else None,
            "fix": fix.fix,
            "sats": fix.sats,
            "sats_seen": fix.sats_seen,
            "hdop": fix.hdop,
            "pdop": fix.pdop,
            "home_distance_m": distance,
            "gnss_integrity": verdict.integrity,
        }

    def _moved(self, values: dict[str, Any]) -> bool:
        last = self._published
        if last is None or values["lat"] is None or last["lat"] is None:
            return False
        return nmea.distance_m(last["lat"], last["lon"], values["lat"], values["lon"]) > self.config.min_move_m

    def _publish_if_due(self, now: float) -> None:
        if now >= self._next_publish:
            self._publish(self.values(), now)

    def _publish(self, values: dict[str, Any], now: float) -> None:
        self._published = values
        self._next_publish = now + self.config.publish_interval_s
        self.ctx.reading(values, mono=now)

    # -- integrity ---------------------------------------------------------------------------------
    def _check_interference(self, now: float) -> None:
        verdict = self.verdict
        if self.integrity.alarmed == (INTERFERENCE in self.ctx.active_alarms()):
            return  # the usual epoch: nothing changes
        if self.integrity.alarmed:
            self.ctx.raise_alarm(INTERFERENCE, "warning", mono=now, state=self.values(), reason=verdict.reason,
                                 reasons=list(verdict.reasons))
        else:
            self.ctx.clear_alarm(INTERFERENCE, mono=now, state=self.values())

    # -- geofence ----------------------------------------------------------------------------------
    def _load_home(self) -> None:
        if self.config.home_lat is not None:
            self.geofence.home = (self.config.home_lat, self.config.home_lon)
            self.home_source = "configured"
            return
        saved = self.ctx.load_state().get(STATE_HOME)
        if isinstance(saved, dict) and _is_position(saved.get("lat"), saved.get("lon")):
            self.geofence.home = (float(saved["lat"]), float(saved["lon"]))
            self.home_source = "learned"

    def _check_geofence(self, fix: nmea.Fix, now: float) -> None:
        if self.geofence.home is None:
            if not self.config.learn_home or self.config.geofence_radius_m <= 0:
                return
            home = self.home_learner.update(fix.lat, fix.lon, now)
            if home is None:
                return
            self.geofence.home = home
            self.home_source = "learned"
            self.ctx.save_state({STATE_HOME: {"lat": home[0], "lon": home[1], "learned_at": fix.time}})
            self.ctx.event("home_learned", lat=round(home[0], 7), lon=round(home[1], 7))
            return
        change = self.geofence.update(fix.lat, fix.lon, now)
        details = {"distance_m": round(self.geofence.distance_m, 1), "radius_m": self.config.geofence_radius_m}
        if change == Geofence.LEFT:
            self.ctx.raise_alarm(MOVED, "alarm", mono=now, state=self.values(), **details)
        elif change == Geofence.RETURNED:
            self.ctx.clear_alarm(MOVED, mono=now, state=self.values(), **details)

    # -- diagnostics -------------------------------------------------------------------------------
    def _sentence_age_s(self) -> float | None:
        if self.last_sentence_mono is None:
            return None
        return round(time.monotonic() - self.last_sentence_mono, 1)

    def health(self) -> dict[str, Any]:
        with self._lock:
            fix = self.fix.fix
        fields = {
            "gps_link": self.link,
            "gps_fix": fix,
            **{f"gps_{key}": value for key, value in self.source.details().items() if key != "port"},
            "gps_last_sentence_age_s": self._sentence_age_s(),
            "gps_reconnects": self.reconnects,
        }
        fields.update({f"gps_{kind}": count for kind, count in self.stats.items()})
        if self.chrony is not None:
            fields.update(gps_chrony_samples=self.chrony.samples, gps_chrony_errors=self.chrony.errors,
                          gps_chrony_source=self.chrony_sources.state)
        return fields

    def status(self) -> dict[str, Any]:
        with self._lock:
            fix = self.fix.fix
        home = self.geofence.home
        return {
            **super().status(),
            **{key: AUTO if key == "baud" and value is None else value
               for key, value in self.source.details().items()},
            "link": self.link,
            "last_sentence_age_s": self._sentence_age_s(),
            "sentences_ok": self.stats[nmea.SENTENCES_OK],
            "fix": fix,
            "counters": dict(self.stats),
            "home": None if home is None else {"lat": home[0], "lon": home[1], "source": self.home_source},
        }


class Geofence:
    """A circle around home. Leaving takes `radius_m` crossed for `dwell_s`; returning takes being back
    inside `radius_m - hysteresis_m` for `dwell_s`. A parked box's jitter (a few metres, now and then a
    multipath jump) therefore never flaps the alarm."""

    LEFT, RETURNED = "left", "returned"

    def __init__(self, radius_m: float, hysteresis_m: float, dwell_s: float,
                 home: tuple[float, float] | None = None):
        self.radius_m = radius_m
        self.hysteresis_m = hysteresis_m
        self.dwell_s = dwell_s
        self.home = home
        self.outside = False
        self.distance_m = 0.0
        self._changing_since: float | None = None

    def update(self, lat: float, lon: float, mono: float) -> str | None:
        """The change this fix confirms (LEFT, RETURNED), if any."""
        if self.home is None or self.radius_m <= 0:
            return None
        self.distance_m = nmea.distance_m(self.home[0], self.home[1], lat, lon)
        if self.outside:
            changing = self.distance_m < self.radius_m - self.hysteresis_m
        else:
            changing = self.distance_m > self.radius_m
        if not changing:
            self._changing_since = None
            return None
        if self._changing_since is None:
            self._changing_since = mono
        if mono - self._changing_since < self.dwell_s:
            return None
        self._changing_since = None
        self.outside = not self.outside
        return self.LEFT if self.outside else self.RETURNED


class HomeLearner:
    """Home is where the box stood still: fixes within `spread_m` of their running mean for `hold_s`."""

    def __init__(self, hold_s: float, spread_m: float):
        self.hold_s = hold_s
        self.spread_m = spread_m
        self.reset()

    def reset(self) -> None:
        self._since: float | None = None
        self._sum_lat = self._sum_lon = 0.0
        self._count = 0

    def update(self, lat: float, lon: float, mono: float) -> tuple[float, float] | None:
        if self._count and nmea.distance_m(*self.mean(), lat, lon) > self.spread_m:
            self.reset()  # it moved: start over from here
        if self._since is None:
            self._since = mono
        self._sum_lat += lat
        self._sum_lon += lon
        self._count += 1
        if mono - self._since >= self.hold_s and self._count >= 3:
            return self.mean()
        return None

    def mean(self) -> tuple[float, float]:
        return self._sum_lat / self._count, self._sum_lon / self._count


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _is_position(lat: Any, lon: Any) -> bool:
    return isinstance(lat, int | float) and isinstance(lon, int | float) and abs(lat) <= 90 and abs(lon) <= 180

