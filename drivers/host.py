"""Host driver: the Pi itself -- CPU, load, memory, state-dir disk, temperature, uptime, power.

Readings go to the `health` stream (the core adds its own figures there). On a Raspberry Pi the
under-voltage and throttling flags come from hwmon `rpi_volt` first, then the firmware's
`get_throttled` file; a source that is missing reads `unavailable`, never `ok`, because "no warning"
from a box that cannot see its power supply would be a lie. Under-voltage is an alarm: an SD card
written during a brownout is how a box dies in the field.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.schema import SettingError, setting
from agent.throttle import StreamSettings
from drivers.base import Driver

OK = "ok"
ACTIVE = "active"
UNAVAILABLE = "unavailable"

_FIRMWARE_THROTTLED = (
    "devices/platform/soc/soc:firmware/get_throttled",
    "devices/platform/soc:firmware/get_throttled",
)
# get_throttled bits (Raspberry Pi firmware, see `vcgencmd get_throttled`)
_UNDERVOLTAGE_NOW = 1 << 0
_THROTTLED_NOW = (1 << 1) | (1 << 2) | (1 << 3)  # frequency capped, throttled, soft temperature limit
_UNDERVOLTAGE_SINCE_BOOT = 1 << 16
_THROTTLED_SINCE_BOOT = (1 << 17) | (1 << 18) | (1 << 19)


@dataclass(kw_only=True)
class HostConfig(StreamSettings):
    interval_s: float = setting(30.0, min=1.0, max=3600.0, doc="how often to sample the host")
    power_check_s: float = setting(
        5.0, min=0.5, max=600.0, doc="how often to check under-voltage (brownouts are short)"
    )
    min_interval_s: float = setting(60.0, min=0.0, max=3600.0, doc="never publish health more often")
    max_interval_s: float = setting(1800.0, min=1.0, max=86400.0, doc="re-send unchanged health this often")
    # What is worth a message on a link billed per MB: a sustained change (load_15m, memory, disk, heat).
    # Instant CPU and the short load averages swing with every cron job: they ride along, current, with
    # the next message (at least every max_interval_s). An alarm (under-voltage) is always sent at once.
    deadband: dict[str, float] = setting(
        {"cpu_pct": float("inf"), "load_1m": float("inf"), "load_5m": float("inf"), "load_15m": 1.0,
         "memory_pct": 5.0, "memory_available_mb": float("inf"), "disk_free_mb": float("inf"),
         "disk_used_pct": 2.0, "temperature_c": 5.0, "uptime_s": float("inf")},
        min=0.0, inf_ok=True,
        keys=("cpu_pct", "load_1m", "load_5m", "load_15m", "memory_pct", "memory_available_mb", "disk_free_mb",
              "disk_used_pct", "temperature_c", "uptime_s"),
        doc="per field: a smaller change is no change; inf: never a reason to send on its own",
    )
    sysfs_root: str = setting("/sys", path=True, doc="where to read hwmon, thermal and firmware files")

    def validate(self) -> None:
        StreamSettings.validate(self)
        if self.power_check_s > self.interval_s:
            raise SettingError("power_check_s", "must not be larger than interval_s")


class HostDriver(Driver):
    section = "host"
    Config = HostConfig
    simulator = "drivers.host_sim:HostSimulator"

    @classmethod
    def stream_name(cls, config: HostConfig) -> str:
        return "health"

    def __init__(self, config: HostConfig, ctx):
        super().__init__(config, ctx)
        self.sysfs = Path(config.sysfs_root)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.power: dict[str, Any] = {}
        self.stall_after_s = max(type(self).stall_after_s, 3 * config.power_check_s)  # it wakes that often

    def start(self) -> None:
        psutil.cpu_percent(interval=None)  # the first call only sets the baseline
        self._thread = self.start_thread(self._run)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        next_sample = time.monotonic()
        while not self._stop.is_set():
            try:
                self._check_power()
                if time.monotonic() >= next_sample:
                    next_sample += self.config.interval_s
                    self.ctx.reading(self.sample())
            except Exception as err:  # noqa: BLE001 - keep sampling; the error shows in health
                self.ctx.error("sample_failed", f"host sample failed: {err}")
            self.ctx.progress()
            self._stop.wait(self.config.power_check_s)

    def sample(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        load_1m, load_5m, load_15m = os.getloadavg()
        values: dict[str, Any] = {
            "cpu_pct": round(psutil.cpu_percent(interval=None), 1),
            "load_1m": round(load_1m, 2),
            "load_5m": round(load_5m, 2),
            "load_15m": round(load_15m, 2),
            "memory_pct": round(memory.percent, 1),
            "memory_available_mb": round(memory.available / 2**20),
            "temperature_c": self.cpu_temperature_c(),
            "uptime_s": round(time.clock_gettime(time.CLOCK_BOOTTIME)),
            **self.state_dir_space(),
            **self.power,
        }
        return values

    def state_dir_space(self) -> dict[str, Any]:
        try:
            usage = psutil.disk_usage(str(self.ctx.state_dir))
        except OSError as err:
            self.ctx.error("disk_usage", f"cannot read free space of {self.ctx.state_dir}: {err.strerror}")
            return {"disk_free_mb": None, "disk_used_pct": None}
        return {"disk_free_mb": round(usage.free / 2**20), "disk_used_pct": round(usage.percent, 1)}

    def cpu_temperature_c(self) -> float | None:
        """The CPU's thermal zone (cpu-thermal on a Pi, x86_pkg_temp on a PC), else the first one."""
        zones = sorted((self.sysfs / "class/thermal").glob("thermal_zone*"))
        preferred = [z for z in zones if any(k in _read(z / "type", "") for k in ("cpu", "pkg", "soc"))]
        for zone in preferred + zones:
            raw = _read(zone / "temp", None)
            if raw is not None:
                try:
                    return round(int(raw) / 1000.0, 1)
                except ValueError:
                    continue
        return None

    # -- power -------------------------------------------------------------------------------------
    def _check_power(self) -> None:
        power = self.read_power()
        if power == self.power:
            return
        first = not self.power
        self.power = power
        # After the first check, a change is reported at once, alarm and all, not at the next sample.
        values = None if first else self.sample()
        if power["undervoltage"] == ACTIVE:
            changed = self.ctx.raise_alarm("undervoltage", "warning", state=values, message="supply voltage below 4.63 V")
        elif power["undervoltage"] == OK:
            changed = self.ctx.clear_alarm("undervoltage", state=values)
        else:
            changed = False
        if values is not None and not changed:
            self.ctx.reading(values)

    def read_power(self) -> dict[str, Any]:
        undervoltage = UNAVAILABLE
        for hwmon in (self.sysfs / "class/hwmon").glob("hwmon*"):
            if _read(hwmon / "name", "") == "rpi_volt":
                alarm = _read(hwmon / "in0_lcrit_alarm", None)
                if alarm in ("0", "1"):
                    undervoltage = ACTIVE if alarm == "1" else OK
                break
        throttled = UNAVAILABLE
        since_boot = UNAVAILABLE
        flags = self._firmware_flags()
        if flags is not None:
            if undervoltage == UNAVAILABLE:
                undervoltage = ACTIVE if flags & _UNDERVOLTAGE_NOW else OK
            throttled = ACTIVE if flags & _THROTTLED_NOW else OK
            since_boot = "yes" if flags & (_UNDERVOLTAGE_SINCE_BOOT | _THROTTLED_SINCE_BOOT) else "no"
        return {"undervoltage": undervoltage, "throttled": throttled, "power_trouble_since_boot": since_boot}

    def _firmware_flags(self) -> int | None:
        for relative in _FIRMWARE_THROTTLED:
            raw = _read(self.sysfs / relative, None)
            if raw is not None:
                try:
                    return int(raw, 16)
                except ValueError:
                    self.ctx.error("get_throttled", f"unreadable get_throttled value {raw!r}")
                    return None
        return None


def _read(path: Path, default: Any) -> Any:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return default
