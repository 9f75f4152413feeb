"""Simulated generator, water supply and lockers on gpiozero `MockFactory` pins.

The drivers open their pins through the same factory (`gpio.pin_factory = "mock"`), so they run exactly
the code a Pi runs; this module only moves the other end of the wires: it drives input levels (with a
short bounce train, as a real contact makes), pulses the flow meter, and answers the ADC's SPI
conversation with levels that follow the scenario.

The scenario repeats every `CYCLE_S`; its first minute shows every kind of event, and every alarm is
raised once and cleared once (thresholds come from config/simulate.toml, which sets them short).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

from drivers.gpio import ADC_CHIPS, AdcChannel, AdcConfig, InputConfig, pin_factory
from drivers.simulator import QUIET, Simulator

CYCLE_S = 120.0
_BOUNCE_EDGES = 4  # toggles before a contact settles
_BOUNCE_GAP_S = 0.0005
_CHATTER_BURST = 4  # edges a chattering contact makes at a time
# gpiozero's MockPin records every level it was ever driven to (`states`, for assertions in tests): the
# ADCs' SPI clocks alone add ~0.75 MiB a minute. Its public `clear_states()` empties that; this often.
_FORGET_PIN_HISTORY_S = 10.0


class GpioScenario(Simulator):
    """Plays a timeline of pin changes, pulse trains and ADC levels against the mock factory."""

    speed: float = 1.0  # scenario seconds per real second (tests play the minute faster)

    def prepare(self) -> None:
        self.factory = pin_factory("mock")
        self._started = time.monotonic()  # the drivers read the ADC once before the scenario starts
        self._steps: list[tuple[float, Callable[[], None]]] = []
        self._pulses: list[tuple[float, float, float, InputConfig]] = []  # start, end, Hz, input
        for config in self.configs:
            for wire in self.inputs(config):
                if wire is not None:  # at rest (inactive) before the driver opens the pin
                    wire_pin(self.factory, wire.pin, high=not wire.active_high)
            if self.scenario == QUIET:
                self.quiet(config)
            else:
                self.script(config)
        self._steps.sort(key=lambda step: step[0])

    def script(self, config: Any) -> None:
        raise NotImplementedError

    def quiet(self, config: Any) -> None:
        """The quiet scenario: inputs at rest, levels steady (a subclass sets what differs)."""

    def inputs(self, config: Any) -> list[InputConfig | None]:
        raise NotImplementedError

    def at(self, t: float, action: Callable[[], None]) -> None:
        self._steps.append((t, action))

    def set_input(self, t: float, config: InputConfig | None, active: bool) -> None:
        if config is not None:
            self.at(t, lambda: self.drive(config, active))

    def pulses(self, start: float, end: float, hz: float, config: InputConfig | None) -> None:
        if config is not None:
            self._pulses.append((start, end, hz, config))

    def adc_level(self, config: AdcConfig | None, pct_at: Callable[[float], float]) -> None:
        """Have the ADC channel read `pct_at(seconds into the cycle)` percent (of its calibration)."""
        if config is None:
            return
        chip = mock_adc(self.factory, config)

        def raw() -> int:
            pct = pct_at(self.elapsed() % CYCLE_S) / 100.0
            return round(config.raw_empty + pct * (config.raw_full - config.raw_empty))

        chip.levels[config.channel] = raw

    def drive(self, config: InputConfig, active: bool, bounce: bool = True) -> None:
        pin = self.factory.pin(config.pin)
        high = active == config.active_high
        if bounce:
            for i in range(_BOUNCE_EDGES):
                (pin.drive_high if (i % 2 == 0) == high else pin.drive_low)()
                time.sleep(_BOUNCE_GAP_S)
        (pin.drive_high if high else pin.drive_low)()

    def elapsed(self) -> float:
        """Scenario seconds since the start."""
        return (time.monotonic() - self._started) * self.speed

    def release(self) -> None:
        _forget_adcs(self.factory)

    def _run(self) -> None:
        cycle = 0
        step = 0
        pulse_at: dict[int, float] = {}
        forget_at = time.monotonic() + _FORGET_PIN_HISTORY_S
        while not self._stop.is_set():
            if time.monotonic() >= forget_at:
                forget_pin_history(self.factory)
                forget_at = time.monotonic() + _FORGET_PIN_HISTORY_S
            now = self.elapsed()
            in_cycle = now - cycle * CYCLE_S
            while step < len(self._steps) and self._steps[step][0] <= in_cycle:
                self._steps[step][1]()
                step += 1
            wake = [self._steps[step][0] if step < len(self._steps) else CYCLE_S]
            for i, (start, end, hz, config) in enumerate(self._pulses):
                if start <= in_cycle < end:
                    due = pulse_at.setdefault(i, in_cycle)
                    if in_cycle >= due:
                        self.drive(config, True, bounce=False)
                        self.drive(config, False, bounce=False)
                        pulse_at[i] = due + 1.0 / hz
                    wake.append(pulse_at[i])
                else:
                    pulse_at.pop(i, None)
                    if in_cycle < start:
                        wake.append(start)
            if in_cycle >= CYCLE_S:
                cycle, step = cycle + 1, 0
                continue
            wait_s = max(0.0, min(wake) - (self.elapsed() - cycle * CYCLE_S)) / self.speed
            self._stop.wait(min(wait_s, max(0.0, forget_at - time.monotonic())))


class GeneratorSimulator(GpioScenario):
    """Starts at 3 s, a low-oil fault from 10 to 18 s, fuel falls below its low mark and is refilled at
    35 s, stops at 40 s."""

    def inputs(self, config: Any) -> list[InputConfig | None]:
        return [config.running, *config.faults.values()]

    def script(self, config: Any) -> None:
        self.set_input(3.0, config.running, True)
        fault = next(iter(config.faults.values()), None)
        self.set_input(10.0, fault, True)
        self.set_input(18.0, fault, False)
        self.set_input(40.0, config.running, False)
        low = config.fuel_low_pct

        def fuel_pct(t: float) -> float:
            if t < 35.0:  # drains from 12 points above the low mark to 8 below it
                return max(0.0, low + 12.0 - 20.0 * t / 35.0)
            return 85.0 - 10.0 * (t - 35.0) / (CYCLE_S - 35.0)  # refilled

        self.adc_level(config.fuel, fuel_pct)

    def quiet(self, config: Any) -> None:
        self.drive(config.running, True, bounce=False)  # running since before the agent started
        self.adc_level(config.fuel, lambda t: 70.0)


class WaterSimulator(GpioScenario):
    """Flow from 2 to 25 s (longer than continuous_flow_s in the demo config), the tank drains to its low
    mark, the pump refills it past the high mark from 24 to 32 s; a leak from 30 to 36 s."""

    def inputs(self, config: Any) -> list[InputConfig | None]:
        return [config.float_low, config.float_high, config.flow, config.pump, config.leak]

    def script(self, config: Any) -> None:
        hz = 10.0 * config.pulses_per_litre / 60.0  # 10 L/min
        self.pulses(2.0, 25.0, min(hz, 200.0), config.flow)
        self.set_input(15.0, config.pump, True)
        self.set_input(28.0, config.pump, False)
        self.set_input(30.0, config.leak, True)
        self.set_input(36.0, config.leak, False)
        self.set_input(12.0, config.float_low, True)
        self.set_input(20.0, config.float_low, False)
        self.set_input(27.0, config.float_high, True)
        self.set_input(33.0, config.float_high, False)
        low, high = config.tank_low_pct, config.tank_high_pct

        def tank_pct(t: float) -> float:
            if t < 15.0:
                return low + 25.0 - 30.0 * t / 15.0  # falls past the low mark
            if t < 24.0:
                return low - 5.0 + (high + 3.0 - (low - 5.0)) * (t - 15.0) / 9.0  # pump refills past high
            if t < 32.0:
                return high + 3.0
            return high - 10.0 - 20.0 * math.sin(math.pi * (t - 32.0) / (2 * (CYCLE_S - 32.0)))

        self.adc_level(config.tank, tank_pct)

    def quiet(self, config: Any) -> None:
        self.adc_level(config.tank, lambda t: 60.0)


class LockerSimulator(GpioScenario):
    """The first locker: a short visit at 5 s, then left open too long from 18 s. Each other locker: one
    visit, a few seconds apart. The last locker on a pin has its switch wire work loose for two seconds
    at 50 s. A locker on a supervised loop plays `LOOP_SCENARIO` (each further one 2 s later)."""

    def inputs(self, config: Any) -> list[InputConfig | None]:
        door = config.door if isinstance(config.door, InputConfig) else None
        return [door, config.arm_switch]

    def script(self, config: Any) -> None:
        if not isinstance(config.door, InputConfig):
            self._loop(config.door, 2.0 * self._loops().index(config))
            return
        plain = [c for c in self.configs if c not in self._loops()]
        index = plain.index(config)
        if index == 0:
            self.set_input(5.0, config.door, True)
            self.set_input(12.0, config.door, False)
            too_long = min(config.open_too_long_s * self.speed + 3.0, 30.0)
            self.set_input(18.0, config.door, True)
            self.set_input(18.0 + too_long, config.door, False)
        else:
            self.set_input(5.0 + 3.0 * index, config.door, True)
            self.set_input(12.0 + 3.0 * index, config.door, False)
        if index == len(plain) - 1:
            self.at(50.0, lambda: self._chatter(config.door, seconds=2.0))

    def quiet(self, config: Any) -> None:
        if not isinstance(config.door, InputConfig):  # a supervised loop reads closed, steadily
            plan = config.door.plan
            low, high = dict(zip(plan.states, plan.expected, strict=True))["closed"]
            mock_adc(self.factory, config.door).levels[config.door.channel] = lambda: (low + high) // 2

    def _loops(self) -> list[Any]:
        return [c for c in self.configs if not isinstance(c.door, InputConfig)]

    def _loop(self, loop: Any, offset_s: float) -> None:
        """The loop reads what its resistors give in each state of `LOOP_SCENARIO`, with a few counts of
        noise (inside the hysteresis: no event of its own)."""
        plan = loop.plan
        levels = {state: (low + high) // 2 for state, (low, high) in zip(plan.states, plan.expected, strict=True)}
        levels.setdefault("cut", loop.top)
        level = [levels["closed"], 0]  # the reading now (set by the scenario's steps), a sample count

        def set_level(state: str) -> None:
            level[0] = levels.get(state, levels["closed"])  # single EOL: a cut reads as open

        def raw() -> int:  # per sample: kept cheap, the bench measures the simulation too
            level[1] += 1
            return level[0] + level[1] % 5 - 2

        for start, state in LOOP_SCENARIO:
            self.at(start + offset_s, functools.partial(set_level, state))
        mock_adc(self.factory, loop).levels[loop.channel] = raw

    def _chatter(self, door: InputConfig, seconds: float) -> None:
        pin = self.factory.pin(door.pin)
        end = time.monotonic() + seconds / self.speed
        # 100 edges per scenario second (five times the default chatter limit), in bursts of a few as a
        # loose contact makes them -- and a sleep per burst, not per edge, for the simulator's own CPU.
        gap_s = _CHATTER_BURST / 100.0 / self.speed
        while time.monotonic() < end and not self._stop.is_set():
            for _ in range(_CHATTER_BURST // 2):
                pin.drive_high()
                pin.drive_low()
            time.sleep(gap_s)
        self.drive(door, False)


def forget_pin_history(factory: Any) -> None:
    """Empty the state log of every mock pin (the simulator drives them for months, not for a test)."""
    for pin in list(factory.pins.values()):
        pin.clear_states()


# (scenario second, what the loop does): a visit; the paper-clip attack (the pair bridged, the door opened
# behind it, the clip taken away before the door is shut); the cable cut, then repaired.
LOOP_SCENARIO = ((0.0, "closed"), (6.0, "open"), (10.0, "closed"), (20.0, "short"), (30.0, "open"),
                 (34.0, "closed"), (40.0, "cut"), (46.0, "closed"))


class TamperSimulator(GpioScenario):
    """The enclosure is opened at 55 s and shut at 58 s."""

    def inputs(self, config: Any) -> list[InputConfig | None]:
        return [config]

    def script(self, config: Any) -> None:
        self.set_input(55.0, config, True)
        self.set_input(58.0, config, False)


def wire_pin(factory: Any, pin: int, *, high: bool) -> Any:
    """A mock input held `high` or low by what is wired to it, whatever pull the driver sets."""
    return factory.pin(pin, pin_class=_wired_pin_class(), level=high)


@functools.cache
def _wired_pin_class() -> type:
    from gpiozero.pins.mock import MockPin

    class WiredPin(MockPin):
        """A mock input with something wired to it: the contact, not the pull resistor, sets its level
        (a plain MockPin follows its pull, which would make every door open at start)."""

        def __init__(self, factory: Any, info: Any, level: bool = False):
            self._wired = level
            super().__init__(factory, info)

        def _set_pull(self, value: str) -> None:
            level = self._wired
            super()._set_pull(value)
            (self.drive_high if level else self.drive_low)()

        def drive_high(self) -> None:
            self._wired = True
            super().drive_high()

        def drive_low(self) -> None:
            self._wired = False
            super().drive_low()

    return WiredPin


# -- a mock MCP3008/MCP3208 on the mock SPI pins ------------------------------------------------------
_adcs: dict[tuple[int, int, int], Any] = {}


def mock_adc(factory: Any, config: AdcChannel) -> Any:
    """The mock chip on `config`'s SPI bus; set `levels[channel]` to a callable returning the raw reading."""
    key = (id(factory), config.spi_port, config.spi_device)
    if key not in _adcs:
        _adcs[key] = _mock_adc_class()(factory, config.spi_device, ADC_CHIPS[config.chip].bit_length())
    return _adcs[key]


def _forget_adcs(factory: Any) -> None:
    for key in [k for k in _adcs if k[0] == id(factory)]:
        _adcs.pop(key).close()


def mock_factory() -> Any:
    """gpiozero's MockFactory, with SPI on the hardware pins answered as a Pi's kernel SPI driver does:
    one transfer per transaction. gpiozero's MCP3008/MCP3208 code runs unchanged; only the wire below it
    differs. (gpiozero's own mock SPI bit-bangs every clock edge through mock pins: 0.2 ms of CPU per
    reading, which a supervised loop sampled at 20 Hz would make the simulation's largest cost.)"""
    return _mock_factory_class()()


def reset_mock_hardware(factory: Any) -> None:
    """Fresh pins and no mock chips (between tests)."""
    _forget_adcs(factory)
    factory.reset()


def _mock_adc_class() -> type:
    from gpiozero.pins.mock import MockSPIDevice

    class MockMcp3xxx(MockSPIDevice):
        """The chip's side of the conversation: start bit, single/differential bit, 3 channel bits, then
        a null bit and the result, most significant bit first."""

        def __init__(self, factory: Any, device: int, bits: int):
            super().__init__(11, 10, 9, 8 if device == 0 else 7, pin_factory=factory)
            self.bits = bits
            self.levels: dict[int, Callable[[], int]] = {}
            self.phase = "idle"

        def on_start(self) -> None:
            super().on_start()
            self.phase = "idle"

        def on_bit(self) -> None:
            if self.phase == "idle" and self.rx_buf[-1]:
                self.phase, self.rx_buf = "mode", []
            elif self.phase == "mode":
                self.phase, self.rx_buf = "channel", []
            elif self.phase == "channel" and len(self.rx_buf) == 3:
                level = self.levels.get(self.rx_word())
                raw = 0 if level is None else max(0, min(2**self.bits - 1, level()))
                self.tx_word(raw, self.bits + 2)
                self.phase = "result"

        def exchange(self, words: list[int]) -> list[int]:
            """One whole transaction (kernel SPI): the request's start bit, single/differential bit and
            channel bits are followed by the result, which fills the last bits of the reply."""
            request = int.from_bytes(bytes(words), "big")
            level = self.levels.get((request >> (self.bits + 2)) & 7)
            raw = 0 if level is None else max(0, min(2**self.bits - 1, level()))
            return list(raw.to_bytes(len(words), "big"))

    return MockMcp3xxx


@functools.cache
def _mock_factory_class() -> type:
    from gpiozero.devices import SharedMixin
    from gpiozero.pins import SPI
    from gpiozero.pins.mock import MockFactory
    from gpiozero.pins.pi import spi_port_device

    class MockKernelSPI(SPI):
        """Hardware SPI (GPIO 8-11) on mock pins: the pins are reserved as the kernel's driver holds
        them, and each transfer is handed whole to the mock chip on that chip select."""

        def __init__(self, clock_pin, mosi_pin, miso_pin, select_pin, pin_factory):
            self._port, self._device = spi_port_device(clock_pin, mosi_pin, miso_pin, select_pin)
            self._open = False
            super().__init__(pin_factory=pin_factory)
            self.pin_factory.reserve_pins(self, clock_pin, mosi_pin, miso_pin, select_pin)
            self._open = True

        def _conflicts_with(self, other: Any) -> bool:
            return not (isinstance(other, MockKernelSPI) and
                        (self._port, self._device) != (other._port, other._device))

        def close(self) -> None:
            # Once only: gpiozero closes devices again from __del__, and a garbage collection inside
            # the factory's reservation lock must not take that lock again (it deadlocks).
            if self._open:
                self._open = False
                self.pin_factory.release_all(self)
            super().close()

        @property
        def closed(self) -> bool:
            return not self._open

        def _get_clock_mode(self) -> int:
            return 0

        def transfer(self, data: list[int]) -> list[int]:
            chip = _adcs.get((id(self.pin_factory), self._port, self._device))
            return [0] * len(data) if chip is None else chip.exchange(data)

    class MockKernelSPIShared(SharedMixin, MockKernelSPI):
        @classmethod
        def _shared_key(cls, clock_pin, mosi_pin, miso_pin, select_pin, pin_factory):
            return (clock_pin, select_pin)

    class SimFactory(MockFactory):
        def _get_spi_class(self, shared: bool, hardware: bool) -> type:
            if hardware:
                return MockKernelSPIShared if shared else MockKernelSPI
            return super()._get_spi_class(shared, hardware)

    return SimFactory
