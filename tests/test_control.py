"""The control socket: mode and group, stale files, the JSON-lines protocol, and slow clients that must
never hold up the core."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import random
import socket
import stat
import threading

import pytest

from agent import control
from agent.errors import UnavailableError
from tests.diag_support import agent_in_process, is_socket
from tests.support import boxtel, wait_until

SIMULATED = {"simulate": True, "host": {"interval_s": 1.0, "power_check_s": 1.0, "min_interval_s": 0.0, "max_interval_s": 1.0}}


def socket_of(config) -> str:
    return control.socket_path(str(config))


def ask(sock: socket.socket, request: dict | bytes) -> dict:
    sock.sendall(request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n")
    return json.loads(sock.makefile("rb").readline())


def test_socket_is_0660_answers_status_and_is_removed_on_stop(broker, make_config, run_agent):
    config = make_config(broker, SIMULATED)
    agent = run_agent(config)
    path = socket_of(config)
    wait_until(lambda: is_socket(path), what="the control socket")
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
    status = wait_until(lambda: (s := control.request(path, "status")["status"])["mqtt_connected"] and s,
                        what="a connected agent")
    assert status["box"] == "test-001"
    assert status["service"]["pid"] == agent.pid
    assert agent.terminate() == 0
    assert not os.path.exists(path)


def test_socket_gets_the_configured_group(broker, make_config, run_agent):
    candidates = [g for g in grp.getgrall() if g.gr_gid != os.getegid()]
    if os.geteuid() != 0:
        candidates = [g for g in candidates if g.gr_gid in os.getgroups()]
    if not candidates:
        pytest.skip("no second group this user may give a file to")
    group = candidates[0]
    config = make_config(broker, {**SIMULATED, "diagnostics": {"group": group.gr_name}})
    run_agent(config)
    wait_until(lambda: is_socket(socket_of(config)), what="the control socket")
    assert os.lstat(socket_of(config)).st_gid == group.gr_gid


def test_a_group_that_does_not_exist_is_a_clear_warning(broker, make_config, run_agent):
    config = make_config(broker, {**SIMULATED, "diagnostics": {"group": "no-such-group-xyz"}})
    agent = run_agent(config)
    wait_until(lambda: is_socket(socket_of(config)), what="the control socket")
    assert "diagnostics.group 'no-such-group-xyz' does not exist" in agent.log()
    assert control.request(socket_of(config), "status")["ok"]


def test_stale_socket_of_a_killed_agent_is_reported_then_replaced(broker, make_config, run_agent):
    config = make_config(broker, SIMULATED)
    path = socket_of(config)
    first = run_agent(config)
    wait_until(lambda: is_socket(path), what="the control socket")
    first.kill()
    assert is_socket(path)  # SIGKILL leaves the file behind
    done = boxtel("status", "-c", str(config))
    assert done.returncode == 69
    assert "no boxtel agent is running" in done.stderr
    second = run_agent(config)
    wait_until(lambda: "stale control socket" in second.log(), what="the stale socket being removed")
    status = wait_until(lambda: _status_or_none(path), what="the new agent's answer")
    assert status["service"]["pid"] == second.pid


def _status_or_none(path: str) -> dict | None:
    try:
        return control.request(path, "status")["status"]
    except UnavailableError:
        return None


def test_bad_requests_get_an_error_line_and_the_connection_stays_usable(broker, make_config, run_agent):
    config = make_config(broker, SIMULATED)
    run_agent(config)
    wait_until(lambda: is_socket(socket_of(config)), what="the control socket")
    with control.connect(socket_of(config)) as sock:
        assert ask(sock, b"this is not json\n") == {
            "ok": False, "error": 'bad request: expected one JSON object per line, e.g. {"cmd": "status"}'}
        unknown = ask(sock, {"cmd": "reboot"})
        assert not unknown["ok"] and "unknown command 'reboot'" in unknown["error"]
        assert "status" in unknown["error"]
        no_gps = ask(sock, {"cmd": "probe", "what": "gps"})
        assert no_gps == {"ok": False, "error": "no GPS driver is running in the agent"}
        assert ask(sock, {"cmd": "probe", "what": "lockers\u202e"}) == {
            "ok": False, "error": "cannot probe 'lockers\\u202e' (what: gps)"}
        assert ask(sock, {"cmd": "status"})["status"]["box"] == "test-001"


def test_clients_that_connect_and_never_ask_cannot_lock_a_technician_out(broker, make_config, run_agent):
    """Slowloris: every slot held by a client that sends nothing (or half a request). The newcomer is
    served; the one idle longest is told why and closed; a watcher goes only when every slot watches."""
    config = make_config(broker, SIMULATED)
    agent = run_agent(config)
    path = socket_of(config)
    wait_until(lambda: is_socket(path), what="the control socket")
    watcher = control.connect(path)
    assert ask(watcher, {"cmd": "watch"}) == {"ok": True, "watching": True}
    held = [control.connect(path) for _ in range(control.MAX_CLIENTS - 1)]
    try:
        held[0].sendall(b'{"cmd": "sta')  # half a request, never finished
        wait_until(lambda: control.request(path, "status")["ok"], what="a status while every slot is held")
        status = boxtel("status", "-c", str(config))
        assert status.returncode == 0 and f"pid {agent.pid}" in status.stdout, status
        told = json.loads(held[0].makefile("rb").readline())  # the first of them was idle longest
        assert told["ok"] is False and "idle longest" in told["error"], told
        assert held[0].recv(1) == b""
        watcher.settimeout(10)
        assert b'"type":' in watcher.recv(65536)  # the watcher still streams
    finally:
        for sock in [watcher, *held]:
            sock.close()
    assert "Traceback" not in agent.log()


def test_a_burst_of_clients_at_once_is_served_every_one(broker, make_config, run_agent):
    """A hundred `boxtel status` at once (a monitoring script gone wild): each one waits its turn and is
    answered; none is refused for a full accept queue (EAGAIN) or for the cap."""
    config = make_config(broker, SIMULATED)
    agent = run_agent(config)
    path = socket_of(config)
    wait_until(lambda: is_socket(path), what="the control socket")
    answers: list = []

    def ask_status() -> None:
        try:
            answers.append(control.request(path, "status", timeout_s=60)["ok"])
        except UnavailableError as err:
            answers.append(str(err))

    burst = [threading.Thread(target=ask_status) for _ in range(100)]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join(90)
    assert answers == [True] * 100, [a for a in answers if a is not True][:3]
    assert "Traceback" not in agent.log()


def test_a_watcher_that_never_reads_loses_lines_but_never_slows_the_core(broker, make_config, monkeypatch):
    monkeypatch.setitem(__import__("drivers").REGISTRY, "testpins", "tests.diag_support:PinsDriver")
    config = make_config(broker, {"testpins": {"min_interval_s": 0.0}})
    burst, padding = 4 * control.WATCH_QUEUE, "x" * 1000
    with agent_in_process(config) as agent:
        path = agent.config.diagnostics.socket
        stalled = control.connect(path)
        try:
            stalled.sendall(b'{"cmd": "watch"}\n')  # ...and never reads another byte
            wait_until(lambda: agent.control.snapshot()["watchers"] == 1, what="the watcher")
            # Offline, readings are downsampled to history: the burst must meet a connected agent.
            wait_until(lambda: agent.publisher.connected, what="the agent's MQTT connection")
            driver = agent.drivers[0]
            first = agent.outbox.last_seq
            for n in range(burst):
                driver.ctx.reading({"n": n, "padding": padding})
            # The core accepts every reading while the watcher is stuck; status still answers at once.
            wait_until(lambda: control.request(path, "status")["status"]["last_seq"] >= first + burst,
                       what="the core to accept the whole burst")
            dropped = control.request(path, "status")["status"]["control"]["watch_dropped"]
            assert dropped > 0
            # When the watcher reads again it is told how much it missed.
            stalled.settimeout(10)
            lines = stalled.makefile("rb")
            assert json.loads(lines.readline()) == {"ok": True, "watching": True}
            # Drops may be told in several parts (some before the status above was taken); every
            # one is told in the end. A short count would leave readline to time out and fail.
            told = 0
            while told < dropped:  # (>=: a health reading may have been dropped since)
                message = json.loads(lines.readline())
                told += message.get("count", 0) if message["type"] == "dropped" else 0
        finally:
            stalled.close()


def test_watch_streams_accepted_readings_and_events_with_their_seq(broker, make_config, monkeypatch):
    monkeypatch.setitem(__import__("drivers").REGISTRY, "testpins", "tests.diag_support:PinsDriver")
    config = make_config(broker, {"testpins": {"min_interval_s": 0.0}})
    with agent_in_process(config) as agent:
        stream = control.watch(agent.config.diagnostics.socket)
        wait_until(lambda: agent.control.snapshot()["watchers"] == 1, what="the watcher")
        ctx = agent.drivers[0].ctx
        ctx.reading({"door": "closed"})
        ctx.event("door_opened", open_s=0)
        mine = (m for m in stream if m["stream"] != "health")  # the agent's own health may come between
        reading, event = next(mine), next(mine)
        assert reading["type"] == "reading" and reading["stream"] == "testpins"
        assert reading["payload"]["door"] == "closed"
        assert event["type"] == "event" and event["stream"] == "events"
        assert event["payload"]["kind"] == "door_opened" and event["payload"]["source"] == "testpins"
        assert event["seq"] > reading["seq"]
        stream.close()


def test_a_client_that_half_closes_still_gets_its_answer(broker, make_config, run_agent):
    """As `printf '{"cmd":"pins"}' | socat - UNIX-CONNECT:...` does: no newline, then EOF."""
    config = make_config(broker, SIMULATED)
    run_agent(config)
    wait_until(lambda: is_socket(socket_of(config)), what="the control socket")
    with control.connect(socket_of(config)) as sock:
        sock.sendall(b'{"cmd": "pins"}')
        sock.shutdown(socket.SHUT_WR)
        lines = sock.makefile("rb").read().splitlines()
    assert [json.loads(line) for line in lines] == [{"ok": True, "pins": []}]


HOSTILE_REQUESTS = [
    b"[" * 1500 + b"]" * 1500,  # RecursionError in json.loads: it used to end the control thread
    b'{"cmd": ' + b"[" * 1500 + b"]" * 1500 + b"}",
    b'{"cmd": {"nested": true}}',
    b'{"cmd": ["status"]}',
    b'{"cmd": "status", "what": 1e999}',
    b'{"cmd": NaN}',
    b"\xff\xfe not utf-8",
    b"[]",
    b'"status"',
    b"{}",
]


def test_no_request_within_the_cap_can_end_the_control_thread(broker, make_config, run_agent):
    config = make_config(broker, SIMULATED)
    agent = run_agent(config)
    path = socket_of(config)
    wait_until(lambda: is_socket(path), what="the control socket")
    for request in HOSTILE_REQUESTS:
        assert len(request) < control.MAX_REQUEST_BYTES
        with control.connect(path) as sock:
            answer = ask(sock, request + b"\n")
            assert answer["ok"] is False and answer["error"].startswith("bad request"), (request[:40], answer)
            assert ask(sock, {"cmd": "status"})["ok"]  # the same connection goes on
    # Random bytes are a bad request too (every line of them), and the connection goes on.
    with control.connect(path) as sock:
        garbage = bytes(random.Random(12).randrange(256) for _ in range(3000)).replace(b"\n", b"")
        assert ask(sock, garbage + b"\n")["error"].startswith("bad request")
        assert ask(sock, {"cmd": "status"})["ok"]
    # A line past the cap is answered once and the connection closed, however much more comes.
    with control.connect(path) as sock:
        with contextlib.suppress(OSError):  # the agent may hang up while we are still sending
            sock.sendall(b'{"cmd": "status", "pad": "' + b"x" * 1_000_000)
        answer = json.loads(sock.makefile("rb").readline())
        assert answer == {"ok": False, "error": f"request longer than {control.MAX_REQUEST_BYTES} bytes"}
    # A command that is a string full of control characters is named escaped, on one line.
    with control.connect(path) as sock:
        unknown = ask(sock, {"cmd": "x\nboxtel.core: forged line\x1b[2J"})
    assert "\n" not in unknown["error"] and "\x1b" not in unknown["error"] and "x\\nboxtel.core" in unknown["error"]
    status = boxtel("status", "-c", str(config))
    assert status.returncode == 0 and f"pid {agent.pid}" in status.stdout, status
    doctor = boxtel("doctor", "-c", str(config))
    assert f"OK   agent: running (pid {agent.pid}" in doctor.stdout, doctor
    assert control.request(path, "status")["status"]["control"]["clients"] == 1  # this request alone
    assert "Traceback" not in agent.log() and "control socket thread failed" not in agent.log()


def test_a_bug_answering_one_request_is_an_error_line_and_the_thread_serves_on(broker, make_config, monkeypatch):
    monkeypatch.setitem(__import__("drivers").REGISTRY, "gps", "tests.diag_support:FakeGps")
    config = make_config(broker, {"gps": {"port": "/dev/null"}})
    with agent_in_process(config) as agent:
        path = agent.config.diagnostics.socket

        def broken_status():
            raise RuntimeError("a bug in the driver's status()")

        agent.drivers[0].status = broken_status
        with control.connect(path) as sock:
            answer = ask(sock, {"cmd": "probe", "what": "gps"})
            assert answer == {"ok": False, "error": "internal error answering probe: RuntimeError (see the agent's log)"}
            assert ask(sock, {"cmd": "pins"}) == {"ok": True, "pins": []}  # same connection, same thread
        assert agent.control.alive() is None
