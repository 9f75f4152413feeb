"""`boxtel status` and `boxtel watch` against a running simulated agent, and against none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from agent import control
from agent.commands.status import FAIL, OK, WARN, assess
from tests.diag_support import is_socket
from tests.support import ROOT, boxtel, wait_until

SIMULATED = {"simulate": True, "host": {"interval_s": 1.0, "power_check_s": 1.0, "min_interval_s": 0.0}}


def connected(config) -> dict:
    path = control.socket_path(str(config))
    wait_until(lambda: is_socket(path), what="the control socket")
    return wait_until(lambda: (s := control.request(path, "status")["status"])["mqtt_connected"]
                      and s["drivers"]["host"]["values"] and s, what="a connected agent with a host reading")


def marks(output: str) -> dict[str, tuple[str, str]]:
    """{subsystem: (mark, detail)} from the screen (the first line per subsystem)."""
    found: dict[str, tuple[str, str]] = {}
    for line in output.splitlines()[1:]:
        mark, subsystem, detail = line.split(None, 2)
        found.setdefault(subsystem, (mark, detail))
    return found


def test_status_groups_the_running_agent_by_subsystem(broker, make_config, run_agent):
    config = make_config(broker, SIMULATED)
    agent = run_agent(config)
    connected(config)
    done = boxtel("status", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("boxtel test-001 — agent ")
    shown = marks(done.stdout)
    assert list(shown) == ["box", "service", "mqtt", "link", "outbox", "clock", "host"]
    # bytes per topic for the last hour: health went out at least once
    assert shown["link"][0] == OK and "last hour by topic: " in shown["link"][1] and "health " in shown["link"][1]
    assert shown["box"][0] == OK and "simulated hardware" in shown["box"][1]
    assert shown["mqtt"] == (OK, shown["mqtt"][1]) and f"127.0.0.1:{broker.port}" in shown["mqtt"][1]
    assert shown["service"][0] == WARN and "not running under systemd" in shown["service"][1]
    assert "\x1b[" not in done.stdout  # no colours into a pipe
    assert agent.alive()


def test_status_says_why_mqtt_fails(make_config, run_agent):
    config = make_config(None, SIMULATED)  # port 1: nothing listens
    run_agent(config)
    path = control.socket_path(str(config))
    wait_until(lambda: is_socket(path), what="the control socket")
    wait_until(lambda: control.request(path, "status")["status"]["mqtt_last_error"], what="a connect failure")
    shown = marks(boxtel("status", "-c", str(config)).stdout)
    assert shown["mqtt"][0] == FAIL
    assert "not connected to 127.0.0.1:1: cannot connect to 127.0.0.1:1: Connection refused" in shown["mqtt"][1]


def test_tls_to_a_plain_mqtt_port_says_the_port_does_not_speak_tls(broker, make_config, run_agent, certs):
    """A plain MQTT listener answers a TLS hello by hanging up; "Connection reset by peer" tells no one
    what to change."""
    config = make_config(broker, {**SIMULATED, "mqtt": {"tls": True, "ca_file": str(certs["ca_crt"])}})
    run_agent(config)
    path = control.socket_path(str(config))
    wait_until(lambda: is_socket(path), what="the control socket")
    wait_until(lambda: control.request(path, "status")["status"]["mqtt_last_error"], what="a connect failure")
    error = control.request(path, "status")["status"]["mqtt_last_error"]
    assert error == (f"cannot connect to 127.0.0.1:{broker.port}: the broker's port does not speak TLS? "
                     "(it hung up on the TLS handshake; the TLS port is usually 8883)")


def test_status_json_is_the_snapshot_with_the_marks(broker, make_config, run_agent):
    config = make_config(broker, SIMULATED)
    run_agent(config)
    connected(config)
    done = boxtel("status", "--json", "-c", str(config))
    assert done.returncode == 0
    status = json.loads(done.stdout)
    assert status["box"] == "test-001" and status["mqtt_connected"] is True
    assert {"outbox_depth", "last_seq", "clock_source", "clock_offset_s", "version", "uptime_s", "alarms"} <= set(status)
    assert "cpu_pct" in status["drivers"]["host"]["values"]
    assert {c["subsystem"] for c in status["checks"]} >= {"box", "mqtt", "outbox", "clock", "host"}


def test_status_without_an_agent_says_so_and_exits_69(make_config):
    done = boxtel("status", "-c", str(make_config()))
    assert done.returncode == 69
    assert done.stderr.startswith("boxtel: no boxtel agent is running (nothing answers on ")
    assert "Traceback" not in done.stderr


def test_alarms_and_host_trouble_are_marked_with_their_reason():
    snapshot = {
        "box": "b", "version": "1", "uptime_s": 5, "mqtt_connected": True, "outbox_depth": 0, "last_seq": 3,
        "clock_source": "gps", "clock_offset_s": 2.5, "service": {"systemd": True, "watchdog_s": 30.0},
        "health": {"dropped": 4},
        "drivers": {
            "host": {"values": {"undervoltage": "active", "disk_used_pct": 95.0}, "alarms": {"undervoltage": "warning"}},
            "locker/armory": {"values": {"door": "open"}, "alarms": {"door_open_too_long": "alarm"}},
            "gps": {"values": None, "alarms": {}, "link": "disconnected", "last_error": "cannot open /dev/ttyS0"},
            "gps2": {"values": {"fix": "none", "sats": 2}, "alarms": {}, "link": "connected", "fix": "none"},
        },
    }
    shown = {m.subsystem: m for m in assess(snapshot)}
    assert shown["service"].mark == OK
    assert shown["clock"].mark == OK and "+2.5 s" in shown["clock"].detail
    assert shown["outbox"].mark == WARN and "4 messages dropped" in shown["outbox"].detail
    assert shown["host"].mark == FAIL and "under-voltage now" in shown["host"].detail
    assert "state disk 95.0 % full" in shown["host"].detail
    assert (shown["locker/armory"].mark, shown["locker/armory"].detail) == (FAIL, "alarm: door_open_too_long")
    assert shown["gps"].mark == FAIL and shown["gps"].detail == "link disconnected: cannot open /dev/ttyS0"
    assert (shown["gps2"].mark, shown["gps2"].detail) == (WARN, "no fix")


def test_watch_prints_plain_lines_when_piped_and_ctrl_c_exits_0(broker, make_config, run_agent):
    config = make_config(broker, SIMULATED)
    run_agent(config)
    connected(config)
    watcher = subprocess.Popen([sys.executable, "-m", "agent", "watch", "-c", str(config)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The simulated host's events may come first; its health reading follows within seconds.
        lines = []
        while not any(" health " in line for line in lines):
            lines.append(watcher.stdout.readline())
            assert lines[-1] and len(lines) < 50, lines
        assert not any("\x1b[" in line for line in lines)
        assert "cpu_pct=" in lines[-1]
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=10) == 0
        assert "Traceback" not in watcher.stderr.read()
    finally:
        if watcher.poll() is None:
            os.kill(watcher.pid, signal.SIGKILL)
            watcher.wait()


def test_watch_without_an_agent_exits_69(make_config):
    done = boxtel("watch", "-c", str(make_config()))
    assert done.returncode == 69
    assert "no boxtel agent is running" in done.stderr


def test_watch_line_format():
    from agent.commands.watch import format_line

    event = {"type": "event", "stream": "events", "seq": 12, "payload": {
        "kind": "door_opened", "source": "locker/armory", "severity": "alarm", "open_s": 0,
        "ts": "2026-01-02T03:04:05.678Z"}}
    assert format_line(event) == "03:04:05.678Z     #12 EVENT locker/armory door_opened (alarm) open_s=0"
    assert format_line(event, colour=True).count("\x1b[") == 2
    assert format_line(event, width=30) == "03:04:05.678Z     #12 EVENT l…"
    assert format_line({"type": "dropped", "count": 3}) == "... 3 lines dropped: this watcher read too slowly"
