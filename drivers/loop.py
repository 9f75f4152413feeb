"""Supervised door loops: a door contact read on an ADC channel through end-of-line resistors, so that
a shorted or cut wire reads as tamper instead of "closed" (intrusion panels do this, EN 50131 grade 2+).

Wiring (docs/deploy.md draws it): a pull-up `r_pullup_ohm` from the ADC's reference to the input; from
the input to ground the loop, the door's normally-closed contact in series with `r_eol_ohm` and, for a
double-EOL loop, `r_alarm_ohm` across the contact. The input reads full scale x R / (R + r_pullup):

    loop      R (input to ground)    reads
    short     ~0 (a bridged pair)    ~0
    closed    r_eol                  r_eol / (r_eol + r_pullup)
    open      r_eol + r_alarm        (r_eol + r_alarm) / (r_eol + r_alarm + r_pullup)   double EOL
    cut       open circuit           full scale (the reference)

A single-EOL loop cannot tell an open door from a cut wire (both are an open circuit): full scale reads
`open` there. Every resistor may be off by its tolerance, so each state is a band of raw counts; the
thresholds sit in the middle of the gaps between bands, with hysteresis of a quarter of the gap on
either side, and a new band counts once the loop has stayed in it for `settle_ms` (as a switch's
debounce). An ADC that cannot be read is `fault`: tamper too, never "closed".

One thread samples every supervised loop of the process (`LoopSampler`); each sample is one SPI
transaction and a comparison against precomputed thresholds. A settled change is queued and wakes the
locker's own thread, which does everything else.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.schema import SettingError, setting
from drivers.gpio import AdcChannel, open_adc

SHORT, CLOSED, OPEN, CUT, FAULT = "short", "closed", "open", "cut", "fault"
TAMPER = (SHORT, CUT, FAULT)  # loop states that say nothing about the door
_STATES = {"double": (SHORT, CLOSED, OPEN, CUT), "single": (SHORT, CLOSED, OPEN)}
_MIN_GAP = 8  # raw counts between two bands, at the least: ADC noise is a few counts
_CHANGES_KEPT = 64  # settled changes not yet taken by the driver (it takes them within milliseconds)
_RESISTOR = {"min": 10.0, "max": 1_000_000.0}


@dataclass(kw_only=True)
class LoopConfig(AdcChannel):
    """A door contact in a supervised (end-of-line resistor) loop on an ADC channel."""

    eol: str = setting("double", choices=("single", "double"),
                       doc='"double": r_alarm across the contact tells open from cut; "single": it cannot')
    r_eol_ohm: float = setting(4700.0, **_RESISTOR, doc="end-of-line resistor, in series, at the contact")
    r_alarm_ohm: float = setting(4700.0, **_RESISTOR, doc="alarm resistor across the contact (double EOL)")
    r_pullup_ohm: float = setting(4700.0, **_RESISTOR, doc="pull-up from the ADC reference to the input")
    tolerance_pct: float = setting(5.0, min=0.0, max=20.0, doc="resistor tolerance the bands allow for")
    bands: dict[str, list[int]] = setting({}, min=0, max=4095,
                                          doc="raw-count bands instead of the resistors, e.g. "
                                              "{ short = [0, 40], closed = [480, 540], open = [650, 710], cut = [980, 1023] }")
    sample_hz: float = setting(20.0, min=1.0, max=100.0, doc="samples per second (one SPI transaction each)")
    settle_ms: float = setting(100.0, min=0.0, max=10000.0, doc="a new band counts once the loop stayed in it this long")

    def validate(self) -> None:
        AdcChannel.validate(self)  # the schema has refused nan and inf already
        self._plan = LoopBands.from_config(self)  # refused here, at config time, if the bands are unsound

    @property
    def plan(self) -> LoopBands:
        if getattr(self, "_plan", None) is None:
            self._plan = LoopBands.from_config(self)
        return self._plan


class LoopBands:
    """The states of a loop in raw-count order, the band each is expected in, and the thresholds."""

    def __init__(self, states: tuple[str, ...], expected: list[tuple[int, int]]):
        self.states = states
        self.expected = expected  # (low, high) raw counts per state
        gaps = [(high, low_next) for (_, high), (low_next, _) in zip(expected, expected[1:], strict=False)]
        self.thresholds = [(high + low_next) / 2 for high, low_next in gaps]
        hysteresis = [(low_next - high) / 4 for high, low_next in gaps]
        # Per settled state: the readings that keep it, beyond the plain thresholds by the hysteresis.
        self.keep_low = [-math.inf] + [t - h for t, h in zip(self.thresholds, hysteresis, strict=True)]
        self.keep_high = [t + h for t, h in zip(self.thresholds, hysteresis, strict=True)] + [math.inf]

    @classmethod
    def from_config(cls, config: LoopConfig) -> LoopBands:
        states = _STATES[config.eol]
        top = config.top
        if config.bands:
            return cls(states, _given_bands(config.bands, states, top))
        tol = config.tolerance_pct / 100.0
        pull = config.r_pullup_ohm
        loops = {CLOSED: config.r_eol_ohm, OPEN: config.r_eol_ohm + config.r_alarm_ohm}
        expected = [(0, 0)]
        for state in states[1:]:
            if state == CUT or (state == OPEN and config.eol == "single"):
                expected.append((top, top))
                continue
            resistance = loops[state]
            expected.append((_raw(resistance * (1 - tol), pull * (1 + tol), top),
                             _raw(resistance * (1 + tol), pull * (1 - tol), top)))
        for (name, (_, high)), (name_next, (low_next, _)) in zip(
                zip(states, expected, strict=True), zip(states[1:], expected[1:], strict=True), strict=False):
            if low_next - high < _MIN_GAP:
                raise SettingError(_culprit(name, name_next), f"with ±{config.tolerance_pct:g} % resistors the "
                                   f"{name} ({high}) and {name_next} ({low_next}) readings of a {config.chip} "
                                   f"are too close to tell apart: {_advice(name, name_next)}")
        return cls(states, expected)

    def classify(self, raw: float) -> int:
        """The state a reading falls in, without hysteresis (at start, or after a jump over a band)."""
        return bisect.bisect_right(self.thresholds, raw)

    def band(self, state: int, top: int) -> tuple[int, int]:
        """The raw counts read as `state` (between the thresholds on either side)."""
        low = 0 if state == 0 else math.floor(self.thresholds[state - 1]) + 1
        high = top if state == len(self.states) - 1 else math.floor(self.thresholds[state])
        return low, high


def _raw(loop_ohm: float, pullup_ohm: float, top: int) -> int:
    return min(top, round((top + 1) * loop_ohm / (loop_ohm + pullup_ohm)))


def _given_bands(bands: dict[str, list[int]], states: tuple[str, ...], top: int) -> list[tuple[int, int]]:
    for name in bands:
        if name not in states:
            raise SettingError(f"bands.{name}", f"not a state of this loop (its states: {', '.join(states)})")
    expected = []
    for name in states:
        band = bands.get(name)
        if band is None:
            raise SettingError("bands", f"needs a {name} band: {', '.join(states)}, each [low, high] in raw counts")
        if len(band) != 2 or band[0] > band[1] or band[1] > top:
            raise SettingError(f"bands.{name}", f"expected [low, high] with low <= high <= {top}, got {band}")
        if expected and band[0] - expected[-1][1] < _MIN_GAP:
            raise SettingError(f"bands.{name}", f"must start at least {_MIN_GAP} counts above the band below it "
                               "(bands in order short, closed, open, cut, not overlapping)")
        expected.append((band[0], band[1]))
    return expected


def _culprit(name: str, name_next: str) -> str:
    return "r_alarm_ohm" if OPEN in (name, name_next) else "r_eol_ohm"


def _advice(name: str, name_next: str) -> str:
    if (name, name_next) == (CLOSED, OPEN):
        return "make r_alarm_ohm closer to r_eol_ohm"
    if name == SHORT:
        return "r_eol_ohm is too small next to r_pullup_ohm"
    return "r_eol_ohm (+ r_alarm_ohm) is too large next to r_pullup_ohm"


class SupervisedLoop:
    """One loop: sampled on the sampler's thread, settled there, changes taken by the driver's thread."""

    def __init__(self, label: str, config: LoopConfig, factory: Any, wake: Callable[[], None],
                 on_error: Callable[[str, str], None]):
        self.label = label
        self.config = config
        self.plan: LoopBands = config.plan
        self.top = config.top
        self.period_s = 1.0 / config.sample_hz
        self._settle_s = config.settle_ms / 1000.0
        self._wake = wake
        self._on_error = on_error
        self._fault = len(self.plan.states)  # the state index of an unreadable ADC
        self._names = (*self.plan.states, FAULT)
        self._keep_low = (*self.plan.keep_low, math.inf)  # fault is kept by no reading
        self._keep_high = (*self.plan.keep_high, -math.inf)
        self._lock = threading.Lock()
        self._changes: deque[tuple[str, float, int | None]] = deque(maxlen=_CHANGES_KEPT)
        self.device = open_adc(config, factory)
        self.raw: int | None = None
        self._pending = -1
        self._pending_since = 0.0
        self.sampled_at = time.monotonic()
        # The state at start comes from the loop, never from memory (and without waiting to settle).
        raw = self._read()
        self._state = self._fault if raw is None else self.plan.classify(raw)

    @property
    def state(self) -> str:
        return self._names[self._state]

    @property
    def tamper(self) -> bool:
        return self._names[self._state] in TAMPER

    def sample(self, now: float) -> None:
        """One reading (the sampler's thread): settle it against the thresholds; queue a settled change."""
        raw = self._read()
        self.sampled_at = now
        state = self._state
        if raw is None:
            seen = self._fault
        elif self._keep_low[state] <= raw <= self._keep_high[state]:
            seen = state
        else:
            seen = self.plan.classify(raw)
        if seen == state:
            self._pending = -1
        elif seen != self._pending:
            self._pending, self._pending_since = seen, now
        elif now - self._pending_since >= self._settle_s:
            self._state, self._pending = seen, -1
            with self._lock:
                self._changes.append((self._names[seen], self._pending_since, raw))
            self._wake()

    def take(self) -> list[tuple[str, float, int | None]]:
        """Settled changes since the last call: (new state, mono of its first sample, raw reading)."""
        with self._lock:
            changes = list(self._changes)
            self._changes.clear()
        return changes

    def _read(self) -> int | None:
        try:
            raw = int(self.device.raw_value)
        except Exception as err:  # noqa: BLE001 - an SPI hiccup: the loop is unreadable, counted, kept going
            self._on_error("adc_read", f"cannot read the {self.label} ADC: {err}")
            self.raw = None
            return None
        self.raw = raw
        return raw

    def row(self) -> dict[str, Any]:
        """For `boxtel pins` and `boxtel doctor`."""
        state = self._state
        row: dict[str, Any] = {"input": self.label, "pin": f"{self.config.chip} ch{self.config.channel}",
                               "raw": self.raw, "state": self._names[state], "edges_per_s": None}
        if state < self._fault:
            low, high = self.plan.band(state, self.top)
            expected = self.plan.expected[state]
            row["band"] = f"{low}-{high} (expected {expected[0]}-{expected[1]})"
        return row

    def close(self) -> None:
        LoopSampler.detach(self)
        self.device.close()


class LoopSampler:
    """The one thread that samples every supervised loop of the process.

    All loops share one wake-up per tick (the fastest loop's period; a slower loop is sampled every
    n-th tick, never below its rate): on a Pi each wake-up of a thread costs more CPU than the SPI
    transaction it makes. Started by the first locker that has a loop (through its `start_thread`);
    every other locker with a loop lists the same thread among its own, so the watchdog sees it die
    whichever driver it asks."""

    _lock = threading.Lock()
    _current: LoopSampler | None = None

    def __init__(self) -> None:
        # (loop, every n-th tick): replaced, never changed in place, so the thread reads it without a lock
        self.loops: tuple[tuple[SupervisedLoop, int], ...] = ()
        self.tick_s = 1.0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    @classmethod
    def attach(cls, loop: SupervisedLoop, driver: Any) -> None:
        with cls._lock:
            sampler = cls._current
            if sampler is None or sampler.thread is None or not sampler.thread.is_alive():
                sampler = cls._current = LoopSampler()
                sampler._plan((loop,))
                sampler.thread = driver.start_thread(sampler.run)
            else:
                sampler._plan((*(other for other, _ in sampler.loops), loop))
                driver.threads.append(sampler.thread)

    @classmethod
    def detach(cls, loop: SupervisedLoop) -> None:
        with cls._lock:
            sampler = cls._current
            if sampler is None or all(other is not loop for other, _ in sampler.loops):
                return
            sampler._plan(tuple(other for other, _ in sampler.loops if other is not loop))
            if sampler.loops:
                return
            cls._current = None
        sampler.stop.set()
        if sampler.thread is not threading.current_thread():
            sampler.thread.join(timeout=2.0)

    def _plan(self, loops: tuple[SupervisedLoop, ...]) -> None:
        tick_s = min((loop.period_s for loop in loops), default=1.0)
        self.loops = tuple((loop, max(1, math.floor(loop.period_s / tick_s + 1e-9))) for loop in loops)
        self.tick_s = tick_s

    def run(self) -> None:
        tick = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            for loop, every in self.loops:
                if tick % every == 0:
                    try:
                        loop.sample(now)
                    except Exception as err:  # noqa: BLE001 - one loop's bug must not stop the others
                        loop._on_error("loop_failed", f"{loop.label}: {err!r}")
            tick += 1
            next_at += self.tick_s
            if next_at <= now:  # late (a loaded box): skip, never catch up in a burst
                next_at = now + self.tick_s
            # time.sleep, not Event.wait: cheaper per wake-up; stop() waits at most one tick for it.
            time.sleep(next_at - time.monotonic() if next_at > time.monotonic() else 0.0)
