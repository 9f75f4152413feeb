"""The [generator] section: the source ("gpio" | "modbus"), each source's keys, the fuel accounting.

One section for both sources, as the product's config surface names it. `validate()` refuses the GPIO
keys under source = "modbus": fault contacts that are never read would be alarms silently disarmed.
The Modbus keys under source = "gpio" are inert (nothing is polled) and accepted, so one commented
example documents both sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.schema import SettingError, setting
from drivers.gpio import AdcConfig, GpioDriverSettings, InputConfig

_FAULT_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
_HOST = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")
BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
_GPIO_KEYS = ("running", "faults", "fuel", "cranking")
_FIELDS = ("fuel_pct", "run_hours", "fuel_l", "fuel_lph", "hours_to_empty", "battery_v", "rpm", "load_kw", "oil_kpa",
           "coolant_c")  # the numeric fields of the payload, the keys a deadband may name


@dataclass(kw_only=True)
class GeneratorConfig(GpioDriverSettings):
    source: str = setting("gpio", choices=("gpio", "modbus"),
                          doc="gpio: contacts and an ADC fuel sender; modbus: the genset controller")
    # -- source = "gpio" -------------------------------------------------------------------------
    running: InputConfig | None = setting(None, doc="input active while the generator runs (e.g. a relay on its output)")
    faults: dict[str, InputConfig] = setting({}, doc="named fault inputs, each raising generator_fault:<name>")
    fuel: AdcConfig | None = setting(None, doc="fuel level sender on an ADC channel; absent: fuel_pct is null")
    cranking: InputConfig | None = setting(None, doc="input active while the starter motor is engaged: a start "
                                                      "not running within fail_to_start_s raises fail_to_start")
    # -- source = "modbus" -----------------------------------------------------------------------
    controller: str | None = setting(None, choices=("dse", "comap"),
                                     doc="dse: Deep Sea GenComm (7xxx/8xxx); comap: ComAp InteliLite")
    transport: str = setting("rtu", choices=("rtu", "tcp"), doc="rtu: RS-485 (a USB adapter); tcp: Modbus TCP")
    device: str = setting("", doc="RTU: the serial port, e.g. /dev/ttyUSB0 (a /dev/serial/by-id/ link survives replugging)")
    baud: int = setting(9600, choices=BAUDS, doc="RTU: the controller's Modbus baud rate")
    parity: str = setting("N", choices=("N", "E", "O"), doc="RTU: N, E or O (8 data bits, 1 stop bit)")
    host: str = setting("", doc="TCP: the controller's address")
    port: int = setting(502, min=1, max=65535, doc="TCP: the controller's Modbus port")
    unit: int = setting(1, min=1, max=247, doc="the controller's Modbus slave id (unit id)")
    poll_s: float = setting(5.0, min=0.5, max=3600.0, doc="seconds between polls of the controller")
    timeout_s: float = setting(1.0, min=0.1, max=30.0, doc="a reply later than this is a timeout")
    lost_after: int = setting(3, min=1, max=100, doc="failed polls in a row before controller_lost is raised")
    backoff_max_s: float = setting(60.0, min=1.0, max=3600.0, doc="longest wait between polls of a lost controller")
    running_rpm: float = setting(300.0, min=1.0, max=5000.0,
                                 doc="engine speed at or above which the set counts as running (no state register)")
    fail_to_start_s: float = setting(60.0, min=5.0, max=3600.0,
                                     doc="a start (cranking input, controller starting) this long without running "
                                         "raises fail_to_start")
    # -- fuel (both sources) ---------------------------------------------------------------------
    fuel_low_pct: float = setting(20.0, min=0.0, max=100.0, doc="fuel_low is raised at or below this")
    fuel_low_clear_pct: float = setting(25.0, min=0.0, max=100.0, doc="and cleared at or above this (hysteresis)")
    tank_litres: float | None = setting(None, min=1.0, max=100000.0,
                                        doc="usable tank volume; absent: no fuel_l, fuel_lph, refuels or theft watch")
    fuel_filter_samples: int = setting(5, min=1, max=100, doc="fuel_l is the median of this many fuel samples")
    fuel_hold_s: float = setting(300.0, min=0.0, max=86400.0,
                                 doc="a refuel or a drop counts once it has held this long (slosh, noise)")
    fuel_settle_s: float = setting(600.0, min=0.0, max=86400.0,
                                   doc="after a stop the level settles this long before drops are watched")
    fuel_drop_min_l: float = setting(20.0, min=0.1, max=100000.0,
                                     doc="fuel_drop_while_stopped: the level fell at least this far while stopped")
    refuel_min_l: float = setting(20.0, min=0.1, max=100000.0, doc="a rise of at least this much is a refuel")
    fuel_rate_window_s: float = setting(1800.0, min=60.0, max=86400.0,
                                        doc="fuel_lph is the consumption over this much running")
    deadband: dict[str, float] = setting(
        # run hours count in whole hours, and hours_to_empty follows fuel (which has its own deadband):
        # a running generator is no news every six minutes on a link billed per MB
        {"fuel_pct": 2.0, "run_hours": 1.0, "fuel_l": 5.0, "fuel_lph": 0.5, "hours_to_empty": float("inf"),
         "battery_v": 0.2, "rpm": 50.0, "load_kw": 0.5, "oil_kpa": 20.0, "coolant_c": 2.0},
        min=0.0, inf_ok=True, keys=_FIELDS, doc="per field: a smaller change is no change (inf: never re-sent for it)")

    def validate(self) -> None:
        GpioDriverSettings.validate(self)
        for name in self.faults:
            if not _FAULT_NAME.match(name):
                raise SettingError(f"faults.{name}", "fault names are 1-32 of a-z, 0-9 and _ (e.g. low_oil)")
        if self.fuel_low_clear_pct < self.fuel_low_pct:
            raise SettingError("fuel_low_clear_pct", "must not be below fuel_low_pct")
        if self.source == "gpio":
            self._validate_gpio()
        else:
            self._validate_modbus()

    def _validate_gpio(self) -> None:
        if self.running is None:
            raise SettingError("running", "missing required key")
        if self.tank_litres is not None and self.fuel is None:  # a theft watch with nothing to watch
            raise SettingError("tank_litres", "needs a fuel sender (fuel = { chip, channel, ... }) to account for")

    def _validate_modbus(self) -> None:
        for key in _GPIO_KEYS:
            if getattr(self, key):
                raise SettingError(key, 'only applies with source = "gpio"')
        if self.controller is None:
            raise SettingError("controller", 'missing required key (source = "modbus"): "dse" or "comap"')
        if self.transport == "rtu":
            if not self.device:
                raise SettingError("device", "missing required key (transport = \"rtu\"): the serial port")
            if self.host:
                raise SettingError("host", 'only applies with transport = "tcp"')
        else:
            if not _HOST.match(self.host):
                raise SettingError("host", "missing or invalid (transport = \"tcp\"): a host name or address")
            if self.device:
                raise SettingError("device", 'only applies with transport = "rtu"')
        if self.timeout_s >= self.poll_s:
            raise SettingError("timeout_s", "must be below poll_s")
