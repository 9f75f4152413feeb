"""The fleet as the broker shows it: a pure model fed with (topic, payload, retained) messages.

No MQTT here: `boxtel fleet` feeds it from a subscription, the tests and the benchmark feed it directly.
It keeps per box what an operator looks at -- online or offline and since when, site, last seen, GPS,
generator, water, doors, active alarms, outbox depth, clock source -- and accounts for every `seq`:

- `seq` is per box, only grows, and every one is delivered unless the box counts it in
  `health.dropped`. A gap is first *pending*: QoS 1 redelivery and history replay after a reconnect
  arrive out of order and may still fill it. A gap older than the settle window is *lost*; one that is
  filled later still is counted `late` and no longer lost. Losses the box itself reports as `dropped`
  are subtracted: what is left was lost between box and console.
- Retained messages (delivered on subscribe) are old by nature: they show state but take no part in
  the accounting, and `seq`s below the first one seen live are history from before the console started.
- A birth whose `session` is lower than the one known means the box lost its state dir: its `seq`
  started again, so the accounting starts again (`seq_resets`). A will from an older session than the
  current birth is stale and ignored (the box republishes its birth anyway).
- Births that alternate between two agents (their `instance`, or `boot_id` from older agents) are two
  boxes sharing one box id -- a cloned SD card or a copied config: the box shows as a conflict.

Single-threaded: the caller serialises `ingest()`, `settle()` and the readers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SETTLE_S = 10.0  # how long a gap may wait for redelivery or replay before it counts as lost
_MAX_TRACKED_GAP = 10_000  # a bigger jump is counted lost at once, not remembered seq by seq
_MAX_LOST_REMEMBERED = 10_000  # per box; beyond this, lost seqs are only counted
_AGENTS_REMEMBERED = 4  # per box: the agents of its latest births, to see two of them alternate


def iso_utc(epoch_s: float) -> str:
    """ISO 8601 UTC with milliseconds and Z; the formatted second is cached (at 10 000 msg/s the
    strftime was a visible share of the simulator's time)."""
    global _iso_cache
    second = int(epoch_s)
    cached_second, prefix = _iso_cache  # one tuple: threads never see a half-updated cache
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _iso_cache = (second, prefix)
    return f"{prefix}.{int((epoch_s - second) * 1000):03d}Z"


_iso_cache = (-1, "")


class SeqTracker:
    """Gaps, duplicates and late arrivals in one box's `seq` stream, as seen by the console."""

    __slots__ = ("first", "top", "pending", "lost", "lost_uncounted", "late", "duplicates", "received")

    def __init__(self) -> None:
        self.first: int | None = None
        self.top: int | None = None
        self.pending: dict[int, float] = {}  # seq -> monotonic time the gap was noticed
        self.lost: set[int] = set()
        self.lost_uncounted = 0  # lost but not remembered (huge jump or too many)
        self.late = 0
        self.duplicates = 0
        self.received = 0

    def add(self, seq: int, now: float) -> None:
        self.received += 1
        top = self.top
        if top is None:
            self.first = self.top = seq
            return
        if seq > top:
            gap = seq - top - 1
            if gap > _MAX_TRACKED_GAP:
                self.lost_uncounted += gap
            elif gap:
                pending = self.pending
                for missing in range(top + 1, seq):
                    pending[missing] = now
            self.top = seq
        elif seq in self.pending:
            del self.pending[seq]
        elif seq in self.lost:
            self.lost.discard(seq)
            self.late += 1
        elif seq >= self.first:
            self.duplicates += 1
        # else: older than the first seq seen live -- history from before the console started

    def settle(self, now: float, settle_s: float) -> bool:
        """Pending gaps older than `settle_s` become lost; True if anything moved."""
        if not self.pending:
            return False
        expired = [seq for seq, noticed in self.pending.items() if now - noticed >= settle_s]
        for seq in expired:
            del self.pending[seq]
            if len(self.lost) < _MAX_LOST_REMEMBERED:
                self.lost.add(seq)
            else:
                self.lost_uncounted += 1
        return bool(expired)

    @property
    def lost_total(self) -> int:
        return len(self.lost) + self.lost_uncounted


@dataclass(slots=True)
class BoxView:
    box: str
    state: str | None = None  # "online" | "offline" | None (never heard a status)
    since: str | None = None
    reason: str | None = None
    session: int | None = None
    version: str | None = None
    site: str | None = None
    last_seen: float | None = None  # epoch s of the last message received live
    gps: dict | None = None
    generator: dict | None = None
    water: dict | None = None
    doors: dict | None = None  # locker name -> {"door", "armed", "switch_fault"}
    alarms_by_source: dict | None = None
    alarms: tuple = ()
    outbox_depth: int | None = None
    dropped: int | None = None
    dropped_base: int | None = None
    clock_source: str | None = None
    last_event: str | None = None
    seq_last: int | None = None  # the last seq received live (survives a resync)
    events: int = 0
    seq_resets: int = 0
    stale_wills: int = 0
    bad_payloads: int = 0
    id_conflicts: int = 0  # births from an agent that had already given way to another with this id
    agents: tuple = ()  # the agents of the latest births, newest last
    seq: SeqTracker = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.seq = SeqTracker()

    @property
    def dropped_since_start(self) -> int:
        if self.dropped is None or self.dropped_base is None:
            return 0
        return self.dropped - self.dropped_base

    @property
    def seq_lost(self) -> int:
        """Lost between box and console: gaps past the settle window not explained by `dropped`."""
        return max(0, self.seq.lost_total - self.dropped_since_start)

    def row(self) -> dict[str, Any]:
        seq = self.seq
        return {
            "box": self.box,
            "state": self.state,
            "since": self.since,
            "reason": self.reason,
            "site": self.site,
            "version": self.version,
            "last_seen": None if self.last_seen is None else iso_utc(self.last_seen),
            "gps": self.gps,
            "generator": self.generator,
            "water": self.water,
            "doors": self.doors,
            "alarms": list(self.alarms),
            "outbox_depth": self.outbox_depth,
            "dropped": self.dropped,
            "clock_source": self.clock_source,
            "last_event": self.last_event,
            "seq_last": self.seq_last,
            "seq_received": seq.received,
            "seq_pending": len(seq.pending),
            "seq_lost": self.seq_lost,
            "seq_late": seq.late,
            "seq_duplicates": seq.duplicates,
            "seq_dropped": self.dropped_since_start,
            "seq_resets": self.seq_resets,
            "id_conflicts": self.id_conflicts,
        }


def sort_key(view: BoxView) -> tuple:
    """Boxes with alarms first, then offline ones, then those losing messages, then by id."""
    return (not view.alarms, not view.id_conflicts, view.state != "offline", not view.seq_lost, view.box)


class FleetModel:
    def __init__(self, prefix: str = "boxtel", *, settle_s: float = SETTLE_S):
        self.prefix = prefix
        self._prefix_len = len(prefix) + 1
        self.settle_s = settle_s
        self.boxes: dict[str, BoxView] = {}
        self.dirty: set[str] = set()  # boxes changed since the last `take_changed()`
        self.messages = 0
        self.ignored = 0  # not ours, or not JSON objects

    # -- feeding -----------------------------------------------------------------------------------
    def ingest(self, topic: str, payload: bytes | str, retained: bool = False,
               now: float | None = None, wall: float | None = None) -> str | None:
        """Take one message; returns the box it concerned, or None if it was not a boxtel message."""
        self.messages += 1
        if not topic.startswith(self.prefix) or topic[self._prefix_len - 1:self._prefix_len] != "/":
            self.ignored += 1
            return None
        box_id, _, stream = topic[self._prefix_len:].partition("/")
        if not box_id or not stream:
            self.ignored += 1
            return None
        view = self.boxes.get(box_id)
        if view is None:
            view = self.boxes[box_id] = BoxView(box_id)
        if not payload and (stream in _STATE_FIELDS or stream.startswith("locker/")):
            self._forget(view, stream)  # the box took back the retained state of a stream it no longer has
            self.dirty.add(box_id)
            return box_id
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            view.bad_payloads += 1
            self.ignored += 1
            return None
        if now is None:
            now = time.monotonic()
        if not retained:
            view.last_seen = wall if wall is not None else time.time()
        self.dirty.add(box_id)
        if stream == "status":
            self._status(view, data, retained, wall)
            return box_id
        seq = data.get("seq")
        if not retained and type(seq) is int:
            view.seq.add(seq, now)
            view.seq_last = seq
        if stream == "events":
            view.events += 1
            kind = data.get("kind")
            view.last_event = kind if isinstance(kind, str) else None
            return box_id
        if stream.startswith("history/"):
            return box_id  # old readings: accounted above, never the current state
        alarms = data.get("alarms")
        if isinstance(alarms, list):
            self._alarms(view, stream, alarms)
        if stream == "gps":
            view.gps = _pick(data, _GPS_FIELDS)
        elif stream == "generator":
            view.generator = _pick(data, _GENERATOR_FIELDS)
        elif stream == "water":
            view.water = _pick(data, _WATER_FIELDS)
        elif stream.startswith("locker/"):
            if view.doors is None:
                view.doors = {}
            view.doors[stream[7:]] = _pick(data, _LOCKER_FIELDS)
        elif stream == "health":
            self._health(view, data)
        return box_id

    def settle(self, now: float | None = None) -> None:
        """Age pending gaps into losses; call it every refresh."""
        now = time.monotonic() if now is None else now
        for view in self.boxes.values():
            if view.seq.pending and view.seq.settle(now, self.settle_s):
                self.dirty.add(view.box)

    def resync(self) -> None:
        """The console's own connection was lost: what it missed is not the boxes' loss. Start the
        accounting again from the next live message (counters so far are kept)."""
        for view in self.boxes.values():
            old = view.seq
            fresh = SeqTracker()
            fresh.lost, fresh.lost_uncounted = old.lost, old.lost_uncounted
            fresh.late, fresh.duplicates, fresh.received = old.late, old.duplicates, old.received
            view.seq = fresh

    # -- reading -----------------------------------------------------------------------------------
    def sorted_views(self) -> list[BoxView]:
        return sorted(self.boxes.values(), key=sort_key)

    def rows(self) -> list[dict[str, Any]]:
        return [view.row() for view in self.sorted_views()]

    def take_changed(self) -> list[BoxView]:
        changed = [self.boxes[box] for box in sorted(self.dirty)]
        self.dirty.clear()
        return changed

    def summary(self) -> dict[str, int]:
        views = self.boxes.values()
        return {
            "boxes": len(self.boxes),
            "online": sum(1 for v in views if v.state == "online"),
            "offline": sum(1 for v in views if v.state == "offline"),
            "with_alarms": sum(1 for v in views if v.alarms),
            "seq_pending": sum(len(v.seq.pending) for v in views),
            "seq_lost": sum(v.seq_lost for v in views),
            "messages": self.messages,
        }

    # -- helpers -----------------------------------------------------------------------------------
    def _status(self, view: BoxView, data: dict, retained: bool, wall: float | None) -> None:
        state = data.get("state")
        if state not in ("online", "offline"):
            view.bad_payloads += 1
            return
        session = data.get("session") if type(data.get("session")) is int else None
        if state == "offline" and session is not None and view.state == "online" and \
                view.session is not None and session < view.session:
            view.stale_wills += 1
            return
        if state == "online" and session is not None and view.session is not None and session < view.session:
            # Sessions only grow with the box's state dir: it was wiped, so was its seq counter.
            view.seq_resets += 1
            view.seq = SeqTracker()
            view.dropped_base = None
        agent = data.get("instance") or data.get("boot_id")
        if state == "online" and isinstance(agent, str) and not retained:
            if agent in view.agents[:-1]:
                view.id_conflicts += 1  # an agent came back after another took over: two boxes, one id
            view.agents = (*(a for a in view.agents if a != agent), agent)[-_AGENTS_REMEMBERED:]
        since = data.get("ts") if retained else iso_utc(wall if wall is not None else time.time())
        if state != view.state or session != view.session:
            view.since = since if isinstance(since, str) else None
        view.state = state
        view.session = session
        view.reason = data.get("reason") if state == "offline" else None
        if isinstance(data.get("site"), str):
            view.site = data["site"]
        if isinstance(data.get("version"), str):
            view.version = data["version"]

    def _alarms(self, view: BoxView, stream: str, alarms: list) -> None:
        by_source = view.alarms_by_source
        if by_source is None:
            if not alarms:
                return
            by_source = view.alarms_by_source = {}
        if by_source.get(stream) == alarms:
            return
        by_source[stream] = alarms
        view.alarms = tuple(sorted({str(a) for names in by_source.values() for a in names}))

    def _forget(self, view: BoxView, stream: str) -> None:
        self._alarms(view, stream, [])
        if stream.startswith("locker/"):
            if view.doors:
                view.doors.pop(stream[7:], None)
        else:
            setattr(view, _STATE_FIELDS[stream], None)

    def _health(self, view: BoxView, data: dict) -> None:
        depth = data.get("outbox_depth")
        view.outbox_depth = depth if type(depth) is int else None
        dropped = data.get("dropped")
        if type(dropped) is int:
            if view.dropped_base is None or dropped < view.dropped_base:
                view.dropped_base = dropped  # first sight, or the box's counter started again
            view.dropped = dropped
        source = data.get("clock_source")
        view.clock_source = source if isinstance(source, str) else None


_STATE_FIELDS = {"gps": "gps", "generator": "generator", "water": "water"}  # stream -> BoxView field
_GPS_FIELDS = ("fix", "lat", "lon", "sats", "speed_mps", "home_distance_m", "ts")
_GENERATOR_FIELDS = ("running", "fuel_pct", "run_hours", "fault", "faults")
_WATER_FIELDS = ("tank_pct", "tank_level", "flow_lpm", "total_l", "pump", "leak")
_LOCKER_FIELDS = ("door", "since", "armed", "switch_fault")


def _pick(data: dict, fields: tuple[str, ...]) -> dict:
    return {key: data[key] for key in fields if key in data}
