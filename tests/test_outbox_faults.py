"""The outbox under faults, end to end: a real mosquitto, a link proxy that passes, black-holes or cuts,
real `boxtel run` processes (with the [load] test driver) killed with SIGKILL, and hostile disks.

The invariant checked after every scenario: each seq from 1 to the outbox's high-water mark was either
delivered or is still in the outbox (or is counted as dropped), and a seq that arrives twice arrives as
the same message."""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from agent.config import load
from agent.outbox import EVENT, HISTORY, Outbox
from agent.runtime import Agent
from drivers import REGISTRY
from tests.loadgen import DRIVER as LOAD_DRIVER
from tests.loadgen import LoadAgent, load_config
from tests.proxy import BLACKHOLE, CUT, PASS, LinkProxy
from tests.support import wait_until

BASE = "boxtel/test-001"
STATUS = f"{BASE}/status"
EVENTS = f"{BASE}/events"
LOAD = f"{BASE}/load"
HISTORY_LOAD = f"{BASE}/history/load"
HEALTH = f"{BASE}/health"
FAST_HEALTH = {"host": {"interval_s": 1.0, "power_check_s": 1.0, "min_interval_s": 0.0, "max_interval_s": 1.0}}
# The scenario is 60 s offline; the same rates over a shorter outage show the same properties.
OUTAGE_S = float(os.environ.get("BOXTEL_OUTAGE_S", "12"))


@pytest.fixture
def proxy(broker):
    link = LinkProxy(broker.port)
    yield link
    link.close()


@pytest.fixture
def run_load():
    agents: list[LoadAgent] = []

    def start(config: Path, **options) -> LoadAgent:
        agent = LoadAgent(config, **options)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.close()


def online(payload: dict) -> bool:
    return payload["state"] == "online"


def births(sub) -> list:
    return [m for m in sub.on(STATUS) if online(m.json)]


def outbox_rows(state_dir: Path) -> tuple[dict[int, tuple[int, str]], int, int]:
    """(seq -> (prio, payload)) of what is still queued, the seq high-water mark, and the dropped count."""
    db = sqlite3.connect(state_dir / "outbox.db")
    try:
        rows = {seq: (prio, payload) for seq, prio, payload in db.execute("SELECT seq, prio, payload FROM outbox")}
        meta = dict(db.execute("SELECT key, value FROM meta"))
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    # the high-water mark: the newest row, or meta when a commit deleted it (see Outbox.commit)
    return rows, max([meta.get("seq", 0), *rows]), meta.get("dropped", 0)


def delivered(sub) -> dict[int, set[bytes]]:
    by_seq: dict[int, set[bytes]] = {}
    for message in sub.messages:
        if b'"seq"' in message.raw:
            by_seq.setdefault(message.json["seq"], set()).add(message.raw)
    return by_seq


def assert_nothing_lost(sub, state_dir: Path) -> dict[int, tuple[int, str]]:
    """Every seq delivered or still queued, none reused; returns what is still queued."""
    rows, last_seq, dropped = outbox_rows(state_dir)
    assert dropped == 0
    wait_until(lambda: set(delivered(sub)) | set(rows) == set(range(1, last_seq + 1)), timeout=5,
               what=f"every seq up to {last_seq} delivered or queued; missing "
                    f"{sorted(set(range(1, last_seq + 1)) - set(delivered(sub)) - set(rows))[:20]}")
    reused = {seq: payloads for seq, payloads in delivered(sub).items() if len(payloads) > 1}
    assert not reused, f"a seq came with different payloads: {reused}"
    for seq, (_, payload) in rows.items():
        if seq in delivered(sub):
            assert delivered(sub)[seq] == {payload.encode()}
    return rows


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:], strict=False))


def first_arrivals(messages) -> list[int]:
    """Seqs in order of first arrival: a message in flight when the link dropped may come again."""
    seen: set[int] = set()
    order = []
    for message in messages:
        seq = message.json["seq"]
        if seq not in seen:
            seen.add(seq)
            order.append(seq)
    return order


def arrival_delay_s(message) -> float:
    """Seconds from the message's `ts` to its arrival (same machine, same clock)."""
    ts = datetime.fromisoformat(message.json["ts"].replace("Z", "+00:00")).timestamp()
    arrived = time.time() - (time.monotonic() - message.received_mono)
    return arrived - ts


def prefill(state_dir: Path, history: int, events: int) -> int:
    """A backlog as a long outage leaves it: events and history in the outbox before the agent starts."""
    box = Outbox(state_dir / "outbox.db")
    for i in range(history):
        box.accept(HISTORY, "load", {"n": -history + i, "ts": "2026-01-01T00:00:00.000Z"})
    box.commit()
    for i in range(events):
        box.accept(EVENT, "events", {"kind": "backlog", "source": "load", "k": i, "ts": "2026-01-01T00:00:00.000Z"})
    box.close()
    return history + events


# -- a broker outage ---------------------------------------------------------------------------------
def test_outage_loses_no_event_replays_history_in_order_and_state_is_current(
        broker, proxy, make_config, subscribe, run_load, tmp_path):
    sub = subscribe(f"{BASE}/#")
    config = make_config(broker, load_config({"mqtt": {"port": proxy.port}, "outbox": {"history_interval_s": 0.5}}))
    agent = run_load(config)
    sub.wait_for(EVENTS, lambda p: p["k"] >= 2)

    proxy.set_mode(CUT)
    cut_n = max(m.json["n"] for m in sub.on(LOAD))
    time.sleep(OUTAGE_S)  # the outage itself: 10 readings/s and 1 event/s go on meanwhile
    statuses = len(sub.on(STATUS))
    proxy.set_mode(PASS)
    birth = sub.wait_for(STATUS, online, after=statuses, timeout=10)
    history = sub.on(HISTORY_LOAD)
    latest_history_n = max(m.json["n"] for m in history)
    state = sub.wait_for(LOAD, lambda p: p["n"] > latest_history_n, after=len(sub.on(LOAD)) - 1)
    assert state.received_mono - birth.received_mono <= 2.0  # retained state current within 2 s
    reconnect_k = max(m.json["k"] for m in sub.on(EVENTS))
    sub.wait_for(EVENTS, lambda p: p["k"] >= reconnect_k + 2)  # live again
    assert agent.terminate() == 0

    queued = assert_nothing_lost(sub, tmp_path / "state")
    assert not queued  # the whole backlog went out
    ks = [m.json["k"] for m in sub.on(EVENTS)]
    assert sorted(set(ks)) == list(range(1, max(ks) + 1))  # 0 events lost
    assert strictly_increasing(first_arrivals(sub.on(EVENTS)))
    history = sub.on(HISTORY_LOAD)
    assert strictly_increasing(first_arrivals(history))
    assert len(history) - len(first_arrivals(history)) <= 20  # again: only what was in flight at the cut
    offline_n = sorted({m.json["n"] for m in history if m.json["n"] > cut_n + 5})
    assert OUTAGE_S * 2 * 0.6 <= len(offline_n) <= OUTAGE_S * 2 + 2  # one reading per 0.5 s, not 10 per second
    assert min(b - a for a, b in zip(offline_n, offline_n[1:], strict=False)) >= 4
    late = subscribe(LOAD)  # a dashboard connecting now sees the latest state, never a history value
    assert late.wait_for(LOAD).json["n"] >= state.json["n"]


# -- a half-open link --------------------------------------------------------------------------------
def test_black_holed_link_is_noticed_within_two_keepalives_and_nothing_unacked_is_deleted(
        broker, proxy, make_config, subscribe, run_load, tmp_path):
    keepalive_s = 5
    sub = subscribe(f"{BASE}/#")
    config = make_config(broker, load_config({"mqtt": {"port": proxy.port, "keepalive_s": keepalive_s}},
                                             events_per_s=2.0))
    agent = run_load(config)
    sub.wait_for(EVENTS, lambda p: p["k"] >= 2)
    proxy.set_mode(BLACKHOLE)
    started = time.monotonic()
    wait_until(lambda: "connection lost" in agent.log(), timeout=3 * keepalive_s, what="the dead link noticed")
    # paho pings after one keep-alive of silence and gives up one keep-alive later; its loop looks
    # once a second, hence the second of slack.
    assert time.monotonic() - started <= 2 * keepalive_s + 1.0
    assert proxy.swallowed_bytes > 0

    # Events handed to paho in the black hole never got a PUBACK: every one is still queued (with the
    # last ones that reached the broker just before, whose PUBACK the black hole swallowed).
    last_delivered_k = max(m.json["k"] for m in sub.on(EVENTS))
    rows, _, _ = outbox_rows(tmp_path / "state")
    queued_k = sorted(json.loads(p)["k"] for prio, p in rows.values() if prio == EVENT)
    assert queued_k and queued_k == list(range(queued_k[0], queued_k[-1] + 1))
    assert queued_k[0] <= last_delivered_k + 1
    assert len(queued_k) >= 2 * keepalive_s  # 2 events/s for the whole black-hole time

    proxy.set_mode(PASS)
    sub.wait_for(EVENTS, lambda p: p["k"] >= queued_k[-1] + 2, timeout=20)
    assert agent.terminate() == 0
    assert_nothing_lost(sub, tmp_path / "state")


# -- replay order, pacing, and live traffic during a replay ------------------------------------------
def test_reconnect_order_and_paced_replay_never_starves_live_events(
        broker, make_config, subscribe, run_load, tmp_path):
    backlog = prefill(tmp_path / "state", history=1500, events=30)
    sub = subscribe(f"{BASE}/#")
    config = make_config(broker, load_config({**FAST_HEALTH, "outbox": {"replay_rate": 500.0}}, events_per_s=4.0))
    agent = run_load(config)
    wait_until(lambda: len(sub.on(HISTORY_LOAD)) >= 1500, timeout=20, what="the whole replay")
    assert agent.terminate() == 0

    seq_messages = [m for m in sub.messages if b'"seq"' in m.raw]
    topics = [m.topic for m in seq_messages]
    first_history = topics.index(HISTORY_LOAD)
    # birth first, then current state, then the pending events in seq order, then history in seq order
    assert sub.messages[0].topic == STATUS and online(sub.messages[0].json)
    assert topics[0] in (LOAD, HEALTH)
    backlog_events = [m.json["seq"] for m in seq_messages if m.topic == EVENTS and m.json["kind"] == "backlog"]
    assert len(backlog_events) == 30 and strictly_increasing(backlog_events)
    assert max(i for i, m in enumerate(seq_messages) if m.json.get("kind") == "backlog") < first_history
    history = sub.on(HISTORY_LOAD)
    assert strictly_increasing([m.json["seq"] for m in history])

    # paced: 1500 messages at 500/s take about 3 s
    span = history[-1].received_mono - history[0].received_mono
    assert 1499 / span <= 500 * 1.25, f"replayed at {1499 / span:.0f}/s"
    # live events during the replay each reached the broker within 1 s
    during = [m for m in sub.on(EVENTS) if m.json["kind"] == "load_tick"
              and history[0].received_mono <= m.received_mono <= history[-1].received_mono]
    assert len(during) >= 8
    assert max(arrival_delay_s(m) for m in during) < 1.0
    rates = [m.json["replay_rate"] for m in sub.on(HEALTH)
             if history[0].received_mono <= m.received_mono <= history[-1].received_mono + 1]
    assert rates and max(rates) > 0
    assert_nothing_lost(sub, tmp_path / "state")
    assert backlog <= max(delivered(sub))


# -- SIGKILL at any moment -------------------------------------------------------------------------
@pytest.mark.slow
def test_crash_loop_of_20_sigkills_loses_nothing_and_never_reuses_a_seq(
        broker, make_config, subscribe, run_load, tmp_path):
    inflight = 10
    state_dir = tmp_path / "state"
    prefill(state_dir, history=2500, events=50)  # a backlog, so kills land during the replay too
    sub = subscribe(f"{BASE}/#")
    config = make_config(broker, load_config({"mqtt": {"inflight": inflight}, "outbox": {"replay_rate": 1500.0,
                                                                                        "flush_interval_s": 0.2}},
                                             events_per_s=5.0))
    kills = 20
    moments = random.Random(20).sample([0.25 + 0.05 * i for i in range(30)], kills)
    for moment in moments:
        agent = run_load(config)
        time.sleep(moment)  # the moment of the kill is the scenario: at start, mid-commit, mid-replay
        agent.kill()
        assert outbox_rows(state_dir)  # integrity_check after every kill
    _, before_final, _ = outbox_rows(state_dir)
    agent = run_load(config)
    wait_until(lambda: not [seq for seq in outbox_rows(state_dir)[0] if seq <= before_final],
               timeout=30, what="everything from before the last start delivered")
    assert agent.terminate() == 0

    assert_nothing_lost(sub, state_dir)
    copies = Counter(m.json["seq"] for m in sub.messages if b'"seq"' in m.raw)
    duplicates = sum(n - 1 for n in copies.values() if n > 1)
    assert duplicates <= kills * inflight  # only what was in flight (or acknowledged, unrecorded) at a kill
    # within each connection, history goes out in seq order; some connection died mid-replay
    segments: list[list[int]] = [[]]
    for message in sub.messages:
        if message.topic == STATUS and online(message.json):
            segments.append([])
        elif message.topic == HISTORY_LOAD:
            segments[-1].append(message.json["seq"])
    unordered = [[(a, b) for a, b in zip(seg, seg[1:], strict=False) if a >= b] for seg in segments]
    assert not any(unordered), (unordered, [len(seg) for seg in segments])
    assert sum(1 for segment in segments if segment) >= 2


# -- hostile disks ---------------------------------------------------------------------------------
def test_full_disk_is_a_health_error_live_publishing_goes_on_and_it_recovers(
        broker, make_config, subscribe, run_load, tmp_path):
    sub = subscribe(f"{BASE}/#")
    config = make_config(broker, load_config({**FAST_HEALTH, "outbox": {"flush_interval_s": 0.1}}, events_per_s=2.0))
    # RLIMIT_FSIZE: no file of this process may grow past 160 kB, as if the disk were full
    agent = run_load(config, fsize_limit=160 * 1024)
    wait_until(lambda: "cannot write the outbox" in agent.log(), timeout=30, what="the write failure")
    assert "kept in memory" in agent.log()
    health = sub.wait_for(HEALTH, lambda p: p["outbox_error"] and "kept in memory" in p["outbox_error"]).json
    assert str(tmp_path / "state" / "outbox.db") in health["outbox_error"]
    k = max(m.json["k"] for m in sub.on(EVENTS))
    sub.wait_for(EVENTS, lambda p: p["k"] >= k + 4)  # live publishing goes on

    resource.prlimit(agent.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    sub.wait_for(HEALTH, lambda p: p["outbox_error"] is None, after=len(sub.on(HEALTH)), timeout=30)
    assert "writable again" in agent.log()
    assert agent.terminate() == 0
    assert_nothing_lost(sub, tmp_path / "state")


@contextlib.contextmanager
def read_only(folder: Path):
    """Make `folder` read-only: by its mode, or for root (whom modes do not stop) by a read-only bind
    mount, as when the kernel remounts a failing SD card read-only."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root and cannot bind-mount read-only: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_read_only_state_dir_is_a_health_error_and_live_publishing_goes_on(
        broker, make_config, subscribe, run_load, tmp_path):
    state_dir = tmp_path / "state"
    queued = prefill(state_dir, history=0, events=5)  # from before the file system went read-only
    sub = subscribe(f"{BASE}/#")
    config = make_config(broker, load_config(FAST_HEALTH))
    with read_only(state_dir):
        agent = run_load(config)
        health = sub.wait_for(HEALTH, lambda p: p["outbox_error"] is not None).json
        assert "in memory" in health["outbox_error"] and str(state_dir) in health["outbox_error"]
        wait_until(lambda: len([m for m in sub.on(EVENTS) if m.json["kind"] == "backlog"]) == 5,
                   what="the events queued before")
        tick = sub.wait_for(EVENTS, lambda p: p["kind"] == "load_tick" and p["k"] >= 3).json
        assert tick["seq"] > queued  # the seq high-water mark was read from the read-only outbox
        assert agent.alive()
        assert agent.terminate() == 0
    assert "cannot open the outbox" in agent.log() and "Traceback" not in agent.log()


def test_state_dir_on_tmpfs_is_flagged(broker, make_config, subscribe, run_load):
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        sub = subscribe(HEALTH)
        config = make_config(broker, {**FAST_HEALTH, "box": {"state_dir": folder}})
        agent = run_load(config)
        health = sub.wait_for(HEALTH, lambda p: p["outbox_error"] is not None).json
        assert "tmpfs" in health["outbox_error"] and "lost at power-off" in health["outbox_error"]
        assert "lost at power-off" in agent.log()
        agent.terminate()




# -- the wall clock jumps ----------------------------------------------------------------------------
def test_wall_clock_jumps_of_years_while_offline_delete_and_reorder_nothing(
        broker, proxy, make_config, subscribe, monkeypatch, tmp_path):
    # In-process, so the test can move the agent's wall clock (a Pi without RTC boots in 1970 or
    # jumps when NTP or GPS time arrives); the broker, the link and the outbox file are real.
    monkeypatch.setitem(REGISTRY, "load", LOAD_DRIVER)
    sub = subscribe(f"{BASE}/#")
    config = load(make_config(broker, load_config({"mqtt": {"port": proxy.port},
                                                   "outbox": {"history_interval_s": 0.2}}, events_per_s=5.0)))
    agents: list[Agent] = []

    def run() -> None:  # the outbox belongs to the thread that opens it
        agents.append(Agent(config))
        agents[0].run()

    runner = threading.Thread(target=run, name="agent")
    runner.start()
    try:
        sub.wait_for(EVENTS, lambda p: p["k"] >= 2)
        agent = agents[0]
        driver = next(d for d in agent.drivers if d.ctx.name == "load")
        proxy.set_mode(CUT)
        real_time = time.time
        for years in (30, -30, 0):
            monkeypatch.setattr(time, "time", lambda years=years: real_time() + years * 365.25 * 86400)
            emitted = driver.events
            wait_until(lambda emitted=emitted: driver.events >= emitted + 5, what="events while offline")
        proxy.set_mode(PASS)
        last = driver.events
        sub.wait_for(EVENTS, lambda p: p["k"] >= last, timeout=20)
    finally:
        if agents:
            agents[0].request_stop()
        runner.join(timeout=15)
    assert not runner.is_alive()
    assert_nothing_lost(sub, tmp_path / "state")
    years = {m.json["ts"][:4] for m in sub.on(EVENTS)}
    assert len(years) >= 3  # the jumps happened: ts follows the wall clock...
    assert strictly_increasing(first_arrivals(sub.on(EVENTS)))  # ...order and retention do not
    assert strictly_increasing(first_arrivals(sub.on(HISTORY_LOAD)))
    ks = [m.json["k"] for m in sub.on(EVENTS)]
    assert sorted(set(ks)) == list(range(1, max(ks) + 1))
