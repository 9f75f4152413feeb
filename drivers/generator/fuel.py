"""Fuel accounting, shared by the GPIO source (an ADC sender) and the Modbus source (the controller's
fuel level): litres, consumption while running, time to empty, refuels, and the theft signature.

A fuel sender is noisy (a float on a resistor track, fuel sloshing after the set stops, warm diesel
expanding); a controller reports whole percent, so a 1000 L tank moves in 10 L steps. So levels go
through a median of the last few samples, and a change counts only once it has held for
`fuel_hold_s`: `fuel_drop_while_stopped` needs the level to stay at least `fuel_drop_min_l` below the
highest settled level since the set stopped, for that long. Normal consumption happens while running
and is never a drop; after a stop the level is left to settle for `fuel_settle_s` first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

FUEL_DROP = "fuel_drop_while_stopped"


class FuelAccount:
    """Fed one sample at a time (`update`); reports through the driver's alarm and event calls."""

    def __init__(self, config: Any, *, alarm: Callable[..., bool], event: Callable[..., None],
                 active: dict[str, str], saved: dict[str, Any]):
        self.config = config
        self._alarm = alarm
        self._event = event
        self.fuel_low = "fuel_low" in active  # hysteresis survives a restart
        self._samples: deque[float] = deque(maxlen=config.fuel_filter_samples)
        self.level_l: float | None = None
        self.fuel_lph: float | None = None
        self._running: bool | None = None
        self._rate: deque[tuple[float, float]] = deque(maxlen=4096)  # (mono, litres) while running
        self._stopped_at: float | None = None
        self._ref: tuple[float, float] | None = None  # (litres, mono): highest settled level while stopped
        self._drop_since: float | None = None
        self._low: float | None = None  # lowest settled level since the last refuel: what a refuel adds to
        self._rise_since: float | None = None
        # The level the last run saw: a drop while the agent was down (its power cut) is still a drop.
        self._saved_l = saved.get("fuel_l") if isinstance(saved.get("fuel_l"), int | float) else None
        self._saved_stopped = saved.get("running") is False

    # -- the one input ------------------------------------------------------------------------------
    def update(self, now: float, fuel_pct: float | None, running: bool | None, state: Callable[[], dict]) -> None:
        """One sample: `fuel_pct` (None: no reading), `running` (None: unknown). `state` gives the stream's
        values, re-sent with an alarm."""
        if fuel_pct is not None:
            self._check_low(fuel_pct, state)
        self.set_running(now, running, state)
        if fuel_pct is None or self.config.tank_litres is None:
            self.level_l = None
            self.fuel_lph = None if running is not False else 0.0
            return
        self._samples.append(fuel_pct)
        self.level_l = round(_median(self._samples) * self.config.tank_litres / 100.0, 1)
        if self._saved_l is not None:
            if self._saved_stopped and running is False:  # compare with the level before the restart
                self._ref = (float(self._saved_l), now)
                self._stopped_at = now - self.config.fuel_settle_s
            self._saved_l = None
        self._check_refuel(now, state)
        if running:
            self._rate.append((now, self.level_l))
            while self._rate and self._rate[0][0] < now - self.config.fuel_rate_window_s:
                self._rate.popleft()
            self.fuel_lph = _consumption_lph(self._rate, self.config.fuel_rate_window_s / 4)
        elif running is False:
            self.fuel_lph = 0.0
            self._check_drop(now, state)

    # -- derived values -----------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        hours = None
        if self.level_l is not None and self.fuel_lph:
            hours = round(self.level_l / self.fuel_lph, 1)
        return {"fuel_l": self.level_l, "fuel_lph": self.fuel_lph, "hours_to_empty": hours}

    def persistent(self) -> dict[str, Any]:
        return {"fuel_l": self.level_l} if self.level_l is not None else {}

    # -- the rules ----------------------------------------------------------------------------------
    def _check_low(self, pct: float, state: Callable[[], dict]) -> None:
        if pct <= self.config.fuel_low_pct:
            self.fuel_low = True
        elif pct >= self.config.fuel_low_clear_pct:
            self.fuel_low = False
        self._alarm("fuel_low", self.fuel_low, severity="warning", state=state(), fuel_pct=pct,
                    threshold_pct=self.config.fuel_low_pct)

    def set_running(self, now: float, running: bool | None, state: Callable[[], dict]) -> None:
        """The set started or stopped (None: not known, e.g. the controller is lost)."""
        if running is None or running == self._running:
            return
        was = self._running
        self._running = running
        self._rate.clear()
        self._drop_since = None
        if running:
            self._stopped_at = self._ref = None
            if was is not None:  # the set is in use again: the drop was reported, its alarm is done
                self._alarm(FUEL_DROP, False, state=state(), reason="generator started")
        else:
            self._stopped_at = now
            self._ref = None

    @staticmethod
    def _since(holds: bool, since: float | None, now: float) -> float | None:
        """When a condition began to hold (None while it does not)."""
        if not holds:
            return None
        return now if since is None else since

    def _held(self, since: float | None, now: float) -> bool:
        """A change counts once it has held for fuel_hold_s: slosh and sender noise come and go faster."""
        return since is not None and now - since >= self.config.fuel_hold_s

    def _check_drop(self, now: float, state: Callable[[], dict]) -> None:
        level = self.level_l
        if self._stopped_at is None or now - self._stopped_at < self.config.fuel_settle_s:
            return  # sloshing and cooling after the stop
        if self._ref is None or level > self._ref[0]:
            self._ref = (level, now)
        drop = self._ref[0] - level
        self._drop_since = self._since(drop >= self.config.fuel_drop_min_l, self._drop_since, now)
        if self._held(self._drop_since, now):
            self._alarm(FUEL_DROP, True, state=state(), litres=round(drop, 1), from_l=self._ref[0], to_l=level,
                        window_s=round(now - self._ref[1]))

    def _check_refuel(self, now: float, state: Callable[[], dict]) -> None:
        level = self.level_l
        if self._low is None or level < self._low:
            self._low = level
            self._rise_since = None
            return
        added = level - self._low
        self._rise_since = self._since(added >= self.config.refuel_min_l, self._rise_since, now)
        if self._held(self._rise_since, now):
            self._event("refuelled", litres=round(added, 1), fuel_l=level)
            self._low = level
            self._rise_since = None
            self._rate.clear()  # the slope across a refuel is not consumption
            if self._ref is not None:
                self._ref = (level, now)
            self._alarm(FUEL_DROP, False, state=state(), reason="refuelled")


def _median(samples: deque[float]) -> float:
    # not statistics.median: that module pulls in decimal and fractions (0.3 MB of a 35 MB budget)
    ordered = sorted(samples)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _consumption_lph(samples: deque[tuple[float, float]], min_span_s: float) -> float | None:
    """Least-squares slope of the level over the window, as litres per hour used (never negative): a
    slope over many samples smooths the sender's noise that a first-minus-last difference keeps."""
    if len(samples) < 3 or samples[-1][0] - samples[0][0] < min_span_s:
        return None
    t0 = samples[0][0]
    n = len(samples)
    mean_t = sum(t - t0 for t, _ in samples) / n
    mean_l = sum(level for _, level in samples) / n
    var = sum((t - t0 - mean_t) ** 2 for t, _ in samples)
    if var <= 0:
        return None
    slope = sum((t - t0 - mean_t) * (level - mean_l) for t, level in samples) / var  # litres per second
    return round(max(0.0, -slope * 3600.0), 2)
