"""Simulated Raspberry Pi power and thermal files for the host driver.

Builds a small sysfs tree (hwmon `rpi_volt`, the firmware's `get_throttled`, a CPU thermal zone) and
plays a brownout: under-voltage a little after start, gone again seconds later, as a generator that
sags under load does. The host driver reads it exactly as it reads /sys on a Pi.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from drivers.simulator import QUIET, Simulator

BROWNOUT_AT_S = 15.0
BROWNOUT_FOR_S = 12.0
BROWNOUT_EVERY_S = 600.0
SIM_STEP_S = 5.0  # the files change slowly; a finer step would cost the footprint bench CPU for nothing


class HostSimulator(Simulator):
    def prepare(self) -> None:
        self.root = self.workdir / "sysfs"
        self.hwmon = self.root / "class/hwmon/hwmon0"
        self.firmware = self.root / "devices/platform/soc/soc:firmware"
        self.thermal = self.root / "class/thermal/thermal_zone0"
        for folder in (self.hwmon, self.firmware, self.thermal):
            folder.mkdir(parents=True, exist_ok=True)
        (self.hwmon / "name").write_text("rpi_volt\n")
        (self.thermal / "type").write_text("cpu-thermal\n")
        self._brownouts_seen = False
        self._written: dict[Path, str] = {}
        self._write(brownout=False, elapsed_s=0.0)
        for config in self.configs:
            config.sysfs_root = str(self.root)

    def _run(self) -> None:
        if self.scenario == QUIET:
            return  # the files keep their first values: good power, a steady temperature
        while not self._stop.wait(SIM_STEP_S):
            elapsed = time.monotonic() - self._started
            phase = (elapsed - BROWNOUT_AT_S) % BROWNOUT_EVERY_S
            self._write(brownout=elapsed >= BROWNOUT_AT_S and phase < BROWNOUT_FOR_S, elapsed_s=elapsed)

    def _write(self, *, brownout: bool, elapsed_s: float) -> None:
        self._brownouts_seen = self._brownouts_seen or brownout
        self._update(self.hwmon / "in0_lcrit_alarm", "1" if brownout else "0")
        flags = (0x5 if brownout else 0) | (0x50000 if self._brownouts_seen else 0)
        self._update(self.firmware / "get_throttled", f"{flags:x}")
        millidegrees = 52000 + 6000 * math.sin(elapsed_s / 120.0)
        self._update(self.thermal / "temp", str(int(millidegrees) // 100 * 100))  # 0.1 °C steps

    def _update(self, path: Path, text: str) -> None:
        """Write `path` atomically, and only when its text changes (sysfs costs nothing to keep)."""
        if self._written.get(path) != text:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text + "\n")
            tmp.replace(path)
            self._written[path] = text
