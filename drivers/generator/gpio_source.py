"""Generator driver: the `running` contact, named fault contacts, fuel level from an ADC, run hours.

`run_hours` grows while the running input is active and is saved at most a minute apart (and on stop),
so a power cut costs at most a minute of it. After a restart `running` is read from the pin; if it
differs from what the last run saw, the missed edge is reported with `at_start: true`.
"""

from __future__ import annotations

import time
from typing import Any

from drivers.generator import FAIL_TO_START, GeneratorDriver
from drivers.generator.config import GeneratorConfig
from drivers.generator.fuel import FUEL_DROP, FuelAccount
from drivers.gpio import AnalogInput, GpioDriver, adc_claims, input_claims


class GpioGenerator(GeneratorDriver, GpioDriver):
    alarm_prefixes = ("fuel_low", "generator_fault", FUEL_DROP, FAIL_TO_START)

    @classmethod
    def gpio_claims(cls, config: GeneratorConfig, key: str) -> list[tuple[str, str]]:
        claims = input_claims(key, {"running": config.running, "cranking": config.cranking})
        claims += input_claims(f"{key}.faults", config.faults)
        if config.fuel is not None:
            claims += adc_claims(f"{key}.fuel", config.fuel)
        return claims

    def open(self, factory: Any) -> None:
        self.add_input("running", self.config.running)
        if self.config.cranking is not None:
            self.add_input("cranking", self.config.cranking, label="generator cranking")
        for name, fault in self.config.faults.items():
            self.add_input(f"fault:{name}", fault, label=f"generator fault {name}")
        self.fuel = None
        if self.config.fuel is not None:
            self.fuel = self.add_device(AnalogInput("generator fuel", self.config.fuel, factory))
            self.tick_s = min(self.tick_s, self.config.fuel.interval_s)

    def begin(self, now: float) -> None:
        self.run_hours = self.ctx.resume_counter("run_hours", float(self.saved.get("run_hours", 0.0)))
        self.run_s = float(self.saved.get("run_s", 0.0))
        self._accounted_at = now
        self.fuel_pct: float | None = None
        active = self.ctx.active_alarms() if self.fuel is not None else {}
        self.fuel_account = FuelAccount(self.config, alarm=self.alarm, event=self.ctx.event, active=active,
                                        saved=self.saved)
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
        self._crank_at: float | None = None
        if running or "cranking" not in self.inputs:
            self.alarm(FAIL_TO_START, False)  # a start that did run, or no starter input any more
        for name in self.config.faults:
            self.alarm(f"generator_fault:{name}", self.inputs[f"fault:{name}"].active, at_start=True)
        self.ctx.reading(self.values(), force=True)

    def on_change(self, name: str, active: bool, mono: float) -> None:
        if name == "running":
            self._account(mono)
            self.fuel_account.set_running(mono, active, self.values)
            if active:
                self._crank_at = None
                self.alarm(FAIL_TO_START, False, mono=mono, state=self.values())
                self.run_s = 0.0
                self.ctx.event("generator_started", mono=mono)
            else:
                self.ctx.event("generator_stopped", mono=mono, run_s=round(self.run_s))
        elif name == "cranking":
            if active and not self.inputs["running"].active and self._crank_at is None:
                self._crank_at = mono  # a start: it must reach running within fail_to_start_s
        else:
            fault = name.split(":", 1)[1]
            if self.alarm(f"generator_fault:{fault}", active, mono=mono, state=self.values(), input=fault):
                return  # the alarm already re-sent the state
        self.ctx.reading(self.values(), force=True, mono=mono)

    def timer(self) -> float | None:
        crank_at = getattr(self, "_crank_at", None)
        return None if crank_at is None else crank_at + self.config.fail_to_start_s

    def tick(self, now: float) -> None:
        self._account(now)
        if self._crank_at is not None and now - self._crank_at >= self.config.fail_to_start_s:
            self.alarm(FAIL_TO_START, True, state=self.values(), cranked_at_s=round(now - self._crank_at))
            self._crank_at = None  # raised until the set runs
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
        self.fuel_account.update(now, self.fuel_pct, self.inputs["running"].active, self.values)

    def values(self) -> dict[str, Any]:
        faults = sorted(name.split(":", 1)[1] for name, i in self.inputs.items() if name.startswith("fault:") and i.active)
        values = {
            "running": self.inputs["running"].active,
            "fuel_pct": self.fuel_pct,
            "run_hours": round(self.run_hours, 3),
            "fault": bool(faults),
            "faults": faults,
        }
        if self.config.tank_litres is not None:
            values.update(self.fuel_account.values())
        return values

    def persistent(self) -> dict[str, Any]:
        if hasattr(self, "_accounted_at"):
            self._account(time.monotonic())
        fuel = self.fuel_account.persistent() if hasattr(self, "fuel_account") else {}
        return {"running": self.inputs["running"].active, "run_hours": self.run_hours, "run_s": self.run_s, **fuel}

    def input_state(self, name: str, active: bool) -> str:
        if name == "running":
            return "running" if active else "stopped"
        if name == "cranking":
            return "cranking" if active else "idle"
        return "fault" if active else "ok"

    def health(self) -> dict[str, Any]:
        return {"generator_run_hours": round(getattr(self, "run_hours", 0.0), 3)}
