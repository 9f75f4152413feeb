"""A simulated genset controller: a real pymodbus server (TCP on loopback, or RTU over a pty pair)
serving the DSE GenComm or ComAp register map of a `Genset` the scenario moves.

The driver under simulation runs exactly the code a box runs against a real controller; only the far
end of the link is made up. The scenario repeats every `CYCLE_S` scenario seconds: a start, load, a
refuel, a stop, a night-time fuel drop while stopped (the theft signature), a second start and a
low-oil shutdown, then the alarm is reset. config/simulate-modbus.toml sets the fuel thresholds short
enough for every alarm to be raised and cleared within the first two minutes.
"""

from __future__ import annotations

import os
import random
import select
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from drivers.generator.controllers import (
    COMAP_RECORD,
    COMAP_STATES,
    DSE_ALARM_REGISTERS,
    DSE_ALARMS,
    comap_line,
)
from drivers.simulator import QUIET, Simulator

CYCLE_S = 120.0
REGISTERS = 4800  # covers both maps (DSE page 8, ComAp's alarm list at 4215 + 16 lines)
_DSE_CODES = {"warning": 2, "alarm": 3, "trip": 4}
# the scenario's alarms, as each controller names them
ALARM_NAMES = {"dse": {"low_oil": "low_oil_pressure", "battery": "battery_low_voltage"},
               "comap": {"low_oil": "Oil Press", "battery": "Batt Volt"}}


@dataclass
class Genset:
    """What the controller knows; `registers()` encodes it in the controller's map."""

    controller: str
    rpm: int = 0
    fuel_pct: float = 50.0
    run_s: float = 3600.0 * 1520.4
    battery_v: float = 24.6
    load_kw: float = 0.0
    oil_kpa: int = 0
    coolant_c: int = 25
    state: str = "ready"  # ComAp engine state
    alarms: dict[str, str] = field(default_factory=dict)  # controller name -> "warning" | "alarm" | "trip"
    raw: dict[int, int] = field(default_factory=dict)  # registers forced to a value (hostile replies)

    def register(self, address: int) -> int:
        if address in self.raw:
            return self.raw[address]
        return self._encode().get(address, 0)

    def _encode(self) -> dict[int, int]:
        return _dse(self) if self.controller == "dse" else _comap(self)


def _dse(g: Genset) -> dict[int, int]:
    watts = round(g.load_kw * 1000) & 0xFFFFFFFF
    run_s = round(g.run_s)
    regs = {1024: g.oil_kpa, 1025: g.coolant_c & 0xFFFF, 1026: 0xFFFF, 1027: round(g.fuel_pct),
            1028: 276, 1029: round(g.battery_v * 10), 1030: g.rpm, 1536: watts >> 16, 1537: watts & 0xFFFF,
            1798: run_s >> 16, 1799: run_s & 0xFFFF}
    for register in range(1, DSE_ALARM_REGISTERS + 1):
        value = 0
        for nibble in range(4):
            name = DSE_ALARMS.get((register, nibble))
            code = _DSE_CODES[g.alarms[name]] if name in g.alarms else 1  # 1: implemented, not active
            value |= code << (4 * nibble)
        regs[8 * 256 + register] = value
    return regs


def _comap(g: Genset) -> dict[int, int]:
    kw = round(g.load_kw) & 0xFFFF
    tenths = round(g.run_s / 360)
    regs = {1000: g.rpm, 1001: kw, 1053: round(g.battery_v * 10), 1054: 0x8000, 1055: round(g.fuel_pct),
            1291: tenths >> 16, 1292: tenths & 0xFFFF, 1325: COMAP_STATES.index(g.state), 4214: len(g.alarms)}
    for i, (name, severity) in enumerate(sorted(g.alarms.items())):
        prefix = {"warning": "Wrn", "alarm": "Sd", "trip": "BOC"}[severity]
        for j, word in enumerate(comap_line(f"{prefix} {name}")):
            regs[4215 + COMAP_RECORD * i + j] = word
    return regs


class PtyPair:
    """Two pseudo-terminals joined back to back, like a USB RS-485 adapter and the controller on the
    other end of the pair: the server opens `server_path`, the driver `client_path`. `garble` corrupts
    the next reply in transit (noise on the pair: a CRC error)."""

    def __init__(self, workdir: Path, name: str = "rs485"):
        self._fds: list[int] = []
        self._ends = []
        for end in ("ctl", "box"):
            master, slave = os.openpty()
            tty.setraw(slave)
            link = workdir / f"{name}-{end}"
            link.unlink(missing_ok=True)
            link.symlink_to(os.ttyname(slave))
            self._ends.append((master, link))
            self._fds += [master, slave]
        self.server_path = str(self._ends[0][1])
        self.client_path = str(self._ends[1][1])
        self.garble = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="sim-rs485", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        ctl, box = self._ends[0][0], self._ends[1][0]
        while not self._stop.is_set():
            ready, _, _ = select.select([ctl, box], [], [], 0.2)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue  # the other end is not open yet (EIO): nothing to carry
                if fd == ctl and self.garble and data:
                    self.garble = False
                    data = bytes([data[0], data[1] ^ 0x55]) + data[2:]
                try:
                    os.write(box if fd == ctl else ctl, data)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        for _, link in self._ends:
            link.unlink(missing_ok=True)


class ControllerSimulator(Simulator):
    """Serves the configured controller's map and plays the scenario against it."""

    speed: float = 1.0

    def prepare(self) -> None:
        from drivers.generator.modbus_adapter import RegisterServer

        config = self.configs[0]
        self.genset = Genset(config.controller)
        self.pty: PtyPair | None = None
        if config.transport == "tcp":
            self.server = RegisterServer(self.genset.register, size=REGISTERS, unit=config.unit, tcp=("127.0.0.1", 0))
            self.server.start()
            config.host, config.port = "127.0.0.1", self.server.port
        else:
            self.pty = PtyPair(self.workdir)
            self.server = RegisterServer(self.genset.register, size=REGISTERS, unit=config.unit,
                                         device=self.pty.server_path, baud=config.baud, parity=config.parity)
            self.server.start()
            config.device = self.pty.client_path
        self._rng = random.Random(16)

    def release(self) -> None:
        self.server.stop()
        if self.pty is not None:
            self.pty.close()

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            if self.scenario == QUIET:
                idle(self.genset)
            else:
                t = ((time.monotonic() - started) * self.speed) % CYCLE_S
                play(self.genset, t, self._rng.uniform(-0.4, 0.4))
            self._stop.wait(0.25 / self.speed)


def idle(g: Genset) -> None:
    """The quiet scenario (a parked box): the set runs with a steady light load, fuel steady at 70 %."""
    g.rpm, g.state, g.load_kw = 1500, "loaded", 4.0
    g.oil_kpa, g.coolant_c, g.battery_v, g.fuel_pct = 380, 82, 27.4, 70.0
    g.run_s += 0.25
    g.alarms = {}


def play(g: Genset, t: float, noise_pct: float = 0.0) -> None:
    """The genset `t` scenario seconds into the cycle (`noise_pct`: the sender's jitter)."""
    names = ALARM_NAMES[g.controller]
    running = 5.0 <= t < 35.0 or 62.0 <= t < 80.0
    cranking = 3.0 <= t < 5.0 or 60.0 <= t < 62.0
    g.rpm = 1500 if running else (180 if cranking else 0)
    g.state = "cranking" if cranking else ("loaded" if running and g.load_kw else
                                          "running" if running else ("shutdown" if 80.0 <= t < 95.0 else "ready"))
    g.load_kw = 12.5 if 8.0 <= t < 30.0 or 65.0 <= t < 80.0 else 0.0
    g.oil_kpa = 380 if running else 0
    g.coolant_c = 82 if running else 30
    g.battery_v = 27.4 if running else 24.6
    # fuel: 40 % at the start, ~0.3 % per running second, a refuel to 80 % at 20 s, 20 points stolen
    # between 45 and 50 s (stopped), the same again while the set runs from 62 s
    fuel = 40.0 - 0.3 * max(0.0, min(t, 20.0) - 5.0)
    if t >= 20.0:
        fuel = 80.0 - 0.3 * max(0.0, min(t, 35.0) - 20.0)
    if t >= 45.0:
        fuel -= 20.0 * min(1.0, (t - 45.0) / 5.0)
    if t >= 62.0:
        fuel -= 0.3 * (min(t, 80.0) - 62.0)
    g.fuel_pct = max(0.0, min(100.0, fuel + noise_pct))
    if running:
        g.run_s += 0.25  # roughly: the scenario only needs run hours that grow while running
    g.alarms = {}
    if 79.0 <= t < 95.0:
        g.alarms[names["low_oil"]] = "alarm"  # shutdown; reset at 95 s
    if 90.0 <= t < 100.0:
        g.alarms[names["battery"]] = "warning"
