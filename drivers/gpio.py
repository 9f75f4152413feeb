"""What the generator, water and locker drivers share: pins through gpiozero, debounce, chatter, ADCs.

Hardware comes through one seam, gpiozero's pin factory (`gpio.pin_factory`: gpiozero's own choice, or
`mock` for simulation and tests), so tests and `--simulate` run exactly the code a Pi runs.

Debounce is ours, not gpiozero's: its `bounce_time` ignores edges for a while after the first one, so a
train that ends on the other level than it started reports the wrong final state. Here a change counts
once the pin has held still for `debounce_ms`, and the level is then read from the pin itself: a 5 ms
bounce train gives exactly one change, with the time of its first edge.

A switch that keeps producing edges far beyond what bouncing explains is a loose or cut wire: each
input counts its raw edges and reports `chattering`; the locker turns that into `door_switch_fault`.
"""

from __future__ import annotations

import gc
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.config import SHARED
from agent.errors import ConfigError, UnavailableError
from agent.schema import SettingError, setting
from agent.throttle import StreamSettings
from drivers.base import Driver, DriverContext

BCM_PINS = range(0, 28)  # GPIO0..GPIO27 on the 40-pin header of every Pi since the B+
ADC_CHIPS = {"MCP3008": 1023, "MCP3208": 4095}  # chip -> largest raw reading
ADC_CHANNELS = {"MCP3008": 8, "MCP3208": 8}  # single-ended inputs per chip
CHATTER_WINDOW_S = 2.0  # edges are counted over this window
_EDGES_KEPT = 4096  # bounds memory on a floating pin; still far above any chatter limit
_SAVE_COUNTERS_S = 60.0  # run_hours / total_l: a power cut costs at most this much of them
_SAVE_SOON_S = 1.0  # a state change or alarm is saved within this (it tells a restart what it missed)
# Periodic work (counters, schedules) and the watchdog's proof of life; an idle box sleeps. Edges,
# deadlines, pending saves and chatter wake the thread on their own, so this only bounds how late a
# schedule minute or a counter shows (and every wake costs CPU on a Pi).
_TICK_S = 5.0
_CHATTER_RECHECK_S = 1.0  # while an input chatters: how often to see whether it has calmed down


@dataclass(kw_only=True)
class InputConfig:
    """One switch or contact on a GPIO pin."""

    pin: int = setting(doc="BCM GPIO number (0-27)")
    active_high: bool = setting(True, doc="the input is active (open, running, fault) when the pin reads high")
    pull_up: bool = setting(True, doc="internal pull-up (contact to ground); false: pull-down (contact to 3.3 V)")
    debounce_ms: float = setting(50.0, min=0.0, max=10000.0, doc="a change counts once the pin held still this long")

    def validate(self) -> None:
        if self.pin not in BCM_PINS:
            raise SettingError("pin", f"GPIO{self.pin} does not exist: BCM GPIO numbers on the header are 0 to 27")


@dataclass(kw_only=True)
class AdcChannel:
    """One channel of an MCP3008 (10 bit) or MCP3208 (12 bit) ADC on the SPI bus."""

    chip: str = setting("MCP3008", choices=tuple(ADC_CHIPS), doc="ADC chip")
    channel: int = setting(min=0, max=7, doc="ADC channel (0-7)")
    spi_port: int = setting(0, min=0, max=1, doc="SPI bus (0: GPIO9-11)")
    spi_device: int = setting(0, min=0, max=1, doc="chip select (0: CE0/GPIO8, 1: CE1/GPIO7)")

    def validate(self) -> None:
        if self.channel >= ADC_CHANNELS[self.chip]:
            raise SettingError("channel", f"a {self.chip} has channels 0-{ADC_CHANNELS[self.chip] - 1}")

    @property
    def top(self) -> int:
        """The chip's largest raw reading (full scale: the input at the reference voltage)."""
        return ADC_CHIPS[self.chip]


@dataclass(kw_only=True)
class AdcConfig(AdcChannel):
    """One channel of an MCP3008 (10 bit) or MCP3208 (12 bit) ADC on the SPI bus, read as a level."""

    raw_empty: int = setting(0, min=0, max=4095, doc="raw reading at 0 % (two-point calibration)")
    raw_full: int | None = setting(None, min=0, max=4095, doc="raw reading at 100 %; default: the chip's maximum")
    smoothing: int = setting(5, min=1, max=100, doc="average over this many samples (sloshing, noise)")
    interval_s: float = setting(5.0, min=0.1, max=3600.0, doc="seconds between samples")

    def validate(self) -> None:
        AdcChannel.validate(self)
        top = self.top
        if self.raw_full is None:
            self.raw_full = top
        for key in ("raw_empty", "raw_full"):
            if getattr(self, key) > top:
                raise SettingError(key, f"{getattr(self, key)} is beyond what a {self.chip} reads (0-{top})")
        if self.raw_empty == self.raw_full:
            raise SettingError("raw_full", "must differ from raw_empty")

    def percent(self, raw: float) -> float:
        pct = 100.0 * (raw - self.raw_empty) / (self.raw_full - self.raw_empty)
        return round(min(100.0, max(0.0, pct)), 1)


@dataclass(kw_only=True)
class GpioDriverSettings(StreamSettings):
    """Keys every GPIO driver section accepts besides its inputs."""

    chatter_edges_per_s: float = setting(
        20.0, min=1.0, max=1000.0, doc="more raw edges per second than this (over 2 s) is a loose or cut wire, not bounce"
    )
    chatter_clear_s: float = setting(30.0, min=0.1, max=86400.0, doc="a chattering input is fine again after this quiet")


def input_claims(key: str, inputs: dict[str, InputConfig | None]) -> list[tuple[str, str]]:
    return [(f"{key}.{name}.pin", f"GPIO{cfg.pin}") for name, cfg in inputs.items() if cfg is not None]


# SPI bus pins: (MISO, MOSI, SCLK) and the chip selects, per port
_SPI_PINS = {0: ((9, 10, 11), (8, 7)), 1: ((19, 20, 21), (18, 17))}


def adc_claims(key: str, adc: AdcChannel) -> list[tuple[str, str]]:
    """The channel is the ADC's alone; the bus pins are shared with other ADC users, never with an input."""
    bus, selects = _SPI_PINS[adc.spi_port]
    claims = [(key, f"ADC channel {adc.channel} on SPI{adc.spi_port}.{adc.spi_device}")]
    claims += [(key, f"{SHARED}GPIO{pin}") for pin in (*bus, selects[adc.spi_device])]
    return claims


# -- the pin factory ---------------------------------------------------------------------------------
_factories: dict[str, Any] = {}
_factories_lock = threading.Lock()


def pin_factory(name: str) -> Any:
    """The process-wide factory for `name` ("" = gpiozero's default). One per name, so the simulator and
    the drivers share the same mock pins."""
    from gpiozero import Device
    from gpiozero.exc import BadPinFactory

    with _factories_lock:
        if name in _factories:
            return _factories[name]
        with warnings.catch_warnings(record=True) as fallbacks:
            warnings.simplefilter("always")  # gpiozero warns per factory it skips: the reasons go in our line
            try:
                factory = _make_factory(name)
            except (BadPinFactory, ImportError, OSError, RuntimeError) as err:
                tried = "; ".join(str(w.message) for w in fallbacks)
                raise UnavailableError(
                    f"no GPIO access ({name or 'default'} pin factory): {err}{f' ({tried})' if tried else ''}; "
                    'on a machine without GPIO set gpio.pin_factory = "mock" or run with --simulate'
                ) from None
        if Device.pin_factory is None:
            Device.pin_factory = factory  # gpiozero's helpers (MockSPIDevice) look here
        _factories[name] = factory
        return factory


def _make_factory(name: str) -> Any:
    from gpiozero import Device

    if name == "mock":
        from drivers.gpio_sim import mock_factory

        return mock_factory()
    if name == "":
        return Device._default_pin_factory()  # gpiozero's own preference order (lgpio first)
    from importlib.metadata import entry_points

    for entry in entry_points(group="gpiozero_pin_factories"):
        if entry.name.lower() == name:
            return entry.load()()
    raise ImportError(f"gpiozero has no pin factory named {name!r}")


# -- inputs ------------------------------------------------------------------------------------------
def watch_edges(config: InputConfig, factory: Any, on_edge: Callable[[int, bool], None]) -> Any:
    """A gpiozero InputDevice on the configured pin whose every edge calls `on_edge(ticks, state)` on
    gpiozero's thread, through the public Pin API (`edges`, `bounce`, `when_changed`): no debounce or
    event logic of gpiozero's in between (its `bounce_time` reports the wrong final state of a train).
    gpiozero holds `on_edge` by a weak reference: pass a bound method of the object that owns the device."""
    from gpiozero import InputDevice

    device = InputDevice(config.pin, pull_up=config.pull_up, pin_factory=factory)
    try:
        device.pin.bounce = None
        device.pin.edges = "both"
        device.pin.when_changed = on_edge
    except BaseException:
        device.close()
        raise
    return device


class DebouncedInput:
    """A switch on a pin: raw edges from gpiozero's thread, settled state for the driver's thread."""

    def __init__(self, label: str, config: InputConfig, factory: Any, wake: Callable[[], None]):
        self.label = label
        self.config = config
        self._debounce_s = config.debounce_ms / 1000.0
        self._wake = wake
        self._lock = threading.Lock()
        self._edges: deque[float] = deque(maxlen=_EDGES_KEPT)
        self._settle_at: float | None = None
        self._train_start: float | None = None
        # gpiozero ties "active" to the pull; we read raw levels and apply active_high ourselves.
        self.device = watch_edges(config, factory, self._on_edge)
        self.active = self._read_active()  # the state at start comes from the pin, never from memory
        self.chattering = False
        self._chatter_seen = 0.0

    @property
    def raw(self) -> int:
        return 1 if self.device.pin.state else 0

    def _read_active(self) -> bool:
        return bool(self.raw) == self.config.active_high

    def _on_edge(self, ticks: int, state: bool) -> None:  # gpiozero's thread: note the edge and return
        now = time.monotonic()
        with self._lock:
            self._edges.append(now)
            first = self._settle_at is None
            if first:
                self._train_start = now
            self._settle_at = now + self._debounce_s
        if first:
            self._wake()  # later edges only push the deadline out; the driver re-checks it then

    def settle(self, now: float) -> tuple[bool, float] | None:
        """(new state, mono of the first edge) once the pin has held still for the debounce time."""
        with self._lock:
            if self._settle_at is None:
                # No edge pending: still make sure the pin agrees (an edge lost by the kernel).
                if self._read_active() == self.active:
                    return None
                self._train_start = now
                self._settle_at = now + self._debounce_s
            if now < self._settle_at:
                return None
            started = self._train_start
            self._settle_at = self._train_start = None
        active = self._read_active()
        if active == self.active:
            return None  # bounced and came back
        self.active = active
        return active, started

    def deadline(self) -> float | None:
        with self._lock:
            return self._settle_at

    def edges_per_s(self, now: float) -> float:
        with self._lock:
            while self._edges and self._edges[0] < now - CHATTER_WINDOW_S:
                self._edges.popleft()
            return len(self._edges) / CHATTER_WINDOW_S

    def check_chatter(self, now: float, limit_per_s: float, clear_s: float) -> bool | None:
        """True when chatter starts, False when it has ended (quiet for `clear_s`), else None."""
        rate = self.edges_per_s(now)
        if rate > limit_per_s:
            self._chatter_seen = now
            if not self.chattering:
                self.chattering = True
                return True
        elif self.chattering and rate <= limit_per_s / 2 and now - self._chatter_seen >= clear_s:
            self.chattering = False
            return False
        return None

    def row(self, state: str, now: float) -> dict[str, Any]:
        return {"input": self.label, "pin": self.config.pin, "raw": self.raw, "state": state,
                "edges_per_s": round(self.edges_per_s(now), 1)}

    def close(self) -> None:
        self.device.close()


class PulseCounter:
    """A flow meter's pulses: every activation counts; no debounce (a Hall sensor's output is clean and
    can run at hundreds of Hz)."""

    def __init__(self, label: str, config: InputConfig, factory: Any):
        self.label = label
        self.config = config
        self.count = 0
        self._lock = threading.Lock()
        self._edges: deque[float] = deque(maxlen=_EDGES_KEPT)
        self.device = watch_edges(config, factory, self._on_edge)

    def _on_edge(self, ticks: int, state: bool) -> None:
        with self._lock:
            self._edges.append(time.monotonic())
            if bool(state) == self.config.active_high:
                self.count += 1

    def total(self) -> int:
        with self._lock:
            return self.count

    def row(self, now: float) -> dict[str, Any]:
        with self._lock:
            while self._edges and self._edges[0] < now - CHATTER_WINDOW_S:
                self._edges.popleft()
            rate = len(self._edges) / CHATTER_WINDOW_S
        raw = 1 if self.device.pin.state else 0
        return {"input": self.label, "pin": self.config.pin, "raw": raw, "state": f"{self.total()} pulses",
                "edges_per_s": round(rate, 1)}

    def close(self) -> None:
        self.device.close()


def open_adc(config: AdcChannel, factory: Any) -> Any:
    """gpiozero's MCP3008/MCP3208 on `config`'s channel (gpiozero shares one SPI interface between the
    channels of a chip)."""
    import gpiozero

    # gpiozero shares one SPI bus object per pin set. A closed bus that the cyclic garbage collector
    # finalizes late unregisters whichever bus holds its key by then, and the next ADC would try to
    # take the SPI pins again (GPIOPinInUse). Finalize such leftovers before registering ours.
    gc.collect()
    return getattr(gpiozero, config.chip)(
        channel=config.channel, port=config.spi_port, device=config.spi_device, pin_factory=factory,
    )


class AnalogInput:
    """One ADC channel, smoothed and calibrated to percent."""

    def __init__(self, label: str, config: AdcConfig, factory: Any):
        self.label = label
        self.config = config
        self.device = open_adc(config, factory)
        self._samples: deque[int] = deque(maxlen=config.smoothing)
        self.last_raw: int | None = None

    def sample(self) -> float:
        """Read once; the smoothed, calibrated percent."""
        raw = int(self.device.raw_value)
        self.last_raw = raw
        self._samples.append(raw)
        return self.config.percent(sum(self._samples) / len(self._samples))

    def read_pct(self, ctx: DriverContext) -> float | None:
        """`sample()`, or None once the failure is counted in the driver's health: an SPI hiccup must
        neither stop the driver nor leave a stale level standing as the current one."""
        try:
            return self.sample()
        except Exception as err:  # noqa: BLE001 - an SPI hiccup: report null, count it, keep going
            ctx.error("adc_read", f"cannot read the {self.label} ADC: {err}")
            return None

    def close(self) -> None:
        self.device.close()


# -- the driver base ---------------------------------------------------------------------------------
class GpioDriver(Driver):
    """One thread per driver: it settles inputs, does the periodic work and sleeps in between.

    Subclasses open their inputs in `open()`, report the state read from the pins in `begin()`, react
    to settled changes in `on_change()`, do timed work in `tick()`, and say what to persist in
    `persistent()` (saved within a second of a change, counters at most every minute, and on stop).
    """

    alarm_prefixes: ClassVar[tuple[str, ...]] = ()  # alarms this kind raises (restored across restarts)

    def __init__(self, config: Any, ctx: DriverContext):
        super().__init__(config, ctx)
        self.inputs: dict[str, DebouncedInput] = {}
        self._devices: list[Any] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.tick_s = _TICK_S  # a subclass sampling an ADC or counting flow shortens it
        self._save_soon_at: float | None = None
        self._counters_saved_at = time.monotonic()
        self.saved = ctx.load_state()  # what the last run left: counters, last states, active alarms

    # -- for subclasses ----------------------------------------------------------------------------
    def open(self, factory: Any) -> None:
        raise NotImplementedError

    def begin(self, now: float) -> None:
        raise NotImplementedError

    def on_change(self, name: str, active: bool, mono: float) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        """Periodic work, about once a second."""

    def persistent(self) -> dict[str, Any]:
        return {}

    def timer(self) -> float | None:
        """When a subclass's own deadline (e.g. a door open too long) falls due, or None."""
        return None

    def report(self, values: dict[str, Any]) -> None:
        """Periodic state: only a change wakes the core (it re-sends unchanged state on its own)."""
        if values != self.ctx.last_values:
            self.ctx.reading(values)

    def input_state(self, name: str, active: bool) -> str:
        return "active" if active else "inactive"

    def add_input(self, name: str, config: InputConfig, label: str | None = None) -> DebouncedInput:
        debounced = DebouncedInput(label or f"{self.ctx.name} {name}", config, self._factory, self._wake.set)
        self._devices.append(debounced)
        self.inputs[name] = debounced
        return debounced

    def add_device(self, device: Any) -> Any:
        self._devices.append(device)
        return device

    def save_soon(self) -> None:
        if self._save_soon_at is None:
            self._save_soon_at = time.monotonic() + _SAVE_SOON_S

    def alarm(self, alarm: str, active: bool, *, severity: str = "alarm", mono: float | None = None,
              state: dict[str, Any] | None = None, **details: Any) -> bool:
        """Raise or clear `alarm` to match `active`; True if that changed it (saved soon, for restarts)."""
        if active:
            changed = self.ctx.raise_alarm(alarm, severity, mono=mono, state=state, **details)
        else:
            changed = self.ctx.clear_alarm(alarm, mono=mono, state=state, **details)
        if changed:
            self.save_soon()
        return changed

    def on_chatter(self, name: str, chattering: bool, now: float) -> None:
        if chattering:
            self.ctx.error("chatter", f"{self.inputs[name].label} (GPIO{self.inputs[name].config.pin}) is "
                                      "chattering: check the wiring")

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.open_pins()
        self._thread = self.start_thread(self._run)

    def open_pins(self) -> None:
        """Open the inputs and report the state read from them (start() without the thread)."""
        from gpiozero.exc import GPIOPinInUse, GPIOZeroError, PinFixedPull, PinInvalidPin

        gpio = self.ctx.settings.get("gpio")
        self._factory = pin_factory(getattr(gpio, "pin_factory", ""))
        try:
            self.open(self._factory)
        except (GPIOPinInUse, PinInvalidPin, PinFixedPull) as err:
            self._close_devices()
            raise ConfigError(f"{self.ctx.name}: {err}") from None
        except (GPIOZeroError, OSError) as err:
            self._close_devices()
            raise UnavailableError(f"{self.ctx.name}: cannot open its GPIO inputs: {err}") from None
        known = {name: sev for name, sev in self.saved.get("alarms", {}).items()
                 if name.split(":")[0] in self.alarm_prefixes}
        self.ctx.restore_alarms(known)
        self.begin(time.monotonic())
        self._opened = True
        self._save_now()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if getattr(self, "_opened", False):
            self._opened = False
            self._save_now()  # counters as of now: a clean stop loses none
        self._close_devices()

    def _close_devices(self) -> None:
        for device in self._devices:
            try:
                device.close()
            except Exception:  # noqa: BLE001 - closing the rest matters more
                pass
        self._devices.clear()

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_s
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            timer = self.timer()
            save_at = self._save_soon_at
            due = now >= next_tick or (timer is not None and now >= timer) or (save_at is not None and now >= save_at)
            if due:
                next_tick = now + self.tick_s
            try:
                self.step(now, tick=due)
            except Exception as err:  # noqa: BLE001 - keep watching the pins; the error shows in health
                self.ctx.error("driver_failed", f"{self.ctx.name}: {err!r}")
            self.ctx.progress()
            deadlines = [d for d in (i.deadline() for i in self.inputs.values()) if d is not None]
            timer = self.timer()
            if timer is not None and timer > now:
                deadlines.append(timer)
            if self._save_soon_at is not None:
                deadlines.append(self._save_soon_at)
            if any(i.chattering for i in self.inputs.values()):
                deadlines.append(now + _CHATTER_RECHECK_S)
            wait_s = min([next_tick, *deadlines]) - time.monotonic()
            if wait_s > 0:
                self._wake.wait(wait_s)

    def step(self, now: float, *, tick: bool = True) -> None:
        """Settle inputs; with `tick`, the periodic work too. Tests call it with the time they choose."""
        self._settle(now)
        self._check_chatter(now)  # on every wake: a chattering input wakes us at each settle deadline
        if tick:
            self.tick(now)
            self._maybe_save(now)

    def _settle(self, now: float) -> None:
        for name, debounced in self.inputs.items():
            change = debounced.settle(now)
            if change is not None:
                self.on_change(name, change[0], change[1])
                self.save_soon()

    def _check_chatter(self, now: float) -> None:
        for name, debounced in self.inputs.items():
            changed = debounced.check_chatter(now, self.config.chatter_edges_per_s, self.config.chatter_clear_s)
            if changed is not None:
                self.on_chatter(name, changed, now)

    def _maybe_save(self, now: float) -> None:
        if (self._save_soon_at is not None and now >= self._save_soon_at) or \
                now - self._counters_saved_at >= _SAVE_COUNTERS_S:
            self._save_now(now)

    def _save_now(self, now: float | None = None) -> None:
        data = {**self.persistent(), "alarms": self.ctx.active_alarms()}
        try:
            self.ctx.save_state(data)
        except OSError as err:
            self.ctx.error("state_save", f"cannot save {self.ctx.name} state: {err.strerror}")
            if self._save_soon_at is not None:  # retry at the next tick, not in a busy loop
                self._save_soon_at = (time.monotonic() if now is None else now) + self.tick_s
            return
        self._save_soon_at = None
        self._counters_saved_at = time.monotonic() if now is None else now

    # -- diagnostics -------------------------------------------------------------------------------
    def pins(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [debounced.row(self.input_state(name, debounced.active), now)
                for name, debounced in self.inputs.items()]

    def status(self) -> dict[str, Any]:
        return {**super().status(), "pins": self.pins()}
