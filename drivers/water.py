"""Water driver: tank level (ADC percent or float switches), flow meter pulses, pump and leak inputs.

`flow_lpm` is the pulse rate over the last `flow_window_s`; `total_l` counts every pulse and is saved
at most a minute apart (and on stop). `continuous_flow` is raised when water has flowed without a
break for `continuous_flow_s`: a burst pipe or a tap left open drains the tank in hours.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from agent.schema import SettingError, setting
from drivers.gpio import (
    AdcConfig,
    AnalogInput,
    GpioDriver,
    GpioDriverSettings,
    InputConfig,
    PulseCounter,
    adc_claims,
    input_claims,
)

_INPUTS = ("float_low", "float_high", "flow", "pump", "leak")


@dataclass(kw_only=True)
class WaterConfig(GpioDriverSettings):
    tank: AdcConfig | None = setting(None, doc="tank level sender on an ADC channel: tank_pct")
    float_low: InputConfig | None = setting(None, doc="float switch, active at or below the low mark")
    float_high: InputConfig | None = setting(None, doc="float switch, active at or above the high mark")
    flow: InputConfig | None = setting(None, doc="flow meter pulse output (debounce_ms is not used)")
    pulses_per_litre: float = setting(450.0, min=0.001, max=100000.0, doc="flow meter pulses per litre (its data sheet)")
    flow_window_s: float = setting(10.0, min=1.0, max=600.0, doc="flow_lpm is the average over this")
    pump: InputConfig | None = setting(None, doc="input active while the pump runs")
    leak: InputConfig | None = setting(None, doc="leak sensor, active when wet")
    tank_low_pct: float = setting(15.0, min=0.0, max=100.0, doc="tank_low is raised at or below this")
    tank_low_clear_pct: float = setting(20.0, min=0.0, max=100.0, doc="and cleared at or above this")
    tank_high_pct: float = setting(95.0, min=0.0, max=100.0, doc="tank_overflow is raised at or above this")
    tank_high_clear_pct: float = setting(90.0, min=0.0, max=100.0, doc="and cleared at or below this")
    continuous_flow_s: float = setting(1800.0, min=1.0, max=86400.0, doc="flow without a break this long raises continuous_flow")
    continuous_flow_min_lpm: float = setting(0.0, min=0.0, max=1000.0, doc="flow at or below this is no flow")
    deadband: dict[str, float] = setting({"tank_pct": 2.0, "flow_lpm": 0.5, "total_l": 10.0}, min=0.0,
                                         inf_ok=True, keys=("tank_pct", "flow_lpm", "total_l"), doc="per field: a smaller change is no change")

    def validate(self) -> None:
        GpioDriverSettings.validate(self)
        if self.tank_low_clear_pct < self.tank_low_pct:
            raise SettingError("tank_low_clear_pct", "must not be below tank_low_pct")
        if self.tank_high_clear_pct > self.tank_high_pct:
            raise SettingError("tank_high_clear_pct", "must not be above tank_high_pct")
        if self.tank_low_clear_pct >= self.tank_high_clear_pct:
            raise SettingError("tank_high_pct", "the high marks must be above the low marks")


class WaterDriver(GpioDriver):
    section = "water"
    Config = WaterConfig
    simulator = "drivers.gpio_sim:WaterSimulator"
    alarm_prefixes = ("tank_low", "tank_overflow", "leak_detected", "continuous_flow")
    counters = ("total_l",)

    @classmethod
    def claims(cls, config: WaterConfig, key: str) -> list[tuple[str, str]]:
        claims = input_claims(key, {name: getattr(config, name) for name in _INPUTS})
        if config.tank is not None:
            claims += adc_claims(f"{key}.tank", config.tank)
        return claims

    def open(self, factory: Any) -> None:
        config = self.config
        for name in ("float_low", "float_high", "pump", "leak"):
            if getattr(config, name) is not None:
                self.add_input(name, getattr(config, name), label=f"water {name}")
        self.flow = None
        if config.flow is not None:
            self.flow = self.add_device(PulseCounter("water flow", config.flow, factory))
            self.tick_s = 1.0  # flow_lpm and continuous flow follow the pulses closely
        self.tank = None
        if config.tank is not None:
            self.tank = self.add_device(AnalogInput("water tank", config.tank, factory))
            self.tick_s = min(self.tick_s, config.tank.interval_s)
        if not self.inputs and self.flow is None and self.tank is None:
            self.ctx.log.warning("[water] configures no inputs (tank, float_low/high, flow, pump, leak): "
                                 "it reports nothing")

    def begin(self, now: float) -> None:
        self.total_l_base = self.ctx.resume_counter("total_l", float(self.saved.get("total_l", 0.0)))
        self.tank_pct: float | None = None
        # Hysteresis carries across a restart: an alarm still listed holds until its clear mark.
        active = self.ctx.active_alarms() if self.tank is not None else {}
        self._adc_low, self._adc_high = "tank_low" in active, "tank_overflow" in active
        self._tank_at = now
        self._flow_samples: deque[tuple[float, int]] = deque([(now, 0)])
        self.flow_lpm: float | None = 0.0 if self.flow is not None else None
        self._flowing_since: float | None = None
        self._sample_tank()
        self._check_tank(at_start=True)
        if "leak" in self.inputs:
            self.alarm("leak_detected", self.inputs["leak"].active, at_start=True)
        self.ctx.reading(self.values(), force=True)

    def on_change(self, name: str, active: bool, mono: float) -> None:
        changed = False
        if name in ("float_low", "float_high"):
            changed = self._check_tank(mono=mono)
        elif name == "leak":
            changed = self.alarm("leak_detected", active, mono=mono, state=self.values())
        if not changed:
            self.ctx.reading(self.values(), force=True, mono=mono)

    def tick(self, now: float) -> None:
        if self.tank is not None and now - self._tank_at >= self.config.tank.interval_s:
            self._tank_at = now
            self._sample_tank()
            self._check_tank()
        if self.flow is not None:
            self._update_flow(now)
        self.report(self.values())

    # -- tank --------------------------------------------------------------------------------------
    def _sample_tank(self) -> None:
        if self.tank is None:
            return
        self.tank_pct = self.tank.read_pct(self.ctx)
        if self.tank_pct is None:
            return
        config = self.config
        if self.tank_pct <= config.tank_low_pct:
            self._adc_low = True
        elif self.tank_pct >= config.tank_low_clear_pct:
            self._adc_low = False
        if self.tank_pct >= config.tank_high_pct:
            self._adc_high = True
        elif self.tank_pct <= config.tank_high_clear_pct:
            self._adc_high = False

    def _check_tank(self, mono: float | None = None, **details: Any) -> bool:
        low = self._adc_low or self._active("float_low")
        high = self._adc_high or self._active("float_high")
        changed = self.alarm("tank_low", low, severity="warning", mono=mono, state=self.values(),
                             tank_pct=self.tank_pct, **details)
        changed |= self.alarm("tank_overflow", high, severity="warning", mono=mono, state=self.values(),
                              tank_pct=self.tank_pct, **details)
        return changed

    def tank_level(self) -> str | None:
        if "float_low" not in self.inputs and "float_high" not in self.inputs:
            return None
        if self._active("float_high"):
            return "high"
        return "low" if self._active("float_low") else "normal"

    # -- flow --------------------------------------------------------------------------------------
    def _update_flow(self, now: float) -> None:
        count = self.flow.total()
        self._flow_samples.append((now, count))
        while len(self._flow_samples) > 2 and self._flow_samples[1][0] <= now - self.config.flow_window_s:
            self._flow_samples.popleft()
        then, old = self._flow_samples[0]
        litres = (count - old) / self.config.pulses_per_litre
        self.flow_lpm = round(60.0 * litres / (now - then), 2) if now > then else 0.0
        if self.flow_lpm > self.config.continuous_flow_min_lpm:
            if self._flowing_since is None:
                self._flowing_since = now
            if now - self._flowing_since >= self.config.continuous_flow_s:
                self.alarm("continuous_flow", True, state=self.values(), flow_lpm=self.flow_lpm,
                           flowing_s=round(now - self._flowing_since))
        else:
            self._flowing_since = None
            self.alarm("continuous_flow", False, state=self.values())

    def total_l(self) -> float:
        counted = self.flow.total() / self.config.pulses_per_litre if self.flow is not None else 0.0
        return self.total_l_base + counted

    # -- state -------------------------------------------------------------------------------------
    def _active(self, name: str) -> bool:
        return name in self.inputs and self.inputs[name].active

    def values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.tank is not None:
            values["tank_pct"] = self.tank_pct
        level = self.tank_level()
        if level is not None:
            values["tank_level"] = level
        values["flow_lpm"] = self.flow_lpm
        values["total_l"] = round(self.total_l(), 2) if self.flow is not None else None
        for name in ("pump", "leak"):
            if name in self.inputs:
                values[name] = self.inputs[name].active
        return values

    def persistent(self) -> dict[str, Any]:
        return {"total_l": self.total_l()}

    def input_state(self, name: str, active: bool) -> str:
        return {"float_low": ("low", "above low mark"), "float_high": ("high", "below high mark"),
                "pump": ("running", "off"), "leak": ("wet", "dry")}[name][0 if active else 1]

    def pins(self) -> list[dict[str, Any]]:
        rows = super().pins()
        if self.flow is not None:
            rows.append(self.flow.row(time.monotonic()))
        return rows
