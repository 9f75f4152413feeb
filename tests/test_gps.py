"""GPS driver through a real pseudo-terminal: fixes, GPS time, link loss and return, auto baud, geofence."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.bus import Bus, Event, Reading
from agent.clock import Clock
from drivers.base import DriverContext
from drivers.gps.driver import GpsConfig, GpsDriver
from drivers.gps.nmea import distance_m
from drivers.gps.serial_source import probe_port
from drivers.gps.sim import HOME, epoch_sentences, sentence
from tests.support import wait_until

GPS_NOW = 1_764_150_000.0  # 2025-11-26T09:40:00Z: what the receiver says it is
EPOCH_STEP_S = 0.05  # epochs sent in a burst: a 20 Hz receiver


class Harness:
    """A GPS driver on a pty, with the bus it reports to drained into lists."""

    def __init__(self, tmp_path: Path, pty, clock: Clock | None = None, **config):
        self.pty = pty
        self.bus = Bus()
        self.clock = clock or Clock(lambda: False)
        self.ctx = DriverContext("gps", bus=self.bus, clock=self.clock, state_dir=tmp_path, simulate=False)
        self.config = GpsConfig(port=str(pty.path), **{"baud": 9600, "stale_after_s": 1.5, **config})
        self.driver = GpsDriver(self.config, self.ctx)
        self.readings: list[dict] = []
        self.events: list[Event] = []
        self._started = time.monotonic()
        self.epoch_s = GPS_NOW - EPOCH_STEP_S

    def start(self) -> Harness:
        self.driver.start()
        return self

    def drain(self) -> None:
        while (item := self.bus.get_nowait()) is not None:
            if isinstance(item, Reading):
                self.readings.append(item.values)
            else:
                self.events.append(item)

    def kinds(self) -> list[str]:
        self.drain()
        return [e.kind for e in self.events]

    def send(self, lat: float = HOME[0], lon: float = HOME[1], fix: bool = True, seconds: int = 1) -> None:
        """`seconds` epochs of receiver output, one after the other (the driver sees them as they come)."""
        for _ in range(seconds):
            for line in epoch_sentences(self.next_epoch_s(), lat=lat, lon=lon, alt_m=5.0, speed_mps=0.1,
                                        course_deg=90.0, fix=fix):
                self.pty.write(line)

    def next_epoch_s(self) -> float:
        """The receiver's time for an epoch sent now: GPS_NOW plus the time since start, as a receiver's
        clock runs with the monotonic clock (the integrity check distrusts one that does not)."""
        self.epoch_s = max(self.epoch_s + EPOCH_STEP_S, GPS_NOW + time.monotonic() - self._started)
        return self.epoch_s

    def wait_reading(self, where, what: str = "a reading", feed: dict | None = None) -> dict:
        """Wait for a reading; with `feed`, the receiver keeps sending that epoch meanwhile (it does not
        wait for the port to be opened either: pyserial discards what came before)."""

        def find():
            if feed is not None:
                self.send(**feed)
            self.drain()
            found = next((r for r in reversed(self.readings) if where(r)), None)
            if found is None and feed is not None:
                time.sleep(0.05)
            return found

        return wait_until(find, 10, what)

    def wait_event(self, kind: str, feed: dict | None = None) -> None:
        def seen():
            if feed is not None:
                self.send(**feed)
                time.sleep(0.05)
            return kind in self.kinds()

        wait_until(seen, 10, f"event {kind}; got {self.kinds()}")

    def stop(self) -> None:
        self.driver.stop()


@pytest.fixture
def gps(tmp_path, make_pty):
    harnesses: list[Harness] = []

    def make(**config) -> Harness:
        harness = Harness(tmp_path, config.pop("pty", None) or make_pty(), **config)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        harness.stop()


FIX: dict = {}  # an epoch at home with a 3d fix
NO_FIX = {"fix": False}


def test_fix_is_published_with_position_and_quality(gps):
    box = gps(publish_interval_s=1.0).start()
    # (the first epoch after opening may be partial: an RMC-only 3d fix has no altitude, as with gpsd)
    values = box.wait_reading(lambda r: r["fix"] == "3d" and r["sats_seen"] and r["alt_m"], "a 3d fix", feed=FIX)
    assert abs(values["lat"] - HOME[0]) < 1e-6 and abs(values["lon"] - HOME[1]) < 1e-6
    assert values["alt_m"] == 5.0 and values["sats"] == 9 and values["sats_seen"] == 11
    assert values["hdop"] == 0.9 and values["pdop"] == 1.6 and values["home_distance_m"] is None
    assert values["alarms"] == []
    assert {"gps_connected", "fix_acquired"} <= set(box.kinds())
    health = box.driver.health()
    assert health["gps_link"] == "connected" and health["gps_sentences_ok"] >= 6
    status = box.driver.status()
    assert status["port"] == str(box.pty.path) and status["link"] == "connected" and status["fix"] == "3d"


def test_gps_time_drives_the_clock_when_the_kernel_clock_is_unsynchronised(gps):
    clock = Clock(kernel_synced=lambda: False)
    assert clock.source() == "unsynced"
    box = gps(clock=clock).start()
    wait_until(lambda: box.send() or clock.source() == "gps", 10, "clock source gps")
    # the receiver says it is 2025-11-26T09:40 (sped up: an epoch per poll), whatever this machine's clock says
    assert GPS_NOW <= clock.now() <= box.epoch_s + 1
    assert abs(clock.offset_s() - (time.time() - clock.now())) < 1.0


def test_ntp_keeps_priority_over_gps(gps):
    clock = Clock(kernel_synced=lambda: True)
    box = gps(clock=clock).start()
    box.wait_reading(lambda r: r["fix"] == "3d", feed=FIX)
    wait_until(lambda: box.send() or clock.offset_s() is not None, 10, "the offset, still measured for health")
    assert clock.source() == "ntp" and abs(clock.now() - time.time()) < 1.0


def test_no_fix_and_garbage_never_give_a_position(gps):
    box = gps().start()
    box.wait_event("gps_connected", feed=NO_FIX)
    box.pty.write(b"\x00\xff\xfe$GPGGA,094000.00,5205.44,N,00507.28,E,1,09,0.9,5.0,M,47.0,M,,*00\r\n")
    box.pty.write("$GPRMC,094000.00,A,0000.00000,N,00000.00000,E,0.0,0.0,261125,,,A*7E\r\n")
    box.pty.write("$GPGGA,094000.00,5205.44,N,00507.2\r\n")
    wait_until(lambda: box.driver.stats["bad_checksum"] >= 1 and box.driver.stats["malformed"] >= 1, 10)
    box.send(**NO_FIX, seconds=2)
    box.drain()
    assert box.readings and all(r["lat"] is None and r["fix"] == "none" for r in box.readings)
    assert box.driver.stats["noise_bytes"] >= 2
    assert "fix_acquired" not in box.kinds()


def test_a_uart_receiver_trickling_sentences_in_pieces_gives_whole_fixes(gps):
    box = gps(publish_interval_s=1.0).start()
    box.wait_event("gps_connected", feed=FIX)
    box.readings.clear()
    damaged_before = box.driver.stats["malformed"] + box.driver.stats["bad_checksum"]  # (a cut first line)
    north = (HOME[0] + 0.001, HOME[1])  # 111 m from anything sent before
    for _ in range(3):  # at 9600 baud an epoch arrives over ~0.4 s, a few bytes at a time
        epoch = "".join(epoch_sentences(box.next_epoch_s(), lat=north[0], lon=north[1], alt_m=5.0, speed_mps=0.1,
                                        course_deg=90.0)).encode()
        for start in range(0, len(epoch), 24):
            box.pty.write(epoch[start:start + 24])
            time.sleep(0.02)  # the line's pace, not a synchronisation
    values = box.wait_reading(lambda r: r["lat"] is not None and abs(r["lat"] - north[0]) < 1e-6, "the new fix")
    assert abs(values["lon"] - north[1]) < 1e-6 and values["fix"] == "3d"
    assert box.driver.stats["malformed"] + box.driver.stats["bad_checksum"] == damaged_before


def test_fix_lost_and_regained_are_events_and_publish_at_once(gps):
    box = gps(publish_interval_s=3600.0).start()
    box.wait_reading(lambda r: r["fix"] == "3d", feed=FIX)
    box.readings.clear()
    box.wait_reading(lambda r: r["fix"] == "none" and r["lat"] is None, "no fix, published at once", feed=NO_FIX)
    box.readings.clear()
    box.wait_reading(lambda r: r["fix"] == "3d", feed=FIX)
    assert box.kinds().count("fix_acquired") == 2 and box.kinds().count("fix_lost") == 1


def test_moving_more_than_min_move_publishes_before_the_interval(gps):
    box = gps(publish_interval_s=3600.0, min_move_m=25.0).start()
    box.wait_reading(lambda r: r["fix"] == "3d", feed=FIX)
    box.send(lat=HOME[0] + 0.0001, seconds=3)  # 11 m: not worth a message
    moved = box.wait_reading(lambda r: r["lat"] and r["lat"] > HOME[0] + 0.0004, "the move, published",
                             feed={"lat": HOME[0] + 0.0005})  # 56 m: worth one
    assert not any(r["lat"] and HOME[0] + 0.00005 < r["lat"] < HOME[0] + 0.0002 for r in box.readings)
    assert moved["fix"] == "3d"


def test_unplug_and_replug_resume_without_restart(gps, make_pty):
    box = gps().start()
    box.wait_reading(lambda r: r["fix"] == "3d", feed=FIX)
    box.readings.clear()
    box.pty.unplug()  # master closed, the /dev link gone: the USB receiver was pulled
    box.wait_event("gps_disconnected")
    assert box.driver.health()["gps_link"] == "disconnected"
    assert box.wait_reading(lambda r: r["fix"] == "none")["lat"] is None
    assert "fix_lost" in box.kinds()
    assert box.ctx.errors.get("disconnected") == 1
    box.pty = make_pty()  # plugged back in: a new device at the same path
    box.events.clear()
    box.readings.clear()
    box.wait_event("gps_connected", feed=FIX)
    box.wait_reading(lambda r: r["fix"] == "3d", "a fix after replug", feed=FIX)
    assert box.driver.health()["gps_link"] == "connected" and box.driver.reconnects >= 1


def test_silent_receiver_goes_stale_and_comes_back(gps):
    box = gps(stale_after_s=1.0).start()
    box.wait_reading(lambda r: r["fix"] == "3d", feed=FIX)
    box.readings.clear()
    box.wait_event("gps_stale")  # nothing more written: the receiver hangs
    assert box.driver.health()["gps_link"] == "stale"
    assert box.wait_reading(lambda r: r["fix"] == "none")["lat"] is None
    box.readings.clear()
    box.wait_reading(lambda r: r["fix"] == "3d", feed=FIX)
    assert box.kinds().count("gps_connected") == 2


def test_auto_baud_cycles_until_the_receiver_is_understood(gps, make_pty):
    pty = make_pty()
    box = gps(pty=pty, baud="auto").start()
    # The receiver talks at 4800: at any other rate the port delivers garbage (a pty ignores the rate,
    # so the test plays that part, watching the rate pyserial set).
    deadline = time.monotonic() + 20
    while pty.baud() != 4800 and time.monotonic() < deadline:
        pty.write(bytes(range(128, 256)) + b"\xfe\xff" * 20)
        time.sleep(0.1)
    assert pty.baud() == 4800, "the driver never tried 4800 baud"
    box.wait_reading(lambda r: r["fix"] == "3d", feed=FIX)
    assert box.driver.source.baud == 4800 and box.driver.source.baud_switches >= 1
    assert box.driver.health()["gps_noise_bytes"] > 0


def test_stop_is_quick(gps):
    box = gps(stale_after_s=10.0).start()  # reads then block for the full READ_TIMEOUT_S: stop cancels them
    box.wait_event("gps_connected", feed=FIX)
    started = time.monotonic()
    box.driver.stop()
    assert time.monotonic() - started < 1.0
    assert not box.driver._thread.is_alive()


def test_progress_is_reported_while_connected_and_while_unplugged(gps):
    box = gps().start()
    box.wait_event("gps_connected", feed=FIX)
    first = box.ctx.last_progress
    wait_until(lambda: box.ctx.last_progress > first + 0.5, 5, "progress while idle on an open port")
    box.pty.unplug()
    box.wait_event("gps_disconnected")
    mark = box.ctx.last_progress
    wait_until(lambda: box.ctx.last_progress > mark + 0.5, 5, "progress while retrying")


# -- geofence through the driver ---------------------------------------------------------------------
def test_leaving_the_geofence_raises_container_moved_and_returning_clears_it(gps):
    box = gps(home_lat=HOME[0], home_lon=HOME[1], geofence_radius_m=200.0, geofence_hysteresis_m=50.0,
              geofence_dwell_s=0.0).start()
    box.wait_reading(lambda r: r["home_distance_m"] is not None and r["home_distance_m"] < 1.0, feed=FIX)
    away = HOME[0] + 0.003  # 334 m north
    box.wait_event("alarm_raised", feed={"lat": away})
    raised = next(e for e in box.events if e.kind == "alarm_raised")
    assert raised.details["alarm"] == "container_moved"
    assert raised.severity == "alarm" and raised.details["radius_m"] == 200.0
    assert 300 < raised.details["distance_m"] < 370
    assert box.wait_reading(lambda r: "container_moved" in r["alarms"])["lat"] == pytest.approx(away, abs=1e-6)
    box.send(lat=HOME[0] + 0.0017, seconds=3)  # 189 m: inside the radius, not past the hysteresis
    box.wait_reading(lambda r: r["lat"] and r["lat"] < HOME[0] + 0.002, feed={"lat": HOME[0] + 0.0017})
    assert "alarm_cleared" not in [e.kind for e in box.events]
    box.wait_event("alarm_cleared", feed=FIX)
    kinds = [e.kind for e in box.events]
    assert kinds.count("alarm_raised") == 1 and kinds.count("alarm_cleared") == 1
    assert box.events[kinds.index("alarm_cleared")].details["distance_m"] < 150


def test_home_is_learned_from_a_stable_fix_and_remembered(gps, tmp_path, make_pty):
    box = gps(home_learn_s=1.0, geofence_radius_m=200.0).start()
    box.wait_event("home_learned", feed=FIX)
    state = json.loads((tmp_path / "driver-gps.json").read_text())
    assert distance_m(state["home"]["lat"], state["home"]["lon"], *HOME) < 1.0
    box.stop()
    again = gps(pty=make_pty("gps1"))  # a restart (the box may have moved meanwhile)
    again.driver._load_home()
    assert again.driver.geofence.home == (state["home"]["lat"], state["home"]["lon"])
    assert again.driver.status()["home"]["source"] == "learned"


# -- probe for boxtel doctor -------------------------------------------------------------------------
class Receiver:
    """A receiver that keeps talking on a pty from its own thread (a probe opens the port any time)."""

    def __init__(self, pty, data: bytes | None = None):
        self.pty = pty
        self.data = data
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        second = 0
        while not self._stop.wait(0.05):
            if self.data is not None:
                self.pty.write(self.data)
                continue
            for line in epoch_sentences(GPS_NOW + second, lat=HOME[0], lon=HOME[1], alt_m=5, speed_mps=0,
                                        course_deg=0):
                self.pty.write(line)
            second += 1

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_probe_port_finds_nmea(make_pty):
    pty = make_pty()
    with Receiver(pty):
        ok, message = probe_port(str(pty.path), 9600, 2.0)
    assert ok, message
    # The probe stops after three checked sentences, so which kinds it names depends on where in an
    # epoch it started reading: any of the epoch's position sentences will do.
    assert "9600 baud" in message and ("GGA" in message or "RMC" in message)


def test_probe_port_explains_what_is_wrong(make_pty, tmp_path):
    ok, message = probe_port(str(tmp_path / "ttyUSB9"), 9600, 0.5)
    assert not ok and message.startswith(f"cannot open {tmp_path / 'ttyUSB9'}")
    pty = make_pty()
    with Receiver(pty, bytes(range(128, 256))):
        ok, message = probe_port(str(pty.path), 4800, 0.6)
    assert not ok and "no valid NMEA at 4800 baud" in message and "wrong baud rate" in message
    quiet = make_pty("quiet")
    ok, message = probe_port(str(quiet.path), 9600, 0.4)
    assert not ok and "no data" in message


def test_probe_port_says_when_the_agent_holds_the_port(gps):
    box = gps().start()
    box.wait_event("gps_connected", feed=FIX)
    ok, message = probe_port(str(box.pty.path), 9600, 0.4)
    assert not ok and message == f"{box.pty.path} is busy: another program (the running agent?) has it open"


# -- integrity through the driver ----------------------------------------------------------------------
def test_a_spoofed_jump_raises_gnss_interference_never_container_moved(gps):
    clock = Clock(kernel_synced=lambda: False)
    box = gps(clock=clock, home_lat=HOME[0], home_lon=HOME[1], geofence_radius_m=200.0, geofence_dwell_s=0.0,
              publish_interval_s=1.0).start()
    box.wait_reading(lambda r: r["fix"] == "3d" and r["gnss_integrity"] == "ok", feed=FIX)
    wait_until(lambda: box.send() or clock.source() == "gps", 10, "GPS time from trusted fixes")
    spoofed = (HOME[0], HOME[1] + 0.58)  # 40 km east, in one second
    box.wait_event("alarm_raised", feed={"lat": spoofed[0], "lon": spoofed[1]})
    raised = next(e for e in box.events if e.kind == "alarm_raised")
    assert raised.details["alarm"] == "gnss_interference" and raised.severity == "warning"
    assert raised.details["reason"] == "position_jump"
    suspect = box.wait_reading(lambda r: "gnss_interference" in r["alarms"] and r["lat"] is not None)
    assert suspect["gnss_integrity"] == "suspect" and suspect["home_distance_m"] > 39_000
    anchored = clock.now()
    box.send(lat=spoofed[0], lon=spoofed[1], seconds=5)
    box.wait_event("alarm_cleared", feed=FIX)  # the spoofer stopped: back at the trusted position
    alarms = [e.details["alarm"] for e in box.events if e.kind in ("alarm_raised", "alarm_cleared")]
    assert alarms == ["gnss_interference", "gnss_interference"], "never container_moved"
    assert box.wait_reading(lambda r: r["alarms"] == [])["gnss_integrity"] == "ok"
    assert clock.now() >= anchored


def test_a_single_rmc_dated_2079_never_moves_the_clock(gps):
    clock = Clock(kernel_synced=lambda: False)
    box = gps(clock=clock).start()
    wait_until(lambda: box.send() or clock.source() == "gps", 10, "clock source gps")
    box.send(seconds=3)
    moment = datetime.fromtimestamp(box.next_epoch_s(), tz=UTC)
    box.pty.write(sentence(f"GPRMC,{moment:%H%M%S}.00,A,5205.44,N,00507.28,E,0.0,0.0,{moment:%d%m}79,,,A"))
    wait_until(lambda: (box.driver.fix.time or "").startswith("2079"), 10, "the forged RMC decoded")
    assert abs(clock.now() - box.epoch_s) < 5.0, "ts must not move to 2079"
    box.send(seconds=2)
    assert abs(clock.now() - box.epoch_s) < 5.0


def test_checksummed_absurd_values_never_reach_a_reading_and_count_in_health(gps):
    box = gps().start()
    box.wait_reading(lambda r: r.get("fix") == "3d", "a 3d fix", feed={})
    absurd = [("1e308", "99999999.0"), ("nan", "inf")]
    for alt, knots in absurd:
        moment = datetime.fromtimestamp(box.next_epoch_s(), tz=UTC)
        hhmmss, ddmmyy = f"{moment:%H%M%S}.{moment.microsecond // 10000:02d}", f"{moment:%d%m%y}"
        box.pty.write(sentence(f"GPGGA,{hhmmss},5205.44,N,00507.28,E,1,09,0.9,{alt},M,47.0,M,,"))
        box.pty.write(sentence(f"GPRMC,{hhmmss},A,5205.44,N,00507.28,E,{knots},90.0,{ddmmyy},,,A"))
    wait_until(lambda: box.send() or box.driver.health()["gps_rejected"] >= 2 * len(absurd), 10, "gps_rejected")
    box.drain()
    for reading in box.readings:
        assert reading.get("alt_m") is None or -1_000 <= reading["alt_m"] <= 50_000, reading
        assert reading.get("speed_mps") is None or 0 <= reading["speed_mps"] <= 1_000, reading


def test_gps_time_counts_only_after_several_epochs_agree_with_the_monotonic_clock(gps):
    clock = Clock(kernel_synced=lambda: False)
    box = gps(clock=clock).start()
    box.wait_event("gps_connected", feed=NO_FIX)
    box.send()
    box.send()  # the first dated fix (an epoch is reported when the next one starts)
    wait_until(lambda: box.driver.fix.has_position and box.driver.fix.time, 10, "a dated fix")
    assert clock.source() == "unsynced", "one fix is not yet a time to stamp messages with"
    wait_until(lambda: box.send() or clock.source() == "gps", 10, "clock source gps")
    assert box.driver.verdict.trusted
