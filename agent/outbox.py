"""The outbox: every message with a `seq` lives here from acceptance until the broker acknowledges it.

SQLite in WAL mode in the state dir, file mode 0600. The outbox, not paho's in-memory queue, is the
store: the publisher is handed at most the in-flight window, and a row is deleted only on a successful
PUBACK.

- `seq` is assigned on acceptance and the high-water mark is committed in the same transaction as the
  rows, so a seq is never reused after a crash. Nothing is handed to the publisher before its commit.
- Events commit at once with `synchronous=FULL`; readings wait for the next grouped commit (at most one
  per `flush_interval_s`) with `synchronous=NORMAL`, sparing the SD card.
- Priorities give the reconnect order: live state, then events, then history, each in seq order.
- Bounded: the database may not grow past `max_bytes` (SQLite's `max_page_count`, with room kept for
  the WAL). When full, the oldest history goes first, then undelivered live state, events last. Every
  drop is counted in `meta.dropped`, committed with the deletion, so a seq gap is explained after a
  restart too. Age and order use `seq` and the monotonic clock only, never the wall clock.
- Counters (`total_l`, `run_hours`, `reconnects`: the `counters` given per stream) never go back: the
  highest value accepted is committed with the rows that carry it -- durably (fsync), as a subscriber
  may see it as soon as it is committed -- and `counters` gives it back after a restart or power loss,
  for the driver to resume from.
- A disk that fails (full, read-only, I/O errors) does not stop the agent: the outbox carries on in
  memory (bounded, not durable), reports why in `error`, and tries the disk again now and then.

Only the core's thread touches an Outbox.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger("boxtel.outbox")

LIVE = 0  # a reading accepted while online: goes to its retained state topic
EVENT = 1
HISTORY = 2  # a reading buffered while offline: replayed on history/<stream>

DEFAULT_MAX_BYTES = 64 * 2**20
MEMORY_MAX_BYTES = 8 * 2**20  # while the disk fails: RAM is scarcer than SD card space on a Pi
_DROP_ORDER = (HISTORY, LIVE, EVENT)  # when full: readings (oldest first) before any event
_MIN_DB_PAGES = 32
_PAGE_SIZE = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    prio INTEGER NOT NULL,
    stream TEXT NOT NULL,
    payload TEXT NOT NULL,
    mono REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (prio, seq);
CREATE TABLE IF NOT EXISTS counters (stream TEXT NOT NULL, field TEXT NOT NULL, value REAL NOT NULL,
                                     PRIMARY KEY (stream, field));
"""


class Message(NamedTuple):  # a tuple: taking 100 000 of them in a replay stays cheap
    seq: int
    prio: int
    stream: str  # "gps", "locker/armory-1", ... or "events"
    payload: str  # JSON, with ts and seq

    def topic(self, base: str) -> str:
        if self.prio == HISTORY:
            return f"{base}/history/{self.stream}"
        return f"{base}/{self.stream}"

    @property
    def retain(self) -> bool:
        return self.prio == LIVE


class OutboxError(Exception):
    pass


class Outbox:
    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 counters: dict[str, tuple[str, ...]] | None = None):
        self.path = path
        self._counter_fields = counters or {}  # stream -> its fields that only grow
        self._counters_pending: dict[tuple[str, str], float] = {}
        self.max_bytes = max_bytes
        self.error: str | None = None  # why the outbox is not durable now (health shows it)
        self.last_seq = 0
        self.dropped = 0
        self._pending: list[tuple[int, int, str, str, float]] = []  # accepted, not yet committed
        self._acked: set[int] = set()  # delivered, deletion not yet committed
        # Handed out by the last take() or skipped by it (in flight, refused): trimming spares them, so
        # every seq a caller skips is still a row -- take() counts on it to spare an idle box's query.
        self._in_use: set[int] = set()
        self._trim_due = False  # rows were added since the last `_trim()`
        self._upkeep_due = False  # a commit left `upkeep()` to its caller
        self._synchronous: tuple[sqlite3.Connection, str] | None = None  # what the connection is set to
        self._page_size_of: tuple[sqlite3.Connection, int] | None = None  # fixed once the file exists
        self._volatile = volatile_reason(path.parent)
        self._holds_file = True  # the memory copy holds everything the file held (after a disk failure)
        try:
            self._db = _open_file(path, max_bytes)
            self._durable = True
        except OutboxError as err:
            self._db, self._holds_file = _read_only_copy(path, max_bytes)
            self._durable = False
            self._fail(f"{err}; the outbox is kept in memory, not durable")
        newest = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0] or 0
        self.last_seq = max(self._meta("seq"), newest)
        self.dropped = self._meta("dropped")
        # (stream, field) -> the highest value accepted: no subscriber saw more
        self.counters: dict[tuple[str, str], float] = {
            (stream, field): value for stream, field, value in self._db.execute("SELECT * FROM counters")}
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        if self._volatile and self.error is None:
            self.error = self._volatile
            log.warning("%s", self._volatile)
        self._boot_seq = 0
        if self._durable:
            self._note_boot()
        self._demote_superseded_live()
        self._oldest_mono: float | None = None
        self._bytes_in_use = 0
        self._refresh_figures()

    @property
    def durable(self) -> bool:
        return self._durable

    # -- accepting ---------------------------------------------------------------------------------
    def accept(self, prio: int, stream: str, payload: dict[str, Any], *, upkeep: bool = True) -> int:
        """Assign the next seq and queue the message; events are committed before this returns.
        `upkeep=False`: the caller runs `upkeep()` itself once the event is on its way (latency)."""
        self.last_seq += 1
        seq = self.last_seq
        body = json.dumps({**payload, "seq": seq}, separators=(",", ":"), allow_nan=False)
        self._pending.append((seq, prio, stream, body, time.monotonic()))
        for field in self._counter_fields.get(stream, ()):
            value = payload.get(field)
            if type(value) in (int, float) and math.isfinite(value) and \
                    value > self.counters.get((stream, field), -math.inf):
                self.counters[(stream, field)] = self._counters_pending[(stream, field)] = value
        if prio == EVENT:
            self.commit(durable=True, upkeep=upkeep)
        return seq

    @property
    def unsaved_acks(self) -> int:
        return len(self._acked)

    def commit(self, *, durable: bool = False, upkeep: bool = True) -> None:
        """Write pending messages and deletions in one transaction. `durable`: fsync (events).
        `upkeep=False` leaves trimming and the figures to the caller's `upkeep()`."""
        if not self._pending and not self._acked:
            if upkeep and self._upkeep_due:
                self.upkeep()
            return
        pending, acked = list(self._pending), list(self._acked)
        counters = [(stream, field, value) for (stream, field), value in self._counters_pending.items()]
        durable = durable or bool(counters)  # published once committed: a power cut must not take it back
        deleted = 0

        def write(db: sqlite3.Connection) -> None:
            nonlocal deleted
            self._set_synchronous(db, "FULL" if durable else "NORMAL")
            with db:
                if counters:
                    db.executemany("INSERT OR REPLACE INTO counters (stream, field, value) VALUES (?,?,?)", counters)
                if pending:
                    db.executemany(
                        "INSERT OR REPLACE INTO outbox (seq, prio, stream, payload, mono) VALUES (?,?,?,?,?)", pending
                    )
                if acked:
                    deleted = db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in acked]).rowcount
                    if not pending:
                        # The high-water mark is max(meta.seq, the newest row): a commit that adds rows
                        # holds it in its newest row (acknowledged rows are always older), so only a
                        # commit that just deletes writes it -- one page less per grouped commit.
                        _set_meta(db, "seq", self.last_seq)

        self._write(write, needs_pages=sum(len(row[3]) for row in pending) // self._page_size() + 1)
        self._count += len(pending) - deleted
        self._pending.clear()
        self._acked.clear()
        self._counters_pending.clear()
        self._trim_due |= bool(pending)
        self._upkeep_due = True
        if upkeep:
            self.upkeep()

    def upkeep(self) -> None:
        """After a commit: keep the file under its cap and refresh the figures diagnostics read."""
        self._upkeep_due = False
        if self._trim_due:
            self._trim_due = False
            try:
                self._trim()
            except sqlite3.Error as err:
                self._on_write_error(err)
        self._refresh_figures()

    # -- delivering --------------------------------------------------------------------------------
    def take(self, limit: int, exclude: set[int], history_limit: int | None = None) -> list[Message]:
        """Up to `limit` committed messages in delivery order, skipping those in `exclude`; of them at
        most `history_limit` history messages (None: no separate limit)."""
        skip = exclude | self._acked
        if limit <= 0 or self._count <= len(skip):
            return []  # every committed row is in flight, refused for now or delivered
        history_room = limit if history_limit is None else history_limit
        taken: list[Message] = []
        rows = self._db.execute(
            "SELECT seq, prio, stream, payload FROM outbox ORDER BY prio, seq LIMIT ?", (limit + len(skip),)
        )
        for row in rows:  # live, events, then history: one pass, in delivery order
            if row[0] in skip:
                continue
            if row[1] == HISTORY:
                if history_room <= 0:
                    break
                history_room -= 1
            taken.append(Message._make(row))
            if len(taken) == limit:
                break
        self._in_use = skip.union(message.seq for message in taken)
        return taken

    def delivered(self, seq: int) -> None:
        """The broker acknowledged `seq`; it is deleted at the next commit."""
        self._acked.add(seq)

    def demote_live(self) -> None:
        """The link dropped: undelivered live readings are history now, never retained state."""
        self.commit()

        def write(db: sqlite3.Connection) -> None:
            with db:
                db.execute("UPDATE outbox SET prio = ? WHERE prio = ?", (HISTORY, LIVE))

        self._write(write)

    def _demote_superseded_live(self) -> None:
        """At start: of the live rows a stream left behind (in flight when the agent died, perhaps
        delivered already, their acknowledgement not yet committed), only the newest is its state. The
        older ones go out as history, so the retained state topic never steps back to an older value."""

        def write(db: sqlite3.Connection) -> None:
            with db:
                db.execute("UPDATE outbox SET prio = ? WHERE prio = ? AND seq NOT IN "
                           "(SELECT MAX(seq) FROM outbox WHERE prio = ? GROUP BY stream)", (HISTORY, LIVE, LIVE))

        self._write(write)

    # -- figures -----------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Messages accepted and not yet acknowledged (committed or not)."""
        return self._count + len(self._pending) - len(self._acked)

    # The figures below are plain attributes kept by the core's thread at each commit, so diagnostics
    # may read them from its own thread (a SQLite connection belongs to the thread that opened it).
    def oldest_age_s(self, now: float | None = None) -> float | None:
        """Seconds since the oldest undelivered message was accepted, as of the last commit (monotonic
        clock; rows from before a reboot count from the boot, as a Pi without a real-time clock cannot
        know how long it was off)."""
        if self.depth <= 0:
            return None  # all delivered, the deletions not yet committed
        now = time.monotonic() if now is None else now
        oldest = self._oldest_mono
        if oldest is not None:
            return max(0.0, now - oldest)
        pending = self._pending[:1]
        return max(0.0, now - pending[0][4]) if pending else None

    @property
    def bytes(self) -> int:
        """Bytes of database pages in use, as of the last commit (free pages are reused, so the file
        may be larger)."""
        return self._bytes_in_use

    def _refresh_figures(self) -> None:
        row = self._db.execute("SELECT seq, mono FROM outbox ORDER BY seq LIMIT 1").fetchone()
        self._oldest_mono = None if row is None else (0.0 if row[0] <= self._boot_seq else row[1])
        self._bytes_in_use = self._used_bytes()

    def _used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self._page_size()

    def retry_disk(self) -> bool:
        """In memory after a disk failure: try to write everything back to the file and carry on there."""
        if self._durable:
            return True
        self.commit()
        try:
            db = _open_file(self.path, self.max_bytes)
            if self._holds_file:
                self._db.backup(db)  # memory is the whole truth, deliveries included
                _configure(db, self.max_bytes)
            else:
                _merge_into(db, self._db)  # the file has rows memory never saw: keep them
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (OutboxError, sqlite3.Error) as err:
            log.debug("outbox still not writable: %s", err)
            return False
        self._db.close()
        self._db = db
        self._durable = True
        self._holds_file = True
        self._count = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self.error = self._volatile
        self._refresh_figures()
        log.warning("outbox %s is writable again: durable from now on", self.path)
        return True

    def close(self) -> None:
        self.commit()
        self._db.close()

    # -- helpers -----------------------------------------------------------------------------------
    def _write(self, write: Callable[[sqlite3.Connection], None], needs_pages: int = 0) -> None:
        """Run a write transaction; make room when full; on a failing disk, carry on in memory."""
        attempt = 0
        while True:
            try:
                write(self._db)
                return
            except sqlite3.Error as err:
                attempt += 1
                try:
                    if _is_full(err) and self._at_cap() and attempt <= 4:
                        self._make_room(max(needs_pages, 1) * 2**attempt)
                        continue
                except sqlite3.Error as again:
                    err = again
                self._on_write_error(err)

    def _on_write_error(self, err: sqlite3.Error) -> None:
        if not self._durable:
            raise OutboxError(f"outbox in memory failed: {err}") from None
        self._to_memory(err)

    def _at_cap(self) -> bool:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        cap = self._db.execute("PRAGMA max_page_count").fetchone()[0]
        return pages >= cap - 1

    def _trim(self) -> None:
        """Keep the pages in use under the cap with some headroom, dropping in `_DROP_ORDER`."""
        limit = _db_pages(self._cap_bytes(), self._page_size())
        headroom = max(4, limit // 20)
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        if pages < limit - headroom:
            return  # cheap case: the file has not even reached the mark
        used = self._used_bytes() // self._page_size()
        if used > limit - headroom:
            self._make_room(used - (limit - headroom))

    def _make_room(self, pages: int) -> None:
        """Drop the oldest messages (history first, events last) worth about `pages` pages."""
        page_size = self._page_size()
        used = max(1, self._used_bytes() // page_size)
        rows_per_page = max(1.0, self._count / used)
        want = max(1, int(pages * rows_per_page * 1.2) + 1)
        victims: list[tuple[int, int, str]] = []
        for prio in _DROP_ORDER:
            if len(victims) >= want:
                break
            spared = self._acked | self._in_use
            rows = self._db.execute(
                "SELECT seq, prio, stream FROM outbox WHERE prio = ? ORDER BY seq LIMIT ?",
                (prio, want - len(victims) + len(spared)),
            )
            # A message the broker acknowledged is delivered, not dropped (its deletion is pending); one
            # in flight may be acknowledged any moment (and take() counts on its row being there).
            victims += [row for row in rows if row[0] not in spared][: want - len(victims)]
        if not victims:
            return
        db = self._db
        with db:
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(v[0],) for v in victims])
            _set_meta(db, "dropped", self.dropped + len(victims))
            _set_meta(db, "seq", self.last_seq - len(self._pending))  # the newest row may be among them
        self.dropped += len(victims)
        self._count -= len(victims)
        events = sum(1 for v in victims if v[1] == EVENT)
        log.warning(
            "outbox full (max %.1f MB): dropped %d oldest message(s), seq %d..%d%s; %d dropped in all",
            self._cap_bytes() / 2**20, len(victims), min(v[0] for v in victims), max(v[0] for v in victims),
            f", {events} of them events" if events else " (readings)", self.dropped,
        )

    def _to_memory(self, err: sqlite3.Error) -> None:
        """The disk refused a write: copy what is committed into memory and carry on there."""
        try:
            mem = _open_memory(self._db, self.max_bytes)
        except sqlite3.Error:
            mem = _open_memory(None, self.max_bytes)  # unreadable too: what is on disk stays there
            self._holds_file = False
        try:
            self._db.close()
        except sqlite3.Error:
            pass
        self._db = mem
        self._durable = False
        with mem:
            _set_meta(mem, "seq", max(self.last_seq, _get_meta(mem, "seq")))
            _set_meta(mem, "dropped", max(self.dropped, _get_meta(mem, "dropped")))
        self._count = mem.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self._fail(f"cannot write the outbox {self.path}: {_describe(err)}; kept in memory, not durable, until the "
                   "disk takes writes again")

    def _fail(self, message: str) -> None:
        self.error = message
        log.error("%s", message)

    def _note_boot(self) -> None:
        """Monotonic times from an earlier boot mean nothing now: rows up to `boot_seq` count from this
        boot (noted once per boot, rather than rewriting every row)."""
        self._boot_seq = self._meta("boot_seq")
        boot = _boot_number()
        if boot is None or boot == self._meta("boot"):
            return
        seq = self.last_seq

        def write(db: sqlite3.Connection) -> None:
            with db:
                _set_meta(db, "boot", boot)
                _set_meta(db, "boot_seq", seq)

        self._write(write)
        self._boot_seq = seq

    def _cap_bytes(self) -> int:
        return self.max_bytes if self._durable else min(self.max_bytes, MEMORY_MAX_BYTES)

    def _page_size(self) -> int:
        if self._page_size_of is None or self._page_size_of[0] is not self._db:
            self._page_size_of = (self._db, self._db.execute("PRAGMA page_size").fetchone()[0])
        return self._page_size_of[1]

    def _set_synchronous(self, db: sqlite3.Connection, mode: str) -> None:
        # A PRAGMA statement per commit costs about as much as the insert: set it only when it changes.
        if self._synchronous is None or self._synchronous[0] is not db or self._synchronous[1] != mode:
            db.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = (db, mode)

    def _meta(self, key: str) -> int:
        return _get_meta(self._db, key)


def volatile_reason(folder: Path) -> str | None:
    """Why a folder would not survive a power cut (tmpfs, or an overlay kept in RAM), or None."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    return volatile_reason_in(mountinfo, folder)


def volatile_reason_in(mountinfo: str, folder: Path) -> str | None:
    mounts = _parse_mountinfo(mountinfo)
    path = _existing(folder)
    fstype, options = _mount_of(mounts, path)
    where = f"the outbox's folder {folder}"
    if fstype in ("tmpfs", "ramfs"):
        return f"{where} is on {fstype} (RAM): queued messages are lost at power-off; set box.state_dir to a disk"
    if fstype == "overlay":
        upper = next((o.split("=", 1)[1] for o in options if o.startswith("upperdir=")), None)
        if upper == "<ram>" or (upper is not None and _mount_of(mounts, Path(upper))[0] in ("tmpfs", "ramfs")):
            return (f"{where} is on an overlay kept in RAM (e.g. Raspberry Pi OS overlay root): queued messages "
                    "are lost at power-off; set box.state_dir to a persistent disk")
    return None


def _parse_mountinfo(text: str) -> list[tuple[str, str, list[str]]]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        rest = right.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        options = rest[2].split(",")
        if rest[1] == "overlayroot":  # the overlayroot package (Raspberry Pi OS): upper layer in RAM
            options.append("upperdir=<ram>")
        mounts.append((point, rest[0], options))
    return mounts


def _mount_of(mounts: list[tuple[str, str, list[str]]], path: Path) -> tuple[str, list[str]]:
    best = ("", "", [])
    text = str(path)
    for point, fstype, options in mounts:
        inside = text == point or text.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fstype, options)
    return best[1], best[2]


def _existing(folder: Path) -> Path:
    path = folder.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return path.resolve()
    except OSError:
        return path


def _open_file(path: Path, max_bytes: int) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an older file with a looser mode: the WAL and SHM files inherit it
        finally:
            os.close(fd)
        db = sqlite3.connect(path, isolation_level=None)
        # Small pages for a new database: a grouped commit appends a few small WAL frames instead of a
        # few 4 kB ones, and successive commits share the kernel's dirty pages (less SD card wear).
        db.execute(f"PRAGMA page_size={_PAGE_SIZE}")
        db.execute("PRAGMA journal_mode=WAL")
        _configure(db, max_bytes)
        db.executescript(_SCHEMA)
        _add_missing_columns(db)
        db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        db.isolation_level = "DEFERRED"  # "with db" transactions
    except (OSError, sqlite3.Error) as err:
        raise OutboxError(f"cannot open the outbox {path}: {_describe(err)}") from None
    return db


def _open_memory(source: sqlite3.Connection | None, max_bytes: int) -> sqlite3.Connection:
    """A memory outbox, seeded from `source` (a connection to the file) when given."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    if source is not None:
        source.backup(db)
    db.executescript(_SCHEMA)
    _add_missing_columns(db)
    _configure(db, min(max_bytes, MEMORY_MAX_BYTES))
    db.isolation_level = "DEFERRED"
    return db


def _read_only_copy(path: Path, max_bytes: int) -> tuple[sqlite3.Connection, bool]:
    """A read-only folder or file system: read what is there (seq, undelivered rows) into memory. A WAL
    database opens read-only only if its -shm can be used; `immutable` reads the main file regardless."""
    if path.exists():
        for mode in ("ro", "ro&immutable=1"):
            try:
                source = sqlite3.connect(f"file:{path}?mode={mode}", uri=True)
                try:
                    source.execute("SELECT COUNT(*) FROM outbox").fetchone()
                    return _open_memory(source, max_bytes), True
                finally:
                    source.close()
            except sqlite3.Error:
                continue
    return _open_memory(None, max_bytes), not path.exists()


def _merge_into(db: sqlite3.Connection, mem: sqlite3.Connection) -> None:
    rows = mem.execute("SELECT seq, prio, stream, payload, mono FROM outbox").fetchall()
    with db:
        db.executemany("INSERT OR IGNORE INTO outbox (seq, prio, stream, payload, mono) VALUES (?,?,?,?,?)", rows)
        for key in ("seq", "dropped"):
            _set_meta(db, key, max(_get_meta(db, key), _get_meta(mem, key)))
        for stream, field, value in mem.execute("SELECT * FROM counters").fetchall():
            db.execute("INSERT INTO counters VALUES (?,?,?) ON CONFLICT (stream, field) "
                       "DO UPDATE SET value = MAX(value, excluded.value)", (stream, field, value))


def _configure(db: sqlite3.Connection, max_bytes: int) -> None:
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    total = max(1, max_bytes // page_size)
    wal = _wal_pages(total)
    db.execute(f"PRAGMA wal_autocheckpoint={wal}")
    db.execute(f"PRAGMA journal_size_limit={wal * page_size}")
    db.execute(f"PRAGMA max_page_count={_db_pages(max_bytes, page_size)}")


def _wal_pages(total_pages: int) -> int:
    return max(16, min(1000, total_pages // 8))


def _db_pages(max_bytes: int, page_size: int) -> int:
    """Pages the main file may use: the rest of the budget is for the WAL and its index (-shm)."""
    total = max_bytes // page_size
    return max(_MIN_DB_PAGES, total - _wal_pages(total) - 32768 // page_size)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    if "mono" not in columns:
        db.execute("ALTER TABLE outbox ADD COLUMN mono REAL NOT NULL DEFAULT 0")


def _get_meta(db: sqlite3.Connection, key: str) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _set_meta(db: sqlite3.Connection, key: str, value: int) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _is_full(err: sqlite3.Error) -> bool:
    return getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(err)


def _boot_number() -> int | None:
    """This boot, as an integer (from the kernel's random boot id)."""
    try:
        return int(Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", ""), 16) >> 66
    except (OSError, ValueError):
        return None


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)
