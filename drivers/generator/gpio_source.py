"""Generator driver: the `running` contact, named fault contacts, fuel level from an ADC, run hours.

`run_hours` grows while the running input is active and is saved at most a minute apart (and on stop),
so a power cut costs at most a minute of it. After a restart `running` is read from the pin; if it
differs from what the last run saw, the missed edge is reported with `at_start: true`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from agent.schema import SettingError, setting
from drivers.gpio import (
    AdcConfig,
    AnalogInput,
    GpioDriver,
    GpioDriverSettings,
    InputConfig,
    adc_claims,
    input_claims,
)

_FAULT_NAME = re.compile(r"^[a-z0-9_]{1,32}$")


@dataclass(kw_only=True)
class GeneratorConfig(GpioDriverSettings):
    running: InputConfig = setting(doc="input active while the generator runs (e.g. a relay on its output)")
    faults: dict[str, InputConfig] = setting({}, doc="named fault inputs, each raising generator_fault:<name>")
    fuel: AdcConfig | None = setting(None, doc="fuel level sender on an ADC channel; absent: fuel_pct is null")
    fuel_low_pct: float = setting(20.0, min=0.0, max=100.0, doc="fuel_low is raised at or below this")
    fuel_low_clear_pct: float = setting(25.0, min=0.0, max=100.0, doc="and cleared at or above this (hysteresis)")
    deadband: dict[str, float] = setting({"fuel_pct": 2.0, "run_hours": 1.0}, min=0.0,
                                         inf_ok=True, keys=("fuel_pct", "run_hours"), doc="per field: a smaller change is no change")

    def validate(self) -> None:
        GpioDriverSettings.validate(self)
        for name in self.faults:
            if not _FAULT_NAME.match(name):
                raise SettingError(f"faults.{name}", "fault names are 1-32 of a-z, 0-9 and _ (e.g. low_oil)")
        if self.fuel_low_clear_pct < self.fuel_low_pct:
            raise SettingError("fuel_low_clear_pct", "must not be below fuel_low_pct")


class GeneratorDriver(GpioDriver):
    section = "generator"
    Config = GeneratorConfig
    simulator = "drivers.gpio_sim:GeneratorSimulator"
    alarm_prefixes = ("fuel_low", "generator_fault")

    @classmethod
    def claims(cls, config: GeneratorConfig, key: str) -> list[tuple[str, str]]:
        claims = input_claims(key, {"running": config.running})
        claims += input_claims(f"{key}.faults", config.faults)
        if config.fuel is not None:
            claims += adc_claims(f"{key}.fuel", config.fuel)
        return claims

    def open(self, factory: Any) -> None:
        self.add_input("running", self.config.running)
        for name, fault in self.config.faults.items():
            self.add_input(f"fault:{name}", fault, label=f"generator fault {name}")
        self.fuel = None
        if self.config.fuel is not None:
            self.fuel = self.add_device(AnalogInput("generator fuel", self.config.fuel, factory))
            self.tick_s = min(self.tick_s, self.config.fuel.interval_s)

    def begin(self, now: float) -> None:
        self.run_hours = float(self.saved.get("run_hours", 0.0))
        self.run_s = float(self.saved.get("run_s", 0.0))
        self._accounted_at = now
        self.fuel_pct: float | None = None
        self._fuel_low = self.fuel is not None and "fuel_low" in self.ctx.active_alarms()  # hysteresis survives
        self._fuel_at = now
        running = self.inputs["running"].active
        was_running = self.saved.get("running")
        if was_running is not None and was_running != running:
            if running:
                self.run_s = 0.0
                self.ctx.event("generator_started", at_start=True)
            else:
                self.ctx.event("generator_stopped", at_start=True, run_s=None)
        elif was_running is None:
            self.run_s = 0.0
        self._sample_fuel(now)
        for name in self.config.faults:
            self.alarm(f"generator_fault:{name}", self.inputs[f"fault:{name}"].active, at_start=True)
        self.ctx.reading(self.values(), force=True)

    def on_change(self, name: str, active: bool, mono: float) -> None:
        if name == "running":
            self._account(mono)
            if active:
                self.run_s = 0.0
                self.ctx.event("generator_started", mono=mono)
            else:
                self.ctx.event("generator_stopped", mono=mono, run_s=round(self.run_s))
        else:
            fault = name.split(":", 1)[1]
            if self.alarm(f"generator_fault:{fault}", active, mono=mono, state=self.values(), input=fault):
                return  # the alarm already re-sent the state
        self.ctx.reading(self.values(), force=True, mono=mono)

    def tick(self, now: float) -> None:
        self._account(now)
        if self.fuel is not None and now - self._fuel_at >= self.config.fuel.interval_s:
            self._fuel_at = now
            self._sample_fuel(now)
        self.report(self.values())

    def _account(self, now: float) -> None:
        if self.inputs["running"].active and now > self._accounted_at:
            elapsed = now - self._accounted_at
            self.run_hours += elapsed / 3600.0
            self.run_s += elapsed
        self._accounted_at = max(self._accounted_at, now)

    def _sample_fuel(self, now: float) -> None:
        if self.fuel is None:
            return
        self.fuel_pct = self.fuel.read_pct(self.ctx)
        if self.fuel_pct is None:
            return
        if self.fuel_pct <= self.config.fuel_low_pct:
            self._fuel_low = True
        elif self.fuel_pct >= self.config.fuel_low_clear_pct:
            self._fuel_low = False
        self.alarm("fuel_low", self._fuel_low, severity="warning", state=self.values(), fuel_pct=self.fuel_pct,
                   threshold_pct=self.config.fuel_low_pct)

    def values(self) -> dict[str, Any]:
        faults = sorted(name.split(":", 1)[1] for name, i in self.inputs.items() if name != "running" and i.active)
        return {
            "running": self.inputs["running"].active,
            "fuel_pct": self.fuel_pct,
            "run_hours": round(self.run_hours, 3),
            "fault": bool(faults),
            "faults": faults,
        }

    def persistent(self) -> dict[str, Any]:
        if hasattr(self, "_accounted_at"):
            self._account(time.monotonic())
        return {"running": self.inputs["running"].active, "run_hours": self.run_hours, "run_s": self.run_s}

    def input_state(self, name: str, active: bool) -> str:
        if name == "running":
            return "running" if active else "stopped"
        return "fault" if active else "ok"

    def health(self) -> dict[str, Any]:
        return {"generator_run_hours": round(getattr(self, "run_hours", 0.0), 3)}
