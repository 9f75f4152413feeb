"""The outbox's own rules: seq never reused, commit before delivery, delivery order."""

import json
import sqlite3
import stat

from agent.outbox import EVENT, HISTORY, LIVE, Outbox


def test_seq_survives_reopen_and_only_grows(tmp_path):
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    seqs = [box.accept(LIVE, "gps", {"ts": "t"}) for _ in range(3)]
    box.commit()
    box.close()
    again = Outbox(path)
    assert again.accept(EVENT, "events", {"ts": "t"}) == seqs[-1] + 1


def test_uncommitted_readings_are_not_deliverable(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    box.accept(LIVE, "gps", {"ts": "t"})
    assert box.take(10, set()) == []
    box.commit()
    assert [m.stream for m in box.take(10, set())] == ["gps"]


def test_event_is_committed_on_accept_with_pending_readings(tmp_path):
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    box.accept(LIVE, "gps", {"ts": "t"})
    box.accept(EVENT, "events", {"kind": "door_opened", "ts": "t"})
    # a second connection sees both without any further commit
    rows = sqlite3.connect(path).execute("SELECT seq, prio FROM outbox ORDER BY seq").fetchall()
    assert rows == [(1, LIVE), (2, EVENT)]


def test_delivery_order_live_then_events_then_history(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    box.accept(HISTORY, "gps", {"ts": "a"})
    box.accept(EVENT, "events", {"ts": "b"})
    box.accept(LIVE, "gps", {"ts": "c"})
    box.accept(HISTORY, "water", {"ts": "d"})
    box.commit()
    taken = box.take(10, set())
    assert [(m.prio, m.seq) for m in taken] == [(LIVE, 3), (EVENT, 2), (HISTORY, 1), (HISTORY, 4)]
    assert taken[0].topic("boxtel/b") == "boxtel/b/gps" and taken[0].retain
    assert taken[2].topic("boxtel/b") == "boxtel/b/history/gps" and not taken[2].retain
    assert json.loads(taken[1].payload)["seq"] == 2


def test_delivered_is_excluded_then_deleted(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    for _ in range(3):
        box.accept(EVENT, "events", {"ts": "t"})
    box.delivered(1)
    assert [m.seq for m in box.take(10, {2})] == [3]
    assert box.depth == 2
    box.commit()
    assert [m.seq for m in box.take(10, set())] == [2, 3]


def test_demote_live_turns_undelivered_state_into_history(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    box.accept(LIVE, "gps", {"ts": "t"})
    box.demote_live()
    assert [m.prio for m in box.take(10, set())] == [HISTORY]


def test_database_file_is_private(tmp_path):
    Outbox(tmp_path / "outbox.db").close()
    assert stat.S_IMODE((tmp_path / "outbox.db").stat().st_mode) == 0o600
