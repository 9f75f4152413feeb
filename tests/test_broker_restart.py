"""The outbox against a real broker restart: mosquitto with persistence (as in production) restarted while
the agent is killed; and an outbox that overflows while the box's link is cut -- its files within `max_mb`,
and every seq gap a subscriber sees counted in `health.dropped`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agent.outbox import EVENT
from agent.outbox import HISTORY as HISTORY_PRIO
from tests import test_outbox_faults
from tests.loadgen import load_config
from tests.proxy import CUT, PASS
from tests.support import Subscriber, wait_until
from tests.test_outbox_faults import (
    BASE,
    EVENTS,
    FAST_HEALTH,
    HEALTH,
    LOAD,
    STATUS,
    assert_nothing_lost,
    delivered,
    online,
    outbox_rows,
)

run_load = test_outbox_faults.run_load  # fixtures: `boxtel run` with the [load] driver, a link proxy
proxy = test_outbox_faults.proxy


def queued_events(state_dir: Path) -> int:
    rows, _, _ = outbox_rows(state_dir)
    return sum(1 for prio, _ in rows.values() if prio == EVENT)


def test_broker_restart_with_persistence_and_a_sigkill_while_it_is_down_lose_nothing(
        make_broker, make_config, run_load, tmp_path):
    broker = make_broker(persistence=True)
    state_dir = tmp_path / "state"
    # A dashboard with a persistent session: the broker keeps what comes while it is away, across its restart.
    dashboard = Subscriber(broker.port, f"{BASE}/#", client_id="dashboard", session_expiry_s=600)
    try:
        config = make_config(broker, load_config({"outbox": {"history_interval_s": 0.5}}, events_per_s=4.0))
        agent = run_load(config)
        birth = dashboard.wait_for(STATUS, online).json
        dashboard.wait_for(EVENTS, lambda p: p["k"] >= 3)

        broker.stop()  # mosquitto saves retained messages and sessions as it stops
        assert (broker.workdir / "mosquitto.db").exists()
        wait_until(lambda: queued_events(state_dir) >= 8, timeout=20, what="events accepted while the broker is down")
        agent.kill()  # and the agent dies while the broker is down
        _, killed_at_seq, _ = outbox_rows(state_dir)

        broker.start()  # same port, same persistence file
        late = Subscriber(broker.port, STATUS)
        try:
            # what the broker kept: the status as it was when it stopped (the will it sent then)
            kept = late.wait_for(STATUS, timeout=5)
            assert kept.retain and kept.json["session"] == birth["session"] and kept.json["state"] == "offline"
        finally:
            late.close()

        again = run_load(config)
        wait_until(lambda: max(delivered(dashboard), default=0) > killed_at_seq + 20, timeout=30,
                   what="the backlog and live traffic after the restart")
        assert again.terminate() == 0
        assert not assert_nothing_lost(dashboard, state_dir)  # every seq delivered, none reused, none queued
        ks = sorted({m.json["k"] for m in dashboard.on(EVENTS) if m.json.get("pid") == agent.pid})
        assert ks == list(range(1, ks[-1] + 1)) and len(ks) >= 8 + 3  # the killed agent's events, all of them
        sessions = [m.json["session"] for m in dashboard.on(STATUS) if online(m.json)]
        assert sessions == sorted(sessions) and sessions[-1] > birth["session"]
        retained = Subscriber(broker.port, LOAD)
        try:
            assert retained.wait_for(LOAD).retain  # state kept by the broker, current again
        finally:
            retained.close()
    finally:
        dashboard.close()


def test_an_outbox_full_during_an_outage_stays_within_max_mb_and_each_gap_is_counted_dropped(
        broker, proxy, make_config, subscribe, run_load, tmp_path):
    max_mb = 1.0
    INFLIGHT = 5  # noqa: N806
    state_dir = tmp_path / "state"
    sub = subscribe(f"{BASE}/#")
    config = make_config(broker, load_config(
        {**FAST_HEALTH, "mqtt": {"port": proxy.port, "inflight": INFLIGHT},
         "outbox": {"max_mb": max_mb, "history_interval_s": 0.0, "flush_interval_s": 0.2}},
        readings_per_s=600.0, events_per_s=2.0))
    agent = run_load(config)
    sub.wait_for(EVENTS, lambda p: p["k"] >= 2)
    proxy.set_mode(CUT)  # the box's link goes; the subscriber stays connected

    sizes: list[int] = []
    parts: dict[str, int] = {}

    def on_disk() -> int:  # the database and its WAL (the -shm index is 32 kB of shared memory)
        files = {p.name: p.stat().st_size for p in state_dir.glob("outbox.db*") if p.exists()}
        for name, size in files.items():
            parts[name] = max(parts.get(name, 0), size)
        sizes.append(files.get("outbox.db", 0) + files.get("outbox.db-wal", 0))
        return sizes[-1]

    def dropped() -> int:  # from the log: a reader of the database would hold its WAL from checkpoints
        on_disk()
        counts = re.findall(r"; (\d+) dropped in all", agent.log())
        return int(counts[-1]) if counts else 0

    wait_until(lambda: dropped() >= 500, timeout=60, what="the outbox full, dropping its oldest history")
    assert max(sizes) <= max_mb * 2**20, f"db+wal reached {max(sizes)} bytes ({parts})"
    proxy.set_mode(PASS)
    wait_until(lambda: not [r for r in outbox_rows(state_dir)[0].values() if r[0] == HISTORY_PRIO], timeout=60,
               what="the backlog delivered")
    total_dropped = outbox_rows(state_dir)[2]
    # the latest health the box sent says how many it dropped: exactly the seqs a subscriber never got
    wait_until(lambda: sub.on(HEALTH) and sub.on(HEALTH)[-1].json["dropped"] == total_dropped, timeout=10,
               what=f"a health message with dropped = {total_dropped}")
    assert agent.terminate() == 0
    seen = delivered(sub)
    queued, last_seq, final_dropped = outbox_rows(state_dir)
    gaps = set(range(1, last_seq + 1)) - set(seen) - set(queued)
    assert final_dropped == total_dropped and total_dropped > 0
    # Each gap is counted. The count may also hold messages in flight at the cut: the broker may have
    # had them without its PUBACK getting back, so the box cannot tell, and they were dropped later.
    assert len(gaps) <= total_dropped <= len(gaps) + INFLIGHT
    assert max(sizes) <= max_mb * 2**20
    events = [json.loads(next(iter(p))) for s, p in seen.items() if b'"load_tick"' in next(iter(p))]
    ks = sorted(e["k"] for e in events)
    assert ks == list(range(1, ks[-1] + 1))  # history went first: no event was dropped
