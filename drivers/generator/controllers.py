"""Register maps of the genset controllers, and the one place where their replies are validated.

A controller's reply is hostile input: a register may hold a "not available" sentinel, a value no
engine can have (a miswired sender, a controller mid-reboot, a wrong unit id answering), or bytes from
another device on the bus. `decode()` turns raw registers into a `ControllerReading` whose every
field is None or a finite number within its physical range; everything behind it trusts the reading.

Addresses are 0-based protocol addresses (what goes on the wire), not "4xxxx" register numbers.

DSE (GenComm, DSE 7xxx/8xxx/61xx/72xx/73xx): page N starts at N * 256.
  page 4  basic instrumentation  +0 oil pressure kPa (U16), +1 coolant temperature °C (S16),
                                 +3 fuel level % (U16), +5 battery 0.1 V (U16), +6 engine speed rpm (U16)
  page 6  derived                +0..1 generator total watts (S32)
  page 7  accumulated            +6..7 engine run time s (U32)
  page 8  alarm conditions       +1..+18: four 4-bit condition codes per register, highest nibble first
  Sentinels: GenComm reserves the top eight values of each type (0xFFF8-0xFFFF unsigned,
  0x7FF8-0x7FFF signed, and the same for 32 bits) for "not fitted / over / under / sensor fault / ...".

ComAp (InteliLite 4 / InteliGen 500 G2 default map, as Victron Venus OS reads it): registers vary with
firmware and configuration (InteliConfig exports the table), so verify against the controller's own.
  1000 engine speed rpm (U16), 1001 generator kW (S16), 1053 battery 0.1 V (U16), 1055 fuel level %
  (U16), 1291..1292 run hours in 0.1 h (U32), 1325 engine state (enum), 4214 alarm list count,
  4215 + 27 * i the i-th alarm list line (54 ASCII bytes, e.g. "Sd Oil Press" or "Wrn Batt Volt").
  Sentinels: 0x8000 (S16 / U16 "invalid"), 0x80000000 (32 bits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from drivers.generator import FAIL_TO_START

DSE_CONDITIONS = {2: "warning", 3: "alarm", 4: "alarm", 5: "alarm", 10: "warning"}  # warning, shutdown,
# electrical trip, controlled shutdown, active indication; 0/1 disabled/inactive, 8/9 inactive indication,
# 15 unimplemented -- every other code is nonsense and counted as such.
_DSE_QUIET = {0, 1, 8, 9, 15}

# (register within page 8, nibble: 3 = bits 13-16 ... 0 = bits 1-4) -> alarm name (GenComm page 8)
DSE_ALARMS: dict[tuple[int, int], str] = {}
_DSE_NAMES = (
    "emergency_stop", "low_oil_pressure", "high_coolant_temperature", "low_coolant_temperature",
    "under_speed", "over_speed", "generator_under_frequency", "generator_over_frequency",
    "generator_low_voltage", "generator_high_voltage", "battery_low_voltage", "battery_high_voltage",
    "charge_alternator_failure", "fail_to_start", "fail_to_stop", "generator_fail_to_close",
    "mains_fail_to_close", "oil_pressure_sender_fault", "loss_of_magnetic_pickup", "magnetic_pickup_open_circuit",
    "generator_high_current", "calibration_lost", "low_fuel_level", "can_ecu_warning",
    "can_ecu_shutdown", "can_ecu_data_fail", "low_oil_level_switch", "high_temperature_switch",
    "low_fuel_level_switch", "expansion_unit_watchdog", "kw_overload", "negative_phase_sequence_current",
    "earth_fault_trip", "generator_phase_rotation", "auto_voltage_sense_fail", "maintenance_due",
    "loading_frequency", "loading_voltage", "fuel_usage_running", "fuel_usage_stopped",
    "protections_disabled", "protections_blocked", "generator_short_circuit", "mains_high_current",
    "mains_earth_fault", "mains_short_circuit", "ecu_protect", "ecu_malfunction",
    "ecu_information", "ecu_shutdown", "ecu_warning", "ecu_electrical_trip",
    "ecu_after_treatment", "ecu_water_in_fuel", "generator_reverse_power", "generator_positive_var",
    "generator_negative_var", "lcd_heater_low_voltage", "lcd_heater_high_voltage", "def_level_low",
    "scr_inducement", "msc_old_version", "msc_id_alarm", "msc_failure",
    "msc_priority_error", "fuel_sender_open_circuit", "over_speed_runaway", "over_frequency_runaway",
    "coolant_sensor_open_circuit", "remote_display_link_lost",
)
for _i, _name in enumerate(_DSE_NAMES):
    DSE_ALARMS[(1 + _i // 4, 3 - _i % 4)] = _name
DSE_ALARM_REGISTERS = 18

COMAP_STATES = ("init", "ready", "not_ready", "prestart", "cranking", "pause", "starting", "running", "loaded",
                "unloading", "cooling", "stop", "shutdown", "ventilate", "emergency_manual", "soft_load",
                "wait_stop", "shutdown_ventilate")
_COMAP_RUNNING = {"running", "loaded", "unloading", "cooling", "soft_load"}
# Alarm list line prefix -> severity: warning, shutdown, breaker open & cool-down, slow stop, sensor fail
COMAP_CLASSES = {"wrn": "warning", "sd": "alarm", "boc": "alarm", "stp": "alarm", "fls": "warning"}
COMAP_RECORD = 27
COMAP_MAX_ALARMS = 16  # the alarm list holds 16 lines

# Physical ranges: outside them a value is a fault of the reply, not a reading.
RANGES = {
    "fuel_pct": (0.0, 100.0),
    "battery_v": (0.0, 60.0),
    "rpm": (0.0, 6000.0),
    "run_hours": (0.0, 1_000_000.0),
    "load_kw": (-5000.0, 5000.0),
    "oil_kpa": (0.0, 2000.0),
    "coolant_c": (-50.0, 200.0),
}


@dataclass
class ControllerReading:
    """One poll, validated: None where the controller has no (believable) value."""

    rpm: float | None = None
    fuel_pct: float | None = None
    run_hours: float | None = None
    battery_v: float | None = None
    load_kw: float | None = None
    oil_kpa: float | None = None
    coolant_c: float | None = None
    engine_state: str | None = None
    running: bool | None = None
    alarms: dict[str, str] = field(default_factory=dict)  # name -> severity (warning | alarm)
    rejected: list[str] = field(default_factory=list)  # fields whose value was absurd (counted as errors)


class Controller:
    """A register map: what to read, and how to turn it into a reading."""

    name: str = ""

    def __init__(self, running_rpm: float):
        self.running_rpm = running_rpm

    def blocks(self) -> list[tuple[int, int]]:
        """(address, count) reads of one poll."""
        raise NotImplementedError

    def more_blocks(self, regs: dict[int, int]) -> list[tuple[int, int]]:
        """Reads that depend on the first ones (an alarm list's length)."""
        return []

    def decode(self, regs: dict[int, int]) -> ControllerReading:
        raise NotImplementedError


class _Values:
    """Reads typed values out of a register dict, rejecting sentinels and out-of-range values."""

    def __init__(self, regs: dict[int, int], reading: ControllerReading, sentinel: str):
        self.regs = regs
        self.reading = reading
        self.sentinel = sentinel  # "gencomm" | "comap"

    def number(self, name: str, address: int, *, words: int = 1, signed: bool = False, scale: float = 1.0) -> None:
        raw = 0
        for i in range(words):
            value = self.regs.get(address + i)
            if value is None or not 0 <= value <= 0xFFFF:
                self.reading.rejected.append(name)
                return
            raw = (raw << 16) | value
        bits = 16 * words
        if self._unavailable(raw, bits, signed):
            return  # the controller says it has none: null, and no error
        if signed and raw >= 1 << (bits - 1):
            raw -= 1 << bits
        value = raw * scale
        low, high = RANGES[name]
        if not low <= value <= high:
            self.reading.rejected.append(name)
            return
        setattr(self.reading, name, round(value, 3))

    def _unavailable(self, raw: int, bits: int, signed: bool) -> bool:
        top = (1 << (bits - 1 if signed else bits)) - 1
        if self.sentinel == "gencomm":
            return top - 7 <= raw <= top
        return raw == 1 << (bits - 1)  # ComAp: 0x8000 / 0x80000000


class DseGenComm(Controller):
    name = "dse"

    def blocks(self) -> list[tuple[int, int]]:
        return [(4 * 256, 7), (6 * 256, 2), (7 * 256 + 6, 2), (8 * 256 + 1, DSE_ALARM_REGISTERS)]

    def decode(self, regs: dict[int, int]) -> ControllerReading:
        reading = ControllerReading()
        values = _Values(regs, reading, "gencomm")
        values.number("oil_kpa", 1024)
        values.number("coolant_c", 1025, signed=True)
        values.number("fuel_pct", 1027)
        values.number("battery_v", 1029, scale=0.1)
        values.number("rpm", 1030)
        values.number("load_kw", 6 * 256, words=2, signed=True, scale=0.001)
        values.number("run_hours", 7 * 256 + 6, words=2, scale=1 / 3600)
        for register in range(1, DSE_ALARM_REGISTERS + 1):
            raw = regs.get(8 * 256 + register)
            if raw is None:
                reading.rejected.append("alarms")
                continue
            for nibble in range(4):
                code = (raw >> (4 * nibble)) & 0xF
                if code in _DSE_QUIET:
                    continue
                name = DSE_ALARMS.get((register, nibble))
                severity = DSE_CONDITIONS.get(code)
                if name is None or severity is None:
                    reading.rejected.append("alarms")  # a code GenComm does not define, or an unnamed slot
                    continue
                reading.alarms[name] = severity
        if reading.rpm is not None:
            reading.running = reading.rpm >= self.running_rpm
            stopped_by = any(s == "alarm" for s in reading.alarms.values())
            reading.engine_state = "running" if reading.running else ("shutdown" if stopped_by else "stopped")
        return reading


class ComApInteliLite(Controller):
    name = "comap"

    def blocks(self) -> list[tuple[int, int]]:
        return [(1000, 2), (1053, 3), (1291, 2), (1325, 1), (4214, 1)]

    def more_blocks(self, regs: dict[int, int]) -> list[tuple[int, int]]:
        count = regs.get(4214, 0)
        count = count if 0 <= count <= COMAP_MAX_ALARMS else 0  # nonsense counts are rejected in decode()
        reads = []
        for first in range(0, count, 4):  # four 27-register lines per read (the protocol caps one at 125)
            lines = min(4, count - first)
            reads.append((4215 + COMAP_RECORD * first, COMAP_RECORD * lines))
        return reads

    def decode(self, regs: dict[int, int]) -> ControllerReading:
        reading = ControllerReading()
        values = _Values(regs, reading, "comap")
        values.number("rpm", 1000)
        values.number("load_kw", 1001, signed=True)
        values.number("battery_v", 1053, scale=0.1)
        values.number("fuel_pct", 1055)
        values.number("run_hours", 1291, words=2, scale=0.1)
        state = regs.get(1325)
        if state is not None and state < len(COMAP_STATES):
            reading.engine_state = COMAP_STATES[state]
        elif state != 0x8000:
            reading.rejected.append("engine_state")
        count = regs.get(4214, 0)
        if not 0 <= count <= COMAP_MAX_ALARMS:
            reading.rejected.append("alarms")
            count = 0
        for i in range(count):
            words = [regs.get(4215 + COMAP_RECORD * i + j) for j in range(COMAP_RECORD)]
            parsed = parse_comap_line(words)
            if parsed is None:
                reading.rejected.append("alarms")
                continue
            reading.alarms[parsed[0]] = parsed[1]
        if reading.engine_state is not None:
            reading.running = reading.engine_state in _COMAP_RUNNING
        elif reading.rpm is not None:
            reading.running = reading.rpm >= self.running_rpm
        return reading


_LINE = re.compile(r"^\*?([A-Za-z]{2,3})\s+([A-Za-z0-9 .+/-]{1,40})$")
_COMAP_FAIL_TO_START = {"start_fail", "start_failed", "fail_to_start"}


def parse_comap_line(words: list[int | None]) -> tuple[str, str] | None:
    """An alarm list line ("Sd Oil Press", "*Wrn Batt Volt") -> (name, severity), or None if it is not
    printable ASCII of that shape."""
    if any(w is None or not 0 <= w <= 0xFFFF for w in words):
        return None
    raw = b"".join(w.to_bytes(2, "big") for w in words).rstrip(b"\0 ")  # type: ignore[union-attr]
    if not raw or any(b < 0x20 or b > 0x7E for b in raw):
        return None
    match = _LINE.match(raw.decode("ascii").strip())
    if match is None:
        return None
    severity = COMAP_CLASSES.get(match.group(1).lower())
    if severity is None:
        return None
    name = re.sub(r"[^a-z0-9]+", "_", match.group(2).lower()).strip("_")[:32]
    if not name:
        return None
    return (FAIL_TO_START if name in _COMAP_FAIL_TO_START else name), severity


def comap_line(text: str) -> list[int]:
    """The 27 registers of an alarm list line (for the simulator)."""
    raw = text.encode("ascii")[: 2 * COMAP_RECORD].ljust(2 * COMAP_RECORD, b"\0")
    return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]


CONTROLLERS: dict[str, type[Controller]] = {"dse": DseGenComm, "comap": ComApInteliLite}


def controller(name: str, running_rpm: float) -> Controller:
    return CONTROLLERS[name](running_rpm)


def as_fields(reading: ControllerReading) -> dict[str, Any]:
    return {"battery_v": reading.battery_v, "rpm": reading.rpm, "engine_state": reading.engine_state,
            "load_kw": reading.load_kw, "oil_kpa": reading.oil_kpa, "coolant_c": reading.coolant_c}
