"""GPS pieces around the driver: geofence hysteresis, home learning, config, `boxtel gps decode`,
and the simulated receiver end to end through a real agent and broker."""

from __future__ import annotations

import json
import math
import os
import random
import threading
from pathlib import Path

import pytest

from agent import config as config_module
from agent.bus import Bus, Reading
from agent.clock import Clock
from agent.errors import ConfigError
from drivers.base import DriverContext
from drivers.gps import sim
from drivers.gps.driver import Geofence, GpsConfig, GpsDriver, HomeLearner
from drivers.gps.sim import HOME
from tests.support import boxtel, toml_dumps, wait_until

CAPTURES = Path(__file__).parent / "data" / "nmea"


def at(distance_m: float, bearing_deg: float = 0.0) -> tuple[float, float]:
    """A position `distance_m` from HOME."""
    north = distance_m * math.cos(math.radians(bearing_deg))
    east = distance_m * math.sin(math.radians(bearing_deg))
    return HOME[0] + north / 111_195.0, HOME[1] + east / (111_195.0 * math.cos(math.radians(HOME[0])))


# -- geofence ------------------------------------------------------------------------------------------
def test_jitter_at_the_edge_never_flaps_the_geofence():
    fence = Geofence(radius_m=200.0, hysteresis_m=50.0, dwell_s=30.0, home=HOME)
    rng = random.Random(3)
    changes = []
    clock = 0.0

    def dwell(distance_m: float, seconds: int, jitter_m: float = 15.0) -> None:
        nonlocal clock
        for _ in range(seconds):
            clock += 1.0
            change = fence.update(*at(distance_m + rng.gauss(0, jitter_m), rng.uniform(0, 360)), clock)
            if change:
                changes.append((round(clock), change))

    dwell(200.0, 600)  # parked right on the fence: crosses it every few seconds
    assert changes == []
    dwell(260.0, 60)  # really gone
    assert [c for _, c in changes] == ["left"]
    assert changes[0][0] >= 600 + 30, "leaving takes the dwell time"
    dwell(170.0, 600)  # inside the radius, but not past the hysteresis: still away
    assert [c for _, c in changes] == ["left"]
    dwell(40.0, 60)
    assert [c for _, c in changes] == ["left", "returned"]


def test_geofence_without_home_or_radius_does_nothing():
    assert Geofence(200.0, 50.0, 0.0).update(*at(5000.0), 1.0) is None
    assert Geofence(0.0, 0.0, 0.0, home=HOME).update(*at(5000.0), 1.0) is None


def test_home_is_only_learned_from_a_box_that_holds_still():
    learner = HomeLearner(hold_s=60.0, spread_m=50.0)
    for second in range(120):  # driving at 20 m/s: never still
        assert learner.update(*at(20.0 * second), float(second)) is None
    rng = random.Random(4)
    home = None
    for second in range(120, 200):
        home = learner.update(*at(rng.uniform(0, 5), rng.uniform(0, 360)), float(second)) or home
        if home:
            break
    assert home is not None and second >= 180
    assert abs(home[0] - HOME[0]) < 5e-5 and abs(home[1] - HOME[1]) < 5e-5


# -- config --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("gps", "key", "message"), [
    ({"baud": "fast"}, "gps.baud", 'expected a baud rate or "auto"'),
    ({"baud": 1234}, "gps.baud", "expected one of 4800"),
    ({"baud": True}, "gps.baud", "expected an integer"),
    ({"home_lat": 52.0}, "gps.home_lat", "go together"),
    ({"home_lat": 95.0, "home_lon": 5.0}, "gps.home_lat", "from -90 to 90"),
    ({"geofence_radius_m": 50.0, "geofence_hysteresis_m": 60.0}, "gps.geofence_hysteresis_m", "smaller"),
    ({"prot": "/dev/ttyUSB0"}, "gps.prot", "did you mean 'port'"),
])
def test_bad_gps_config_names_the_key(tmp_path, gps, key, message):
    path = tmp_path / "agent.toml"
    path.write_text(toml_dumps({"box": {"id": "t-1", "state_dir": str(tmp_path)}, "gps": gps}))
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert caught.value.key == key and message in caught.value.detail


def test_gps_config_accepts_a_rate_or_auto_and_resolves_relative_ports(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(toml_dumps({"box": {"id": "t-1", "state_dir": str(tmp_path)},
                                "gps": {"baud": 4800, "port": "dev/gps0"}}))
    gps = config_module.load(path).driver_configs("gps")[0]
    assert gps.baud == 4800 and gps.port == str(tmp_path / "dev/gps0")
    path.write_text(toml_dumps({"box": {"id": "t-1", "state_dir": str(tmp_path)}, "gps": {}}))
    assert config_module.load(path).driver_configs("gps")[0].baud == "auto"


# -- boxtel gps decode ---------------------------------------------------------------------------------
def test_decode_prints_a_table_of_epochs():
    result = boxtel("gps", "decode", str(CAPTURES / "ac12.log"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["time", "fix", "lat", "lon", "alt_m", "sats", "speed_mps", "course_deg"]
    assert lines[1].split()[:5] == ["2007-12-23T19:32:21.000Z", "3d", "20.6287983", "-87.06808", "-30.4"]
    assert "7 epochs, 7 with a fix" in result.stderr
    # its first GGA comes before the RMC that dates that same instant: every epoch is shown
    assert "before the first date" not in result.stderr


def test_decode_counts_the_instants_before_the_first_date_that_no_row_shows():
    # beidou-bd: void RMCs (status V) at 07:41:50-55 date nothing; the first valid RMC, 07:41:56, does
    result = boxtel("gps", "decode", str(CAPTURES / "beidou-bd.log"))
    assert "; 6 epochs before the first date (RMC/ZDA) not shown" in result.stderr
    assert "07:41:56" in result.stdout and "07:41:55" not in result.stdout
    result = boxtel("gps", "decode", str(CAPTURES / "ericsson-gru04.log"))
    assert "; 1 epoch before the first date" in result.stderr  # one epoch, not "1 epochs"


def test_decode_json_matches_the_expected_fixes():
    result = boxtel("gps", "decode", "--json", str(CAPTURES / "ublox-zed-f9p-nmea.log"))
    assert result.returncode == 0, result.stderr
    decoded = {r["time"]: r for r in map(json.loads, result.stdout.splitlines())}
    expected = [json.loads(line) for line in (CAPTURES / "ublox-zed-f9p-nmea.expected.jsonl").open()]
    assert expected
    for record in expected:
        got = decoded[record["time"]]
        assert got["fix"] == record["fix"]
        assert set(got) == {"time", "fix", "lat", "lon", "alt_m", "sats", "speed_mps", "course_deg"}
        if "lat" in record:
            assert abs(got["lat"] - record["lat"]) <= 1e-6 and abs(got["lon"] - record["lon"]) <= 1e-6


def test_decode_of_a_file_without_nmea_exits_65(tmp_path):
    junk = tmp_path / "capture.bin"
    junk.write_bytes(bytes(range(256)) * 20 + b"$GPGGA,094000,5205.4,N,00507.2,E,1,08,1.0,5.0,M,,,,*00\r\n")
    result = boxtel("gps", "decode", str(junk))
    assert result.returncode == 65 and result.stdout == ""
    assert result.stderr.strip() == f"boxtel: {junk}: no NMEA sentences (1 with bad checksums)"


def test_decode_of_endless_input_without_sentences_stops_with_exit_65(tmp_path):
    result = boxtel("gps", "decode", "/dev/zero", timeout=30)
    assert result.returncode == 65 and result.stdout == ""
    assert result.stderr.strip() == "boxtel: /dev/zero: no NMEA sentence in 1 MiB of input (not a receiver capture?)"
    # a FIFO whose writer never stops sending noise (a receiver at the wrong baud rate, tee'd)
    fifo = tmp_path / "receiver.fifo"
    os.mkfifo(fifo)
    stop = threading.Event()

    def noise() -> None:
        try:  # the reader quits mid-stream: the write or the closing flush meets a broken pipe
            with open(fifo, "wb") as writer:
                while not stop.is_set():
                    writer.write(bytes(range(128, 256)) * 64 + b"\r\n")
        except BrokenPipeError:
            return

    writer = threading.Thread(target=noise, daemon=True)
    writer.start()
    try:
        result = boxtel("gps", "decode", str(fifo), timeout=30)
    finally:
        stop.set()
        writer.join(5)
    assert result.returncode == 65 and "no NMEA sentence in 1 MiB of input" in result.stderr


def test_decode_of_a_missing_file_exits_66(tmp_path):
    result = boxtel("gps", "decode", str(tmp_path / "nope.nmea"))
    assert result.returncode == 66
    assert result.stderr.strip() == f"boxtel: {tmp_path / 'nope.nmea'}: No such file or directory"


def test_gps_without_an_action_is_a_usage_error():
    assert boxtel("gps").returncode == 64
    assert boxtel("gps", "decode").returncode == 64


# -- the simulated receiver through a real agent -------------------------------------------------------
GPS_TOPIC = "boxtel/test-001/gps"


def test_simulated_receiver_gives_fixes_health_and_events(broker, make_config, subscribe, run_agent):
    sub = subscribe()
    fast_health = {"interval_s": 1.0, "power_check_s": 1.0, "min_interval_s": 0.0, "max_interval_s": 1.0}
    agent = run_agent(make_config(broker, {"simulate": True, "host": fast_health,
                                           "gps": {"publish_interval_s": 1.0, "baud": "auto"}}))
    fix = sub.wait_for(GPS_TOPIC, lambda p: p["fix"] == "3d", timeout=20).json
    assert abs(fix["lat"] - HOME[0]) < 0.001 and abs(fix["lon"] - HOME[1]) < 0.001
    assert fix["sats"] == 9 and fix["alarms"] == [] and "ts" in fix and "seq" in fix
    sub.wait_for("boxtel/test-001/events", lambda p: p["kind"] == "fix_acquired" and p["source"] == "gps")
    health = sub.wait_for("boxtel/test-001/health",
                          lambda p: p.get("gps_link") == "connected" and p["gps_sentences_ok"] > 40
                          and p["gps_bad_checksum"] + p["gps_malformed"] + p["gps_noise_bytes"] > 0,
                          timeout=20).json
    assert health["gps_baud"] == 9600 and health["errors_gps"] == 0
    assert agent.terminate() == 0


def test_the_simulators_spoofing_spell_raises_and_clears_gnss_interference_never_container_moved(
        tmp_path, monkeypatch):
    # the loop from just after its spell without a fix, with a shorter spoof than the demo's 60 s
    monkeypatch.setattr(sim, "SPOOF", (sim.NO_FIX_UNTIL_S + 5, sim.NO_FIX_UNTIL_S + 10))
    config = GpsConfig(baud="auto", publish_interval_s=1.0, home_lat=HOME[0], home_lon=HOME[1],
                       geofence_radius_m=200.0, geofence_dwell_s=0.0)
    simulator = sim.GpsSimulator([config], tmp_path)
    simulator.loop_offset_s = sim.NO_FIX_UNTIL_S
    simulator.prepare()
    bus = Bus()
    ctx = DriverContext("gps", bus=bus, clock=Clock(lambda: False), state_dir=tmp_path, simulate=True)
    driver = GpsDriver(config, ctx)
    events, readings = [], []

    def drain(kind: str) -> bool:
        while (item := bus.get_nowait()) is not None:
            (readings if isinstance(item, Reading) else events).append(item)
        return any(e.kind == kind for e in events)

    driver.start()
    simulator.start()
    try:
        wait_until(lambda: drain("alarm_raised"), 30, "gnss_interference raised by the spoofing spell")
        wait_until(lambda: drain("alarm_cleared"), 30, "gnss_interference cleared after it")
    finally:
        driver.stop()
        simulator.stop()
    alarms = [(e.kind, e.details["alarm"]) for e in events if e.kind.startswith("alarm_")]
    assert alarms == [("alarm_raised", "gnss_interference"), ("alarm_cleared", "gnss_interference")]
    raised = next(e for e in events if e.kind == "alarm_raised")
    assert raised.severity == "warning" and raised.details["reason"] == "position_jump"
    spoofed = [r.values for r in readings if r.values["home_distance_m"] and r.values["home_distance_m"] > 30_000]
    assert spoofed and all(r["gnss_integrity"] == "suspect" for r in spoofed)
    assert all("container_moved" not in r.values["alarms"] for r in readings)
