"""The monthly data budget (`[link] budget_mb_month`) and the link's figures in health and status.

The core hands in the link meter's totals every minute. Bytes are booked to the current UTC day and
calendar month by the core's clock -- only while that clock is synchronised (NTP or GPS): a Pi that booted
without either may think it is 1970, and must not start a new month because of it. The month's figures
survive restarts (`link.json` in the state dir, written every ten minutes and at stop).

Projection: the month so far, plus the rate seen this month (since counting began, at least an hour)
times what is left of it. Over budget, the agent saves in steps (see docs/deploy.md) -- each step keeps
the ones before it:
  1. history kept offline downsampled ten times harder;
  2. health four times less often;
  3. GPS on movement only, and unchanged state re-sent daily instead of hourly.
A step is taken when the projection passes 1, 1.25 or 1.5 times the budget (step 3 at once when the
month has already used it all) and given back below 0.9 times that mark. Events and alarms are never
held back: they do not pass through any of this.
"""

from __future__ import annotations

import calendar
import math
import time
from collections import defaultdict, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import statefile

STEPS = 3
HISTORY_SAVING = 10.0  # step 1: offline history this much sparser
HEALTH_SAVING = 4.0  # step 2: health this much less often
DAILY_S = 86400.0  # step 3: unchanged state re-sent this often
_MARKS = (1.0, 1.25, 1.5)  # projection / budget that takes step 1, 2, 3
_GIVE_BACK = 0.9
_MIN_OBSERVED_S = 3600.0  # less than this of the month seen: no projection yet
_SAVE_EVERY_S = 600.0
_TALLY_S = 3600.0  # bytes per topic for the last hour
_TALLY_BUCKET_S = 60.0


class LinkBudget:
    def __init__(self, budget_mb: float, state_file: Path):
        self.budget_mb = budget_mb
        self.state_file = state_file
        saved = statefile.load(state_file)
        self.month = str(saved.get("month", ""))
        self.day = str(saved.get("day", ""))
        self.month_b = _count(saved.get("month_b"))
        self.day_sent_b = _count(saved.get("day_sent_b"))
        self.day_received_b = _count(saved.get("day_received_b"))
        self.observed_s = float(_count(saved.get("observed_s")))  # of this month, across restarts
        self.step = 0
        self.projected_mb: float | None = None
        self._last = (0, 0)  # the meter's totals at the last booking (it counts from the agent's start)
        self._last_mono: float | None = None
        self._saved_mono = time.monotonic()
        self._tally: dict[str, deque] = defaultdict(deque)  # topic -> (bucket, bytes)

    # -- booking -----------------------------------------------------------------------------------
    def update(self, totals: tuple[int, int], mono: float, epoch_s: float, synced: bool) -> int | None:
        """Book the meter's totals; returns the new step when it changed, else None."""
        sent_b, received_b = max(0, totals[0] - self._last[0]), max(0, totals[1] - self._last[1])
        elapsed_s = 0.0 if self._last_mono is None else max(0.0, mono - self._last_mono)
        self._last, self._last_mono = totals, mono
        if synced:
            moment = datetime.fromtimestamp(epoch_s, tz=UTC)
            month, day = moment.strftime("%Y-%m"), moment.strftime("%Y-%m-%d")
            if month != self.month:
                self.month, self.month_b, self.observed_s = month, 0, 0.0
            if day != self.day:
                self.day, self.day_sent_b, self.day_received_b = day, 0, 0
        self.month_b += sent_b + received_b
        self.day_sent_b += sent_b
        self.day_received_b += received_b
        self.observed_s += elapsed_s
        if mono - self._saved_mono >= _SAVE_EVERY_S:
            self.save()
        if self.observed_s >= _MIN_OBSERVED_S:
            self.projected_mb = (self.month_b + self.month_b / self.observed_s * _month_left_s(epoch_s)) / 1e6
        return self._judge() if self.budget_mb > 0 else None

    def _judge(self) -> int | None:
        budget_b = self.budget_mb * 1e6
        ratio = self.projected_mb * 1e6 / budget_b if self.projected_mb is not None else 0.0
        if self.month_b >= budget_b:
            wanted = STEPS
        else:
            wanted = sum(1 for mark in _MARKS if ratio > mark)
            if wanted < self.step and ratio > _MARKS[self.step - 1] * _GIVE_BACK:
                wanted = self.step  # not yet far enough below the mark to give the step back
        if wanted == self.step:
            return None
        self.step = wanted
        return wanted

    def save(self) -> None:
        self._saved_mono = time.monotonic()
        try:
            statefile.save(self.state_file, {
                "month": self.month, "day": self.day, "month_b": self.month_b, "day_sent_b": self.day_sent_b,
                "day_received_b": self.day_received_b, "observed_s": round(self.observed_s)})
        except OSError:
            pass  # a full or read-only state dir costs the figures of one restart, nothing else

    # -- per topic ---------------------------------------------------------------------------------
    def tally(self, topic: str, size: int, mono: float) -> None:
        bucket = int(mono // _TALLY_BUCKET_S)
        entries = self._tally[topic]
        if entries and entries[-1][0] == bucket:
            entries[-1][1] += size
        else:
            entries.append([bucket, size])
            while entries and entries[0][0] <= bucket - _TALLY_S / _TALLY_BUCKET_S:
                entries.popleft()

    def last_hour(self, mono: float) -> dict[str, int]:
        """MQTT bytes (topic and payload) handed to the link per topic in the last hour, biggest first."""
        oldest = int(mono // _TALLY_BUCKET_S) - _TALLY_S / _TALLY_BUCKET_S
        sums = {topic: sum(b for at, b in entries if at > oldest) for topic, entries in self._tally.items()}
        return dict(sorted(((t, b) for t, b in sums.items() if b), key=lambda item: -item[1]))

    # -- figures -----------------------------------------------------------------------------------
    def fields(self) -> dict[str, Any]:
        return {
            "link_sent_bytes_today": self.day_sent_b,
            "link_received_bytes_today": self.day_received_b,
            "link_month_mb": round(self.month_b / 1e6, 3),
            "link_month_projected_mb": None if self.projected_mb is None else round(self.projected_mb, 2),
            "link_budget": "off" if self.budget_mb <= 0 else ("ok" if self.step == 0 else "saving"),
            "link_budget_step": self.step,
        }


def max_interval_at(step: int, max_interval_s: float, *, health: bool) -> float:
    """A stream's max interval at budget `step` (Home Assistant's expiry follows the longest)."""
    if health:
        return max_interval_s * HEALTH_SAVING if step >= 2 else max_interval_s
    return max(max_interval_s, DAILY_S) if step >= 3 else max_interval_s


def _month_left_s(epoch_s: float) -> float:
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    end = datetime(moment.year, moment.month, days, tzinfo=UTC).timestamp() + 86400
    return max(0.0, end - epoch_s)


def _count(value: Any) -> int:
    """A count from the state file, which may hold anything: a finite number from 0 up, else 0."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    return int(value) if ok else 0
