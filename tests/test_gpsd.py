"""`[gps] source = "gpsd"` against the real Debian gpsd (`gpsd -N -n` on a pty, a free loopback port):
the fixes the serial path gives for the same NMEA, gpsd gone and back, and hostile gpsd JSON."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gps import gpsd_source, nmea
from drivers.gps.driver import GpsConfig
from drivers.gps.gpsd_source import BAD_FIELDS, JSON_ERRORS, MAX_LINE, GpsdSource, parse_address
from drivers.gps.sim import HOME, epoch_sentences
from tests.daemons import Gpsd
from tests.support import ROOT, wait_until
from tests.test_agent import FAST_HEALTH
from tests.test_end_to_end import DocContract
from tests.test_gps import FIX, Harness

CAPTURES = Path(__file__).parent / "data" / "nmea"


@pytest.fixture
def make_gpsd(tmp_path: Path):
    started: list[Gpsd] = []

    def make(device: Path, port: int | None = None) -> Gpsd:
        daemon = Gpsd(tmp_path / f"gpsd{len(started)}", device, port).start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def harnesses():
    made: list[Harness] = []
    yield made
    for harness in made:
        harness.stop()


def _follow(source: GpsdSource, stop: threading.Event, fixes: list[nmea.Fix]) -> None:
    while not stop.is_set():
        try:
            fixes.extend(source.read().fixes)
        except OSError:  # cancelled at the end
            return


def test_a_capture_through_gpsd_gives_the_fixes_our_decoder_gives(make_pty, make_gpsd):
    capture = (CAPTURES / "ublox-8.log").read_bytes()
    pty = make_pty()
    daemon = make_gpsd(pty.path)
    source = GpsdSource(daemon.address, 5.0, nmea.new_stats())
    source.open()
    fixes: list[nmea.Fix] = []
    stop = threading.Event()
    reader = threading.Thread(target=_follow, args=(source, stop, fixes), daemon=True)
    reader.start()
    try:
        lines = capture.splitlines(keepends=True)
        for start in range(0, len(lines), 8):  # a receiver's pace, roughly: gpsd must keep up
            pty.write(b"".join(lines[start:start + 8]), patience_s=2.0)
            time.sleep(0.02)
        expected = {fix.time[11:19]: fix for fix in nmea.decode_capture(capture) if fix.time}
        wait_until(lambda: len([f for f in fixes if f.has_position]) >= len(expected) // 2, 15,
                   f"gpsd's fixes for the capture (got {len(fixes)})")
    finally:
        stop.set()
        source.cancel()
        reader.join(timeout=5)
        source.close()
    compared = 0
    for fix in fixes:
        if not fix.has_position or fix.time is None:
            continue
        ours = expected[fix.time[11:19]]  # gpsd may date a capture otherwise (week rollover): the time of day
        assert ours.fix == fix.fix, fix.time
        assert abs(ours.lat - fix.lat) < 1e-6 and abs(ours.lon - fix.lon) < 1e-6, fix.time
        if ours.alt_m is not None and fix.alt_m is not None:
            assert abs(ours.alt_m - fix.alt_m) < 0.1
        compared += 1
    assert compared >= len(expected) // 2


def _gps_topic(subscriber, box: str, where) -> dict:
    return subscriber.wait_for(f"boxtel/{box}/gps", where, timeout=30).json


def test_the_agent_on_gpsd_publishes_what_the_serial_path_publishes(tmp_path, broker, make_config, run_agent,
                                                                      subscribe, make_pty, make_gpsd):
    serial_pty, gpsd_pty = make_pty("gps-serial"), make_pty("gps-gpsd")
    daemon = make_gpsd(gpsd_pty.path)
    fast = {"publish_interval_s": 1.0, "baud": 9600}

    def box(name: str) -> dict:  # two agents: each its own state and control socket
        return {"box": {"id": name, "state_dir": str(tmp_path / name)},
                "diagnostics": {"socket": str(tmp_path / f"{name}.sock")}}

    run_agent(make_config(broker, {**box("serial-001"), "gps": {"port": str(serial_pty.path), **fast}}))
    run_agent(make_config(broker, {**box("gpsd-001"), **FAST_HEALTH,
                                   "gps": {"source": "gpsd", "gpsd": daemon.address, **fast}}))
    subscriber = subscribe()
    stop = threading.Event()

    def receivers() -> None:  # the same NMEA, at the same moments, into both
        epoch_s = float(int(time.time()))
        while not stop.wait(0.25):
            lines = epoch_sentences(epoch_s, lat=HOME[0] + 0.001, lon=HOME[1], alt_m=12.5, speed_mps=0.0,
                                    course_deg=0.0, fix=True)
            for pty in (serial_pty, gpsd_pty):
                pty.write("".join(lines))
            epoch_s += 1

    feeder = threading.Thread(target=receivers, daemon=True)
    feeder.start()
    try:
        steady = lambda p: (p.get("fix") == "3d" and p.get("sats") == 9 and p.get("sats_seen") == 11  # noqa: E731
                            and p.get("alt_m") is not None)
        by_serial = _gps_topic(subscriber, "serial-001", steady)
        by_gpsd = _gps_topic(subscriber, "gpsd-001", steady)
    finally:
        stop.set()
        feeder.join(timeout=3)
    for key in ("lat", "lon", "fix", "sats", "sats_seen", "alt_m", "hdop", "pdop"):
        assert by_gpsd[key] == by_serial[key], key
    assert abs(by_gpsd["lat"] - (HOME[0] + 0.001)) < 1e-6
    health = subscriber.wait_for("boxtel/gpsd-001/health", lambda p: p.get("gps_gpsd_reports")).json
    assert health["gps_gpsd"] == daemon.address and health["gps_device"] == str(gpsd_pty.path)
    contract = DocContract((ROOT / "docs" / "mqtt.md").read_text())
    gpsd_fields = ("gps_gpsd", "gps_device", "gps_gpsd_reports", "gps_json_errors", "gps_bad_fields")
    assert all(key in health and contract.documented("health", key) for key in gpsd_fields)


def test_gpsd_gone_is_disconnected_and_back_is_recovered(tmp_path, make_pty, make_gpsd, harnesses):
    pty = make_pty()
    daemon = make_gpsd(pty.path)
    box = Harness(tmp_path, pty, source="gpsd", gpsd=daemon.address, reconnect_max_s=1.0)
    harnesses.append(box)
    box.start()
    box.wait_event("gps_connected", feed=FIX)
    box.wait_reading(lambda r: r["fix"] == "3d", "a fix through gpsd", feed=FIX)
    assert box.driver.status()["gpsd"] == daemon.address
    box.readings.clear()
    daemon.stop()  # gpsd stopped (crashed, upgraded): the connection closes, reconnects are refused
    box.wait_event("gps_disconnected")
    assert box.driver.health()["gps_link"] == "disconnected"
    assert box.wait_reading(lambda r: r["fix"] == "none")["lat"] is None
    assert box.ctx.errors.get("disconnected") == 1
    box.events.clear()
    box.readings.clear()
    make_gpsd(pty.path, port=daemon.port)  # back, where it was
    box.wait_event("gps_connected", feed=FIX)
    box.wait_reading(lambda r: r["fix"] == "3d", "a fix after gpsd came back", feed=FIX)
    assert box.driver.health()["gps_link"] == "connected" and box.driver.reconnects >= 1


class HostileGpsd:
    """A tiny TCP server on loopback that says whatever the test wants, in gpsd's place."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.client: socket.socket | None = None
        self._accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            self.client, _ = self.server.accept()
        except OSError:  # closed before the driver came
            return
        self._accepted.set()

    def say(self, data: bytes) -> None:
        assert self._accepted.wait(10), "the driver never connected"
        self.client.sendall(data)

    def close(self) -> None:
        for sock in (self.client, self.server):
            if sock is not None:
                sock.close()


def _tpv(**fields) -> bytes:
    report = {"class": "TPV", "device": "/dev/ttyACM0", "mode": 3, "time": "2025-11-26T09:40:00.000Z",
              "lat": 52.0, "lon": 5.0, "altMSL": 3.0, "speed": 0.1, "track": 10.0, **fields}
    return json.dumps(report, allow_nan=True).encode() + b"\n"


def test_hostile_gpsd_json_never_kills_the_thread_nor_makes_a_fix(tmp_path, make_pty, harnesses):
    hostile = HostileGpsd()
    box = Harness(tmp_path, make_pty(), source="gpsd", gpsd=f"127.0.0.1:{hostile.port}", stale_after_s=30.0)
    harnesses.append(box)
    box.start()
    try:
        hostile.say(b'{"class":"VERSION","release":"3.22"}\n')
        garbage = [
            b"\x00\xff\xfe binary noise\n", b"{not json\n", b"[1,2,3]\n", b'"a string"\n', b"{}\n",
            b'{"class":7}\n', b"[" * 5000 + b"\n", b'{"class":"TPV","mode":3,"lat":1' + b"0" * 5000 + b',"lon":5}\n',
            b"x" * (MAX_LINE + 10) + b"\n", b"y" * (3 * MAX_LINE),  # an endless line, then its end
            b"\n",
            _tpv(lat=float("nan")), _tpv(lon=float("inf")), _tpv(lat=91.0), _tpv(lon=-180.5), _tpv(lat=True),
            _tpv(lat="52.0"), _tpv(mode=9), _tpv(mode="3", lat=1.0), _tpv(time="yesterday", lat=1.5),
            _tpv(time="9999-12-31T23:59:59.000Z", lat=1.6), _tpv(altMSL=1e300, lat=1.7), _tpv(speed=-5, lat=1.8),
            _tpv(track=float("-inf"), lat=1.9), b'{"class":"TPV","mode":3,"lat":NaN,"lon":5}\n',
            _tpv(lat=10**400), _tpv(mode=[]), _tpv(mode={"3": 3}),  # too big for a float; unhashable modes
            b'{"class":"SKY","hdop":1e999,"pdop":-1,"satellites":[1,"a",null,{"used":"yes"}]}\n',
            b'{"class":"SKY","nSat":1e9,"uSat":-3}\n',
        ]
        for chunk in garbage:
            hostile.say(chunk)
        hostile.say(_tpv(lat=2.0, lon=3.0))  # and then a good report: the source still works
        reading = box.wait_reading(lambda r: r["lat"] == 2.0, "the good fix after the garbage")
        assert reading["lon"] == 3.0 and reading["fix"] == "3d"
        box.drain()
        positions = {(r["lat"], r["lon"]) for r in box.readings if r["lat"] is not None}
        # only the reports whose position was sound made a fix; a bad other field is dropped, not the fix
        assert positions <= {(2.0, 3.0), (1.5, 5.0), (1.6, 5.0), (1.7, 5.0), (1.8, 5.0), (1.9, 5.0)}
        stats = box.driver.stats
        assert stats[JSON_ERRORS] >= 9 and stats[BAD_FIELDS] >= 12 and stats[nmea.OVERLONG] == 2
        assert box.driver._thread.is_alive() and box.driver.health()["gps_link"] == "connected"
        assert not any(e.kind == "read_failed" for e in box.events) and not box.ctx.errors
    finally:
        hostile.close()


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:2947", "gpsd.local:1", "[::1]:2947", "[::1]"])
def test_gpsd_address_is_host_and_port(text):
    host, port = parse_address(text)
    assert host in {"127.0.0.1", "gpsd.local", "::1"} and 0 < port < 65536


@pytest.mark.parametrize("text", ["", ":2947", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x", "a b:1",
                                  "host\n:1", "[::1", "[nope]:1", "1:2:3", "h:99999999999999999999", "é:1"])
def test_bad_gpsd_addresses_are_config_errors(text):
    with pytest.raises(ValueError):
        parse_address(text)
    config = GpsConfig(source="gpsd", gpsd=text)
    from agent.schema import SettingError

    with pytest.raises(SettingError):
        config.validate()


def test_doctor_checks_gpsd_relays_the_receiver(tmp_path, broker, make_config, make_pty, make_gpsd, capsys):
    from agent.cli import main

    def gpsd_lines(address: str) -> list[str]:
        config = make_config(broker, {"gps": {"source": "gpsd", "gpsd": address}})
        main(["doctor", "-c", str(config)])
        out = capsys.readouterr().out.splitlines()
        assert not any(line[5:].startswith("serial:") for line in out)  # gpsd owns the port, not us
        return [line for line in out if line[5:].startswith("gpsd:")]

    pty = make_pty()
    daemon = make_gpsd(pty.path)
    stop = threading.Event()

    def receiver() -> None:
        epoch_s = time.time()
        while not stop.wait(0.3):
            pty.write("".join(epoch_sentences(epoch_s, lat=HOME[0], lon=HOME[1], alt_m=5.0, speed_mps=0.0,
                                              course_deg=0.0, fix=True)))
            epoch_s += 1

    thread = threading.Thread(target=receiver, daemon=True)
    thread.start()
    try:
        [line] = gpsd_lines(daemon.address)
    finally:
        stop.set()
        thread.join(timeout=2)
    assert line.startswith(f"OK   gpsd: gpsd at {daemon.address} relays {pty.path}: fix "), line
    daemon.stop()
    [line] = gpsd_lines(daemon.address)
    assert line.startswith(f"FAIL gpsd: cannot connect to gpsd at {daemon.address}"), line


def test_gpsd_without_reports_from_the_receiver_goes_stale(tmp_path, make_pty, make_gpsd, harnesses):
    pty = make_pty()
    daemon = make_gpsd(pty.path)
    box = Harness(tmp_path, pty, source="gpsd", gpsd=daemon.address, stale_after_s=1.0)
    harnesses.append(box)
    box.start()
    box.wait_reading(lambda r: r["fix"] == "3d", "a fix through gpsd", feed=FIX)
    box.drain()
    box.events.clear()  # (gpsd may take longer than a second to hear the receiver first: stale at start)
    box.wait_event("gps_stale")  # the receiver hangs; gpsd is still there, and says nothing
    stale = next(e for e in box.events if e.kind == "gps_stale")
    assert box.driver.health()["gps_link"] == "stale"
    assert stale.details["gpsd"] == daemon.address and "through gpsd" in stale.details["reason"]
    box.wait_reading(lambda r: r["fix"] == "none", "the fix withdrawn while stale")
    box.readings.clear()
    box.wait_reading(lambda r: r["fix"] == "3d", "a fix again", feed=FIX)
    assert box.driver.health()["gps_link"] == "connected"


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.just(10**400) | st.floats() | st.text(max_size=30),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)
_TPV_KEYS = ("mode", "time", "lat", "lon", "altMSL", "alt", "speed", "track", "device")
_SKY_KEYS = ("satellites", "nSat", "uSat", "hdop", "pdop")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["TPV", "SKY", "VERSION", 7]),
                          st.dictionaries(st.sampled_from(_TPV_KEYS + _SKY_KEYS), _JSON, max_size=9)), max_size=6),
       st.integers(min_value=1, max_value=97))
def test_any_gpsd_json_gives_fixes_within_bounds_or_none(reports, cut):
    """Whatever gpsd sends, cut anywhere: no exception, and every fix's values are in their bounds."""
    lines = b"".join(json.dumps({"class": kind, **fields}).encode() + b"\n" for kind, fields in reports)
    source = GpsdSource("127.0.0.1:2947", 5.0, nmea.new_stats())
    fixes = [fix for start in range(0, len(lines), cut) for fix in source.take(lines[start:start + cut], 1.0).fixes]
    assert len(fixes) <= sum(1 for kind, _ in reports if kind == "TPV")
    for fix in fixes:
        if fix.has_position:
            assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180 and fix.fix in {"2d", "3d"}
        else:
            assert fix.lat is None and fix.lon is None
        for name, (low, high) in nmea.PLAUSIBLE.items():
            value = getattr(fix, name)
            assert value is None or low <= value <= high, (name, value)
        assert fix.epoch_s is None or gpsd_source.EARLIEST <= fix.epoch_s <= gpsd_source.LATEST
        assert fix.sats is None or 0 <= fix.sats <= gpsd_source.MAX_SATELLITES
        assert all(0 < ss <= 99 for ss in fix.snr)
