"""Pacing of the history replay after a reconnect, so a backlog never starves live traffic.

Two limits, both on history only (live state and events are never paced):
- `outbox.replay_rate` messages per second (0: as fast as the broker acknowledges), a token bucket
  with a short burst, so a satellite link is not flooded by three days of readings at once;
- part of the in-flight window is kept for live state and events: a door event that happens during a
  replay goes out at once instead of queueing behind a full window of history.

It also measures the replay rate (history acknowledged per second) that health reports.
"""

from __future__ import annotations

from collections import deque

_RATE_WINDOW_S = 10  # health's replay_rate: history acknowledged per second over this many seconds
_BURST_S = 0.05  # tokens may pile up for this long: fewer wake-ups at high rates, smooth at low ones


class ReplayPacer:
    def __init__(self, rate_per_s: float, window: int):
        self.rate_per_s = rate_per_s
        reserved = min(window - 1, max(1, window // 4))  # slots history may never take
        self.history_slots = window - reserved
        self._burst = max(1.0, rate_per_s * _BURST_S)
        self._tokens = self._burst
        self._refilled_at: float | None = None
        self._acked: deque[list[int]] = deque()  # [second, count], oldest first

    def allowance(self, now: float, history_inflight: int) -> int:
        """How many history messages may be handed to the publisher now."""
        slots = max(0, self.history_slots - history_inflight)
        if not self.rate_per_s:
            return slots
        if self._refilled_at is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self.rate_per_s)
        self._refilled_at = now
        return min(slots, int(self._tokens))

    def sent(self) -> None:
        if self.rate_per_s:
            self._tokens -= 1.0

    def next_at(self) -> float | None:
        """When the next token is due, if the bucket is empty (the core sleeps until then)."""
        if not self.rate_per_s or self._tokens >= 1.0 or self._refilled_at is None:
            return None
        return self._refilled_at + (1.0 - self._tokens) / self.rate_per_s

    def acknowledged(self, now: float) -> None:
        second = int(now)
        if self._acked and self._acked[-1][0] == second:
            self._acked[-1][1] += 1
        else:
            self._acked.append([second, 1])
            self._expire(second)

    def rate(self, now: float) -> float:
        """History messages acknowledged per second, over the last few seconds (any thread may ask)."""
        recent = list(self._acked)  # one C-level copy: the core may append meanwhile
        return sum(count for second, count in recent if second > int(now) - _RATE_WINDOW_S) / _RATE_WINDOW_S

    def _expire(self, second: int) -> None:
        while self._acked and self._acked[0][0] <= second - _RATE_WINDOW_S:
            self._acked.popleft()
