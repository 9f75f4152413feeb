"""The outbox's own rules: seq never reused, commit before delivery, delivery order."""

import json
import sqlite3
import stat
import time
from pathlib import Path

from agent.outbox import EVENT, HISTORY, LIVE, Outbox, volatile_reason_in


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


def test_after_a_restart_only_the_newest_undelivered_state_of_a_stream_goes_to_its_state_topic(tmp_path):
    # In flight at a SIGKILL: water at 10 l and then 12 l (both perhaps delivered, their PUBACKs not yet
    # committed). Re-sent as state in seq order after the restart, the retained topic would end on 12 l
    # only after showing 10 l again; the older one goes out as history instead.
    box = Outbox(tmp_path / "outbox.db")
    for stream, total_l in (("water", 10), ("gps", None), ("water", 12)):
        box.accept(LIVE, stream, {"ts": "t", "total_l": total_l})
    box.commit()
    box._db.close()  # no orderly close: the process died

    again = Outbox(tmp_path / "outbox.db")
    taken = [(m.prio, m.stream, json.loads(m.payload)["total_l"]) for m in again.take(10, set())]
    assert taken == [(LIVE, "gps", None), (LIVE, "water", 12), (HISTORY, "water", 10)]
    assert again.depth == 3  # nothing dropped


def test_database_file_is_private(tmp_path):
    Outbox(tmp_path / "outbox.db").close()
    assert stat.S_IMODE((tmp_path / "outbox.db").stat().st_mode) == 0o600


# -- the cap: oldest history first, events last, every drop counted ----------------------------------
def _sizes_on_disk(path):
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if not p.name.endswith("-shm"))


def test_full_outbox_drops_oldest_history_first_and_counts_it(tmp_path):
    path = tmp_path / "outbox.db"
    box = Outbox(path, max_bytes=2**20)
    events = [box.accept(EVENT, "events", {"kind": "door_opened", "ts": "t"}) for _ in range(50)]
    history = []
    for _ in range(12000):  # ~2.5 MB of history into 1 MB
        history.append(box.accept(HISTORY, "gps", {"lat": 12.3456789, "lon": 45.6789012, "pad": "x" * 150}))
        if len(history) % 100 == 0:
            box.commit()
    box.commit()
    kept = {m.seq for m in box.take(100000, set())}
    assert set(events) <= kept  # not one event goes while there is history
    dropped = [s for s in history if s not in kept]
    assert dropped and dropped == history[: len(dropped)]  # the oldest history, none from the middle
    assert box.dropped == len(dropped) == box.last_seq - len(kept)  # every seq gap is counted
    assert _sizes_on_disk(path) <= 2**20
    assert box.bytes <= 2**20
    box.close()
    again = Outbox(path, max_bytes=2**20)  # the count survives a restart, so old gaps stay explained
    assert again.dropped == len(dropped)


def test_a_full_outbox_spares_what_is_in_flight_so_the_next_take_still_finds_new_rows(tmp_path):
    box = Outbox(tmp_path / "outbox.db", max_bytes=2**20)
    oldest = [box.accept(HISTORY, "gps", {"pad": "x" * 150}) for _ in range(20)]
    box.commit()
    in_flight = {m.seq for m in box.take(20, set())}
    assert in_flight == set(oldest)
    for _ in range(60):  # ~1.5 MB more history: the oldest rows would go first, but they are in flight
        for _ in range(100):
            box.accept(HISTORY, "gps", {"pad": "x" * 150})
        box.commit()
    assert box.dropped > 0
    assert in_flight <= {m.seq for m in box.take(100000, set())}  # the next oldest went instead
    live = box.accept(LIVE, "gps", {"lat": 1.0})
    box.commit()
    # The in-flight rows are all still there, so skipping them leaves room to see the new live reading.
    assert [m.seq for m in box.take(1, in_flight)] == [live]
    for seq in in_flight:
        box.delivered(seq)
    box.commit()
    assert not in_flight & {m.seq for m in box.take(100000, set())}


def test_events_go_last_oldest_first(tmp_path):
    box = Outbox(tmp_path / "outbox.db", max_bytes=2**20)
    first = box.accept(HISTORY, "gps", {"pad": "x" * 200})
    events = [box.accept(EVENT, "events", {"kind": "door_opened", "pad": "y" * 600}) for _ in range(2500)]
    kept = {m.seq for m in box.take(100000, set())}
    assert first not in kept
    lost = [s for s in events if s not in kept]
    assert lost and lost == events[: len(lost)]
    assert box.dropped == len(lost) + 1
    assert sqlite3.connect(tmp_path / "outbox.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- order and age by seq and the monotonic clock, never the wall clock ------------------------------
def test_a_wall_clock_jump_of_years_deletes_and_reorders_nothing(tmp_path, monkeypatch):
    box = Outbox(tmp_path / "outbox.db", max_bytes=2**20)
    real_time = time.time
    seqs = []
    for offset_years in (0, 30, -30, 0):
        monkeypatch.setattr(time, "time", lambda o=offset_years: real_time() + o * 365 * 86400)
        seqs.append(box.accept(EVENT, "events", {"kind": "door_opened"}))
        seqs.append(box.accept(HISTORY, "gps", {"n": offset_years}))
        box.commit()
        age = box.oldest_age_s()
        assert age is not None and 0 <= age < 60
    assert [m.seq for m in box.take(100, set())] == sorted(s for s in seqs if s % 2) + sorted(s for s in seqs if not s % 2)
    assert box.dropped == 0 and box.depth == 8


def test_oldest_age_follows_the_monotonic_clock(tmp_path, monkeypatch):
    box = Outbox(tmp_path / "outbox.db")
    assert box.oldest_age_s() is None
    box.accept(EVENT, "events", {"kind": "x"})
    now = time.monotonic()
    assert 0 <= box.oldest_age_s(now + 100) - 100 < 5
    box.delivered(1)
    box.commit()
    assert box.oldest_age_s() is None


def test_nothing_undelivered_has_no_oldest_age_before_the_deletion_is_committed(tmp_path):
    # A reading waits for the next grouped commit; delivered before it, health must not show its age
    # growing while the outbox is empty.
    box = Outbox(tmp_path / "outbox.db")
    seq = box.accept(LIVE, "gps", {"ts": "t"})
    box.commit()
    box.delivered(seq)
    assert box.depth == 0 and box.oldest_age_s(time.monotonic() + 180) is None


def test_wal_and_shm_files_are_private_too(tmp_path):
    path = tmp_path / "outbox.db"
    path.touch(mode=0o644)
    box = Outbox(path)
    box.accept(EVENT, "events", {"kind": "x"})
    for file in tmp_path.glob("outbox.db*"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    box.close()


# -- hostile disks -----------------------------------------------------------------------------------
def test_unwritable_database_carries_on_in_memory_from_what_it_can_read(tmp_path):
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    box.accept(EVENT, "events", {"kind": "door_opened"})
    box.close()
    # The path is now a file inside a "folder" that is a file: nothing can be created there, but a
    # database we cannot open at all must not stop the agent either.
    blocked = Outbox(tmp_path / "outbox.db" / "outbox.db")
    assert not blocked.durable and "in memory" in blocked.error
    assert blocked.accept(EVENT, "events", {"kind": "x"}) == 1
    blocked.commit()
    assert [m.seq for m in blocked.take(10, set())] == [1]


def test_a_write_failure_moves_to_memory_keeps_everything_and_comes_back(tmp_path):
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    box.accept(EVENT, "events", {"kind": "a"})
    box._db.execute("PRAGMA query_only=1")  # every write fails from now on, as on a read-only remount
    box.accept(EVENT, "events", {"kind": "b"})
    assert not box.durable and "cannot write the outbox" in box.error
    box.accept(HISTORY, "gps", {"n": 1})
    box.commit()
    assert [m.seq for m in box.take(10, set())] == [1, 2, 3]
    assert box.retry_disk() and box.durable and box.error is None
    box.close()
    again = Outbox(path)
    assert [m.seq for m in again.take(10, set())] == [1, 2, 3] and again.last_seq == 3


def test_volatile_state_dir_is_recognised():
    tmpfs = "25 24 0:23 / /run rw,relatime - tmpfs tmpfs rw,size=100k\n1 0 8:2 / / rw - ext4 /dev/sda2 rw\n"
    assert "tmpfs" in volatile_reason_in(tmpfs, Path("/run/boxtel/state"))
    assert volatile_reason_in(tmpfs, Path("/var/lib/boxtel")) is None
    pi_overlay = (
        "1 0 0:30 / / rw - overlay overlayroot rw,lowerdir=/media/root-ro,upperdir=/media/root-rw/overlay\n"
        "2 1 0:31 / /media/root-rw rw - tmpfs tmpfs-root rw\n"
    )
    assert "overlay kept in RAM" in volatile_reason_in(pi_overlay, Path("/var/lib/boxtel"))
    docker = "1 0 0:30 / / rw - overlay overlay rw,lowerdir=/a,upperdir=/var/lib/docker/overlay2/x/diff\n"
    assert volatile_reason_in(docker, Path("/var/lib/boxtel")) is None


def test_agent_outbox_figures_are_safe_to_read_from_another_thread(tmp_path):
    import threading

    from agent.config import load
    from agent.runtime import Agent
    from tests.support import toml_dumps

    config = tmp_path / "agent.toml"
    config.write_text(toml_dumps({"box": {"id": "test-001", "state_dir": str(tmp_path / "state")},
                                  "mqtt": {"host": "127.0.0.1", "port": 1}}))
    agent = Agent(load(config))
    agent.outbox.accept(EVENT, "events", {"kind": "door_opened"})
    mine = agent.outbox_fields()
    assert mine["outbox_depth"] == 1 and mine["outbox_bytes"] > 0 and mine["dropped"] == 0
    assert mine["outbox_oldest_s"] is not None and mine["replay_rate"] == 0.0 and mine["outbox_error"] is None
    seen = []
    reader = threading.Thread(target=lambda: seen.append(agent.snapshot()["outbox_depth"]))
    reader.start()
    reader.join()
    assert seen == [1]
    agent.outbox.close()


def test_seq_high_water_mark_survives_every_kind_of_commit(tmp_path):
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    for _ in range(3):
        box.accept(LIVE, "gps", {"n": 1})
    box.commit()
    for seq in (1, 2, 3):
        box.delivered(seq)
    box.accept(LIVE, "gps", {"n": 2})
    box.commit()  # adds 4, deletes 1-3
    box._db.close()  # a crash: no close(), no final commit
    box = Outbox(path)
    assert box.last_seq == 4
    box.delivered(4)
    box.commit()  # deletes the newest row: the mark must be kept elsewhere
    box._db.close()
    assert Outbox(path).accept(EVENT, "events", {"kind": "x"}) == 5


def test_after_a_reboot_queued_messages_count_their_age_from_the_boot(tmp_path):
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    box.accept(EVENT, "events", {"kind": "x"})
    # as if accepted in an earlier boot, whose monotonic clock had run far longer than this one's
    with box._db:
        box._db.execute("UPDATE outbox SET mono = ?", (time.monotonic() + 10**7,))
        box._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'boot'")
    box.close()
    again = Outbox(path)
    assert 0 < again.oldest_age_s() <= time.monotonic() + 1  # not negative, not from the old boot
    again.accept(EVENT, "events", {"kind": "y"})
    again.delivered(1)
    again.commit()
    assert again.oldest_age_s() < 5  # a message of this boot keeps its own age


def test_replay_pacer_keeps_slots_for_live_traffic_and_keeps_the_rate():
    from agent.replay import ReplayPacer

    unlimited = ReplayPacer(0.0, 20)
    assert unlimited.allowance(0.0, 0) == 15 and unlimited.allowance(0.0, 15) == 0  # 5 slots never history
    paced = ReplayPacer(100.0, 20)
    sent = 0
    for step in range(1000):  # 10 s in steps of 10 ms
        for _ in range(paced.allowance(step * 0.01, 0)):
            paced.sent()
            sent += 1
    assert 990 <= sent <= 1010
    assert paced.next_at() is not None
    for second in range(10):
        for _ in range(50):
            paced.acknowledged(100.0 + second)
    assert paced.rate(109.5) == 50.0 and paced.rate(130.0) == 0.0
