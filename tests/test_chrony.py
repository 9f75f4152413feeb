"""The chrony feed against the real Debian chrony: `chronyd -x` (never touches the clock), private config,
its sockets in a temp dir. The sample layout, a feed with nobody listening, the driver's samples
reaching chrony and being selected, and `boxtel run` on a simulated fix feeding it end to end."""

from __future__ import annotations

import contextlib
import ctypes
import struct
import sysconfig
import threading
import time
from pathlib import Path

import pytest

from agent.bus import Bus
from agent.clock import Clock
from drivers.base import DriverContext
from drivers.gps import chrony
from drivers.gps.driver import GpsConfig, GpsDriver
from drivers.gps.sim import HOME, epoch_sentences
from tests.daemons import Chrony, wait_reachable
from tests.support import ROOT, wait_until
from tests.test_agent import FAST_HEALTH
from tests.test_end_to_end import DocContract


@pytest.fixture
def make_chrony(tmp_path: Path):
    """A real `chronyd -x` of its own per call (the only way a test runs it), stopped by its pid."""
    started: list[Chrony] = []

    def make(name: str = "chrony", **options) -> Chrony:
        daemon = Chrony(tmp_path / name, **options).start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def test_sample_has_the_layout_of_chronys_struct_on_this_platform():
    # struct sock_sample { struct timeval tv; double offset; int pulse; int leap; int _pad; int magic; }
    time_t = 8 if ctypes.sizeof(ctypes.c_void_p) == 8 else sysconfig.get_config_var("SIZEOF_TIME_T")
    assert ctypes.sizeof(chrony.SockSample) == {8: 40, 4: 32}[time_t]  # 64-bit or time64 armhf / armhf
    assert chrony.SockSample.offset.offset == 2 * time_t
    data = chrony.encode_sample(1_764_150_000.25, -0.125)
    word = "q" if time_t == 8 else "i"
    assert struct.unpack(f"@{word}{word}diiii", data) == (1_764_150_000, 250_000, -0.125, 0, 0, 0, 0x534F434B)
    # the other word sizes, as chrony on a Pi has them: armhf bookworm (32-bit time_t), armhf trixie (64)
    armhf = chrony.sample_layout(chrony.time_t_type(pointer_bytes=4, python_time_t=4))
    armhf_t64 = chrony.sample_layout(chrony.time_t_type(pointer_bytes=4, python_time_t=8))
    arm64 = chrony.sample_layout(chrony.time_t_type(pointer_bytes=8))
    assert (ctypes.sizeof(armhf), armhf.offset.offset, armhf.magic.offset) == (32, 8, 28)
    assert (ctypes.sizeof(armhf_t64), armhf_t64.offset.offset, armhf_t64.magic.offset) == (40, 16, 36)
    assert ctypes.sizeof(arm64) == 40
    with pytest.raises(ValueError):
        chrony.encode_sample(float("nan"), 0.0)
    with pytest.raises(ValueError):
        chrony.encode_sample(1.0, float("inf"))


def test_a_feed_with_nobody_listening_counts_and_recovers_when_chrony_comes(tmp_path, make_chrony):
    folder = tmp_path / "chrony"
    feed = chrony.ChronyFeed(str(folder / "gps.sock"))
    assert feed.send(time.time(), time.monotonic()) is False
    assert feed.errors == 1 and "nothing listens" in feed.last_error
    (tmp_path / "not-a-socket").write_text("")
    other = chrony.ChronyFeed(str(tmp_path / "not-a-socket"))
    assert other.send(time.time(), time.monotonic()) is False and other.errors == 1
    daemon = make_chrony()
    assert daemon.refclock_socket == folder / "gps.sock"
    stop = threading.Event()

    def receiver() -> None:  # a fix every half second, as long as it takes
        while not stop.wait(0.5):
            feed.send(time.time(), time.monotonic())

    thread = threading.Thread(target=receiver, daemon=True)
    thread.start()
    try:
        source = wait_reachable(daemon, min_samples=1)
    finally:
        stop.set()
        thread.join(timeout=2)
    assert source.mode == "#" and source.name == "GPS"
    assert feed.samples >= 1 and feed.last_error is None and feed.errors == 1


def _driver(tmp_path: Path, port: Path, daemon: Chrony) -> GpsDriver:
    ctx = DriverContext("gps", bus=Bus(), clock=Clock(lambda: False), state_dir=tmp_path, simulate=False)
    config = GpsConfig(port=str(port), baud=9600, chrony_socket=str(daemon.refclock_socket),
                       chrony_command_socket=str(daemon.command_socket))
    return GpsDriver(config, ctx)


def _feed_real_time(pty, stop: threading.Event, sky: dict | None = None) -> None:
    """A receiver at home with a fix, one epoch at each second of the (true) time, as a real one;
    `sky` may move it (lat) or shift its time (time_shift_s) meanwhile."""
    sky = sky if sky is not None else {}
    while not stop.wait(1.0 - time.time() % 1.0):
        epoch_s = float(int(time.time())) + sky.get("time_shift_s", 0.0)
        for line in epoch_sentences(epoch_s, lat=sky.get("lat", HOME[0]), lon=HOME[1], alt_m=5.0, speed_mps=0.0,
                                    course_deg=0.0, fix=True):
            pty.write(line)


@contextlib.contextmanager
def _running(driver, pty, sky: dict | None = None):
    """The driver on a receiver that sends real-time epochs (with `sky`'s changes), both stopped at the end."""
    stop = threading.Event()
    feeder = threading.Thread(target=_feed_real_time, args=(pty, stop, sky), daemon=True)
    feeder.start()
    driver.start()
    try:
        yield
    finally:
        stop.set()
        driver.stop()
        feeder.join(timeout=3)


def test_the_driver_feeds_chrony_which_selects_gps(tmp_path, make_pty, make_chrony):
    daemon = make_chrony()
    pty = make_pty()
    driver = _driver(tmp_path, pty.path, daemon)
    with _running(driver, pty):
        source = wait_reachable(daemon, min_samples=3)
        assert source.reach and source.samples >= 3
        health = driver.health()
        assert health["gps_chrony_samples"] >= 3 and health["gps_chrony_errors"] == 0
        # what health says comes from chrony itself (chronyc on its command socket)
        assert health["gps_chrony_source"] in {"unreachable", "not_selected", "selected", "combined"}
        state = wait_until(lambda: chrony.query(str(daemon.command_socket))[0] == chrony.SELECTED, 30,
                           "chrony to select the GPS refclock")
        assert state


def test_the_driver_without_chrony_counts_quietly_and_feeds_it_once_it_runs(tmp_path, make_pty, make_chrony,
                                                                              caplog):
    daemon = Chrony(tmp_path / "chrony")  # configured, not started yet: chrony is not running
    pty = make_pty()
    driver = _driver(tmp_path, pty.path, daemon)
    with _running(driver, pty):
        wait_until(lambda: driver.health()["gps_chrony_errors"] >= 3, 15, "fixes whose sample found no chrony")
        assert driver.health()["gps_link"] == "connected" and driver._thread.is_alive()
        assert driver.values()["fix"] == "3d" and driver.chrony.samples == 0
        warnings = [r for r in caplog.records if "not sent to chrony" in r.getMessage()]
        assert len(warnings) == 1  # once, not once a second
        started = make_chrony()
        assert started.refclock_socket == daemon.refclock_socket
        source = wait_reachable(started, min_samples=2)
        assert source.reach and driver.chrony.samples >= 2 and driver.chrony.last_error is None


def test_a_clock_a_year_behind_gps_is_what_chrony_would_step_and_this_one_stays(tmp_path, make_pty, make_chrony):
    """The box's case: fake-hwclock left the clock 400 days behind and GPS knows better. chrony
    (`makestep`, as Debian's chrony.conf has it) would step the clock; `chronyd -x` only says so."""
    daemon = make_chrony(extra="makestep 1 3\n")
    pty = make_pty()
    driver = _driver(tmp_path, pty.path, daemon)
    ahead_s = 400 * 86400.0
    wall_minus_mono = time.time() - time.monotonic()
    with _running(driver, pty, {"time_shift_s": ahead_s}):
        wait_until(lambda: "System clock wrong by" in daemon.log(), 30, "chrony to find the clock wrong")
    wrong_by = float(daemon.log().split("System clock wrong by ")[1].split()[0])
    assert abs(wrong_by - ahead_s) < 2.0  # the samples said how far, to within NMEA's second
    assert "Could not step system clock" in daemon.log()  # -x: chrony may not touch it ...
    assert abs((time.time() - time.monotonic()) - wall_minus_mono) < 1.0  # ... and nothing did


@pytest.mark.parametrize("spell", [{"lat": HOME[0] + 0.36}, {"time_shift_s": 3600.0}], ids=["40 km jump", "time jump"])
def test_a_suspect_fix_sends_chrony_no_sample(tmp_path, make_pty, make_chrony, spell):
    daemon = make_chrony()
    pty = make_pty()
    driver = _driver(tmp_path, pty.path, daemon)
    sky: dict = {}
    with _running(driver, pty, sky):
        wait_until(lambda: driver.chrony.samples >= 2, 15, "samples from trusted fixes")
        sky.update(spell)  # spoofed: the receiver now says something no parked container can do
        wait_until(lambda: driver.values()["gnss_integrity"] == "suspect", 10, "the fix judged suspect")
        sent = driver.chrony.samples
        epochs_before = driver.stats["sentences_ok"]
        wait_until(lambda: driver.stats["sentences_ok"] >= epochs_before + 18, 10, "three more spoofed epochs (6 sentences each)")
        assert driver.values()["gnss_integrity"] == "suspect"
        assert driver.chrony.samples == sent and driver.health()["gps_chrony_samples"] == sent


def test_health_says_when_chrony_does_not_know_the_gps_refclock(tmp_path):
    assert chrony.parse_sources(b"^,*,192.0.2.1,2,6,377,12,0.0001,0.0001,0.01\n") == (
        chrony.NOT_CONFIGURED, None, None)
    assert chrony.parse_sources(b"#,?,GPS,0,4,0,-,0,0,0\n")[:2] == (chrony.UNREACHABLE, 0)
    assert chrony.parse_sources(b"#,-,GPS,0,4,17,3,0,0,0\n")[:2] == (chrony.NOT_SELECTED, 0o17)
    assert chrony.parse_sources(b"#,*,GPS,0,4,377,3,0,0,0\n")[:2] == (chrony.SELECTED, 0o377)
    assert chrony.parse_sources(b"#,*,GPS,0,4,9z9,3\n\xff\xfe,,,\n") == (chrony.NOT_CONFIGURED, None, None)
    state, _, error = chrony.query(str(tmp_path / "no-chrony-here.sock"))
    assert state is None and error


def test_boxtel_run_on_a_simulated_fix_feeds_a_real_chrony(broker, make_config, run_agent, subscribe,
                                                               make_chrony):
    daemon = make_chrony()
    config = make_config(broker, {**FAST_HEALTH, "gps": {"chrony_socket": str(daemon.refclock_socket),
                                                         "chrony_command_socket": str(daemon.command_socket)}})
    subscriber = subscribe("boxtel/test-001/health")
    agent = run_agent(config, "--simulate")
    source = wait_reachable(daemon, min_samples=3, timeout=40)
    assert agent.alive() and source.mode == "#" and source.reach
    health = subscriber.wait_for("boxtel/test-001/health", lambda p: p.get("gps_chrony_samples", 0) >= 3).json
    assert health["gps_chrony_errors"] == 0 and health["gps_chrony_source"] is not None
    contract = DocContract((ROOT / "docs" / "mqtt.md").read_text())
    assert all(contract.documented("health", key) for key in health if key.startswith("gps_chrony"))


def _doctor_lines(config: Path, capsys, check: str) -> list[str]:
    from agent.cli import main

    main(["doctor", "-c", str(config)])
    return [line for line in capsys.readouterr().out.splitlines() if line[5:].startswith(f"{check}:")]


def test_doctor_follows_the_path_to_chrony_end_to_end(tmp_path, broker, make_config, make_chrony, capsys):
    folder = tmp_path / "chrony"
    config = make_config(broker, {"gps": {"port": str(tmp_path / "no-gps"),
                                          "chrony_socket": str(folder / "gps.sock"),
                                          "chrony_command_socket": str(folder / "command.sock")}})
    [line] = _doctor_lines(config, capsys, "chrony")
    assert line.startswith("FAIL chrony: nothing listens on") and f"refclock SOCK {folder / 'gps.sock'}" in line
    [clock] = _doctor_lines(config, capsys, "clock")
    assert "chrony" in clock and "a GPS fix)" not in clock  # never "get a GPS fix": a fix alone sets no clock
    daemon = make_chrony()
    [line] = _doctor_lines(config, capsys, "chrony")
    assert line.startswith("WARN chrony: chrony has the GPS refclock but no samples yet"), line
    feed = chrony.ChronyFeed(str(daemon.refclock_socket))
    stop = threading.Event()

    def receiver() -> None:
        while not stop.wait(0.5):
            feed.send(time.time(), time.monotonic())

    thread = threading.Thread(target=receiver, daemon=True)
    thread.start()
    try:
        wait_until(lambda: chrony.query(str(daemon.command_socket))[0] == chrony.SELECTED, 30, "GPS selected")
        [line] = _doctor_lines(config, capsys, "chrony")
    finally:
        stop.set()
        thread.join(timeout=2)
    assert line.startswith("OK   chrony: chrony selected GPS (reach "), line


@pytest.mark.parametrize(("gps", "key"), [
    ({"chrony_socket": "/run/" + "x" * 120}, "gps.chrony_socket"),
    ({"chrony_socket": "/run/chrony\nboxtel.sock"}, "gps.chrony_socket"),
    ({"chrony_command_socket": "/run/\x1b[31m.sock"}, "gps.chrony_command_socket"),
    ({"source": "shm"}, "gps.source"),
    ({"source": "gpsd", "gpsd": "localhost:99999"}, "gps.gpsd"),
])
def test_bad_gps_time_settings_are_one_line_config_errors(make_config, gps, key):
    from tests.support import boxtel

    config = make_config(None, {"gps": gps})
    done = boxtel("check-config", "-c", str(config))
    assert done.returncode == 78, done.stdout + done.stderr
    assert key in done.stderr and str(config) in done.stderr and "Traceback" not in done.stderr
    assert "\x1b" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_doctor_says_when_the_agents_samples_never_reach_chronys_refclock(tmp_path, broker, make_config,
                                                                         run_agent, make_chrony):
    """Something else listens where the agent sends (a stale socket, a path that is not the refclock
    line's): the agent counts samples sent, chrony none -- doctor says so, with the running agent's figures."""
    import socket as sockets

    from tests.support import boxtel

    daemon = make_chrony()
    elsewhere = sockets.socket(sockets.AF_UNIX, sockets.SOCK_DGRAM)
    elsewhere.bind(str(tmp_path / "not-chrony.sock"))
    try:
        config = make_config(broker, {"gps": {"chrony_socket": str(tmp_path / "not-chrony.sock"),
                                              "chrony_command_socket": str(daemon.command_socket)}})
        run_agent(config, "--simulate")
        elsewhere.settimeout(30)
        assert elsewhere.recv(64)  # the agent is sending
        done = wait_until(lambda: (d := boxtel("doctor", "-c", str(config))) and "samples to" in d.stdout and d,
                          30, "doctor to see the agent's samples")
    finally:
        elsewhere.close()
    [line] = [line for line in done.stdout.splitlines() if line[5:].startswith("chrony:")]
    assert line.startswith("FAIL chrony: the agent sent ") and "chrony used none (reach 0)" in line
    assert "must name that very socket" in line
