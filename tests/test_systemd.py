"""The systemd contract: notify protocol over a real datagram socket, the watchdog, the unit's hardening."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.bus import Event
from agent.config import load
from agent.runtime import Agent
from agent.sdnotify import Notifier, watchdog_interval_s
from tests.support import ROOT, wait_until

FAST_HOST = {"host": {"interval_s": 1.0, "power_check_s": 0.5, "min_interval_s": 0.0, "max_interval_s": 1.0}}
WATCHDOG_USEC = 1_000_000  # WatchdogSec=1s: the agent pings every 0.5 s
PING_INTERVAL_S = WATCHDOG_USEC / 2e6


class NotifySocket:
    """What systemd listens on: a datagram socket; every datagram is kept with its arrival time."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def times(self, line: str) -> list[float]:
        return [at for at, text in list(self.messages) if text == line]

    def lines(self) -> list[str]:
        return [text for _, text in list(self.messages)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path):
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def _systemd_env(notify_socket: NotifySocket) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def test_ready_once_pings_at_half_watchdogsec_and_stopping_on_sigterm(
    broker, make_config, run_agent, notify_socket
):
    agent = run_agent(make_config(broker, FAST_HOST), env=_systemd_env(notify_socket))
    wait_until(lambda: len(notify_socket.times("WATCHDOG=1")) >= 7, what="seven watchdog pings")
    assert notify_socket.lines().count("READY=1") == 1
    ready_at = notify_socket.times("READY=1")[0]
    pings = notify_socket.times("WATCHDOG=1")
    assert pings[0] >= ready_at  # never before READY
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    # Scheduled on a fixed grid: each gap is the interval, give or take scheduling noise.
    assert all(0.6 * PING_INTERVAL_S <= gap <= 1.5 * PING_INTERVAL_S for gap in gaps), gaps
    assert any(line.startswith("STATUS=online;") for line in notify_socket.lines()), notify_socket.lines()

    assert agent.terminate() == 0
    lines = notify_socket.lines()
    assert "STOPPING=1" in lines
    stopping_at = notify_socket.times("STOPPING=1")[0]
    assert not [t for t in notify_socket.times("WATCHDOG=1") if t > stopping_at + 0.05]


def test_no_notify_socket_means_no_systemd_traffic(broker, make_config, run_agent, subscribe):
    # Run by hand (no NOTIFY_SOCKET): the agent works as ever and says nothing about systemd.
    sub = subscribe("boxtel/test-001/status")
    agent = run_agent(make_config(broker, FAST_HOST), env={"NOTIFY_SOCKET": "", "WATCHDOG_USEC": ""})
    sub.wait_for("boxtel/test-001/status", lambda p: p["state"] == "online")
    assert agent.terminate() == 0
    assert "systemd" not in agent.log()


def _stop_paho_thread(agent: Agent) -> None:
    agent.publisher._client.loop_stop()


def _stop_driver_thread(name: str) -> Callable[[Agent], None]:
    def stop(agent: Agent) -> None:
        driver = next(d for d in agent.drivers if d.ctx.name == name)
        driver._stop.set()
        driver._thread.join(timeout=5)

    stop.__name__ = f"stop_{name}_driver_thread"
    return stop


# Every driver with a thread of its own: the host, the GPS on a simulated pty, a locker on mock pins.
ALL_THREADED_DRIVERS = {
    **FAST_HOST,
    "simulate": True,
    "gps": {},
    "locker": [{"name": "armory-1", "door": {"pin": 23}}],
}


def _block_the_core(agent: Agent) -> None:
    stuck = threading.Event()
    original = agent._on_event

    def blocking(event):
        stuck.wait(30)
        original(event)

    agent._on_event = blocking
    agent.bus.put(Event("test_block", "test"))
    agent._unblock_for_test = stuck.set


def _end_the_control_thread(agent: Agent) -> None:
    """Whatever kills the control thread (no request can any more: a bug in its selector loop)."""
    from agent import control

    server = agent.control

    def broken_accept() -> None:
        raise RuntimeError("a bug in the control thread")

    server._accept = broken_accept
    control.connect(server.path).close()
    wait_until(lambda: not server._thread.is_alive(), what="the control thread to end")


@pytest.mark.parametrize(
    "stop_part",
    [_stop_paho_thread, _stop_driver_thread("host"), _stop_driver_thread("gps"),
     _stop_driver_thread("locker/armory-1"), _block_the_core, _end_the_control_thread],
    ids=["paho-network-thread", "host-driver-thread", "gps-driver-thread", "locker-driver-thread", "core-loop",
         "control-thread"],
)
def test_pings_stop_within_one_interval_when_a_part_stops(
    broker, make_config, notify_socket, monkeypatch, stop_part
):
    for key, value in _systemd_env(notify_socket).items():
        monkeypatch.setenv(key, value)
    config = load(make_config(broker, ALL_THREADED_DRIVERS))
    built: list[Agent] = []

    def run() -> None:  # the core owns its SQLite connection: build it in the thread that runs it
        built.append(Agent(config))
        built[0].run()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    agent = wait_until(lambda: built and built[0], what="the agent")
    try:
        wait_until(lambda: agent.publisher.connected and len(notify_socket.times("WATCHDOG=1")) >= 3,
                   what="a connected agent pinging the watchdog")
        stop_part(agent)
        # Taken after the part is down: paho's loop_stop() waits up to its 1 s select timeout, and
        # pings while its thread still runs are right.
        stopped_at = time.monotonic()
        # Let three intervals pass, then look back: no ping later than one interval after the stop.
        wait_until(lambda: time.monotonic() > stopped_at + 3 * PING_INTERVAL_S, what="three intervals")
        late = [t - stopped_at for t in notify_socket.times("WATCHDOG=1") if t > stopped_at + PING_INTERVAL_S]
        assert late == []
        assert any(line.startswith("STATUS=unhealthy:") for line in notify_socket.lines())
    finally:
        getattr(agent, "_unblock_for_test", lambda: None)()
        agent.request_stop("test over")
        runner.join(timeout=10)
    assert not runner.is_alive()


def test_notifier_reaches_an_abstract_socket():
    name = f"boxtel-test-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(5)
    try:
        notifier = Notifier("@" + name)
        assert notifier.send("READY=1", "STATUS=up")
        assert listener.recv(100) == b"READY=1\nSTATUS=up"
        notifier.close()
    finally:
        listener.close()


def test_watchdog_interval_comes_from_the_environment_meant_for_us():
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # another process's
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({}) is None


# -- the unit file -----------------------------------------------------------------------------------
UNIT = ROOT / "systemd" / "boxtel.service"
needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


@needs_systemd_analyze
def test_unit_exposure_is_at_most_2():
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    summary = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert summary, result.stdout + result.stderr
    exposure = float(summary[0].split("Overall exposure level for boxtel.service:")[1].split()[0])
    assert exposure <= 2.0, result.stdout


@needs_systemd_analyze
def test_unit_verifies_clean(tmp_path: Path):
    # verify wants the ExecStart binary to exist: point a copy of the unit at one that does.
    unit = tmp_path / "boxtel.service"
    unit.write_text(UNIT.read_text().replace("/opt/boxtel/bin/boxtel", shutil.which("true") or "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60,
    )
    problems = [line for line in result.stderr.splitlines() if "boxtel.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


# -- make install / make uninstall into a staged root --------------------------------------------------
def _make(target: str, root: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["make", "--no-print-directory", target, f"DESTDIR={root}", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_make_install_and_uninstall_are_idempotent_and_keep_config_and_data(tmp_path: Path):
    root = tmp_path / "root"
    first = _make("install", root)
    assert "Next steps" in first.stdout
    unit = root / "etc/systemd/system/boxtel.service"
    assert unit.read_text() == UNIT.read_text()
    assert (root / "etc/sysusers.d/boxtel.conf").read_text().startswith("#")
    assert "d /var/lib/boxtel 0700 boxtel boxtel" in (root / "etc/tmpfiles.d/boxtel.conf").read_text()
    assert (root / "opt/boxtel/share/doc/boxtel/deploy.md").is_file()
    config = root / "etc/boxtel/agent.toml"
    assert config.read_text() == (ROOT / "config/agent.example.toml").read_text()
    assert config.stat().st_mode & 0o777 == 0o640
    # The staged tree names /opt/boxtel, not the staging root: it works once copied to / (a package build).
    script = root / "opt/boxtel/bin/boxtel"
    assert script.read_text().splitlines()[0] in ("#!/opt/boxtel/bin/python", "#!/opt/boxtel/bin/python3")
    assert not subprocess.run(["grep", "-rlF", str(root), str(root / "opt/boxtel")], capture_output=True).stdout
    version = _at_prefix(root, "/opt/boxtel/bin/boxtel", "--version")
    assert version.returncode == 0 and version.stdout.startswith("boxtel "), version.stderr

    # A second install upgrades the code and never overwrites the operator's config.
    config.write_text("# edited on site\n")
    second = _make("install", root)
    assert "kept your" in second.stdout
    assert config.read_text() == "# edited on site\n"

    state = root / "var/lib/boxtel"
    state.mkdir(parents=True)
    (state / "outbox.db").write_bytes(b"events not yet delivered")
    reports = []
    for _ in range(2):
        reports.append(_make("uninstall", root).stdout)
        assert not unit.exists() and not (root / "opt/boxtel").exists()
        assert not (root / "etc/sysusers.d/boxtel.conf").exists()
        assert config.read_text() == "# edited on site\n"
        assert (state / "outbox.db").exists()
    # each run says what it removed and what it kept, and only what was there
    assert f"removed {unit}" in reports[0] and f"removed {root}/opt/boxtel" in reports[0]
    assert "removed" not in reports[1] and "nothing to remove" in reports[1]
    assert all(f"kept {state}" in report and f"kept {config.parent}" in report for report in reports)

    purged = _make("uninstall", root, "PURGE=1").stdout
    assert not config.parent.exists() and not state.exists()
    assert f"removed {config.parent}" in purged and f"removed {state}" in purged and "kept" not in purged
    again = _make("uninstall", root, "PURGE=1").stdout
    assert "removed" not in again and "nothing to remove" in again


def _at_prefix(root: Path, *command: str) -> subprocess.CompletedProcess:
    """Run `command` with the staged /opt/boxtel mounted at /opt/boxtel, in a private mount namespace
    (a tmpfs over /opt that nothing outside this process sees)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:  # then at least: the staged venv runs it
        python, script = root / "opt/boxtel/bin/python", root / command[0].lstrip("/")
        return subprocess.run([str(python), str(script), *command[1:]], capture_output=True, text=True, timeout=60)
    mount = f"mount -t tmpfs tmpfs /opt && mkdir /opt/boxtel && mount --bind {root}/opt/boxtel /opt/boxtel"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mount} && exec "$@"',
                           "sh", *command], capture_output=True, text=True, timeout=60)


# -- logging to journald -------------------------------------------------------------------------------
def test_under_journald_lines_carry_priorities_no_timestamps_and_no_secrets(
    broker, make_config, run_agent, subscribe, tmp_path: Path
):
    secret = tmp_path / "mqtt.password"
    secret.write_text("hunter2-do-not-log\n")
    secret.chmod(0o600)
    # protocol 3.1.1 makes the agent warn at start: a line journalctl -p warning must show.
    config = make_config(broker, {**FAST_HOST, "mqtt": {"protocol": "3.1.1", "username": "test-001",
                                                         "password_file": str(secret)}})
    log_path = tmp_path / "journal.log"
    log_path.touch()
    st = log_path.stat()
    sub = subscribe("boxtel/test-001/status")
    agent = run_agent(config, log_path=log_path, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    sub.wait_for("boxtel/test-001/status", lambda p: p["state"] == "online")
    assert agent.terminate() == 0
    lines = [line for line in agent.log().splitlines() if line]
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    assert any(line.startswith("<4>boxtel.mqtt: MQTT 3.1.1") for line in lines), lines
    assert not any(line[3:5].isdigit() for line in lines)  # journald stamps the time; we do not
    assert "hunter2" not in agent.log()
