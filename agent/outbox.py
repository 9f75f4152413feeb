"""The outbox: every message with a `seq` lives here from acceptance until the broker acknowledges it.

SQLite in WAL mode in the state dir. The outbox, not paho's in-memory queue, is the store: the
publisher is handed at most the in-flight window, and a row is deleted only on a successful PUBACK.

- `seq` is assigned on acceptance and the high-water mark is committed in the same transaction as the
  rows, so a seq is never reused after a crash. Nothing is handed to the publisher before its commit.
- Events commit at once with `synchronous=FULL`; readings wait for the next grouped commit (at most one
  per `flush_interval_s`) with `synchronous=NORMAL`, sparing the SD card.
- Priorities give the reconnect order: live state, then events, then history, each in seq order.

Only the core's thread touches an Outbox.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LIVE = 0  # a reading accepted while online: goes to its retained state topic
EVENT = 1
HISTORY = 2  # a reading buffered while offline: replayed on history/<stream>

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    prio INTEGER NOT NULL,
    stream TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (prio, seq);
"""


@dataclass(frozen=True)
class Message:
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
    def __init__(self, path: Path):
        self.path = path
        self._db = _open(path)
        self.last_seq = self._meta("seq")
        self._pending: list[tuple[int, int, str, str]] = []  # accepted, not yet committed
        self._acked: set[int] = set()  # delivered, deletion not yet committed
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    # -- accepting ---------------------------------------------------------------------------------
    def accept(self, prio: int, stream: str, payload: dict[str, Any]) -> int:
        """Assign the next seq and queue the message; events are committed before this returns."""
        self.last_seq += 1
        seq = self.last_seq
        body = json.dumps({**payload, "seq": seq}, separators=(",", ":"), allow_nan=False)
        self._pending.append((seq, prio, stream, body))
        if prio == EVENT:
            self.commit(durable=True)
        return seq

    @property
    def unsaved_acks(self) -> int:
        return len(self._acked)

    def commit(self, *, durable: bool = False) -> None:
        """Write pending messages and deletions in one transaction. `durable`: fsync (events)."""
        if not self._pending and not self._acked:
            return
        db = self._db
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        with db:
            if self._pending:
                db.executemany("INSERT INTO outbox (seq, prio, stream, payload) VALUES (?,?,?,?)", self._pending)
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('seq', ?)", (self.last_seq,))
            if self._acked:
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in self._acked])
        self._count += len(self._pending) - len(self._acked)
        self._pending.clear()
        self._acked.clear()

    # -- delivering --------------------------------------------------------------------------------
    def take(self, limit: int, exclude: set[int]) -> list[Message]:
        """Up to `limit` committed messages in delivery order, skipping those in `exclude`."""
        skip = exclude | self._acked
        if limit <= 0 or self._count - len(skip) <= 0:
            return []
        rows = self._db.execute(
            "SELECT seq, prio, stream, payload FROM outbox ORDER BY prio, seq LIMIT ?", (limit + len(skip),)
        )
        taken = [Message(*row) for row in rows if row[0] not in skip]
        return taken[:limit]

    def delivered(self, seq: int) -> None:
        """The broker acknowledged `seq`; it is deleted at the next commit."""
        self._acked.add(seq)

    def demote_live(self) -> None:
        """The link dropped: undelivered live readings are history now, never retained state."""
        self.commit()
        with self._db:
            self._db.execute("UPDATE outbox SET prio = ? WHERE prio = ?", (HISTORY, LIVE))

    # -- figures -----------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Messages accepted and not yet acknowledged (committed or not)."""
        return self._count + len(self._pending) - len(self._acked)

    def close(self) -> None:
        self.commit()
        self._db.close()

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0


def _open(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        # Python's sqlite3 starts transactions itself only in the default isolation mode; with
        # isolation_level=None, "with db" still commits via BEGIN issued below.
        db.isolation_level = "DEFERRED"
    except (OSError, sqlite3.Error) as err:
        raise OutboxError(f"cannot open the outbox {path}: {err}") from None
    return db
