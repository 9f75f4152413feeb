"""Host driver: figures from psutil, power flags from hwmon rpi_volt first, then get_throttled."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.bus import Bus, Event, Reading
from agent.clock import Clock
from drivers.base import DriverContext
from drivers.host import HostConfig, HostDriver


def make_driver(tmp_path: Path, sysfs: Path) -> tuple[HostDriver, Bus]:
    bus = Bus()
    ctx = DriverContext("host", stream="health", bus=bus, clock=Clock(lambda: False), state_dir=tmp_path,
                        simulate=False)
    return HostDriver(HostConfig(sysfs_root=str(sysfs)), ctx), bus


def drain(bus: Bus) -> list:
    items = []
    while (item := bus.get_nowait()) is not None:
        items.append(item)
    return items


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    return tmp_path / "sys"


def test_missing_power_sources_read_unavailable_never_ok(tmp_path, sysfs):
    sysfs.mkdir()
    driver, _ = make_driver(tmp_path, sysfs)
    assert driver.read_power() == {
        "undervoltage": "unavailable", "throttled": "unavailable", "power_trouble_since_boot": "unavailable",
    }


def test_rpi_volt_hwmon_is_read_first(tmp_path, sysfs):
    write(sysfs / "class/hwmon/hwmon3/name", "rpi_volt")
    write(sysfs / "class/hwmon/hwmon3/in0_lcrit_alarm", "1")
    write(sysfs / "devices/platform/soc/soc:firmware/get_throttled", "0")  # firmware disagrees: hwmon wins
    driver, _ = make_driver(tmp_path, sysfs)
    power = driver.read_power()
    assert power["undervoltage"] == "active"
    assert power["throttled"] == "ok"


@pytest.mark.parametrize(
    ("flags", "undervoltage", "throttled", "since_boot"),
    [("0x0", "ok", "ok", "no"), ("0x50005", "active", "active", "yes"), ("0x50000", "ok", "ok", "yes"),
     ("0x8", "ok", "active", "no")],
)
def test_firmware_get_throttled_when_no_hwmon(tmp_path, sysfs, flags, undervoltage, throttled, since_boot):
    write(sysfs / "devices/platform/soc/soc:firmware/get_throttled", flags.removeprefix("0x"))
    driver, _ = make_driver(tmp_path, sysfs)
    assert driver.read_power() == {
        "undervoltage": undervoltage, "throttled": throttled, "power_trouble_since_boot": since_boot,
    }


def test_undervoltage_transitions_raise_and_clear_one_alarm(tmp_path, sysfs):
    alarm_file = sysfs / "class/hwmon/hwmon0/in0_lcrit_alarm"
    write(sysfs / "class/hwmon/hwmon0/name", "rpi_volt")
    write(alarm_file, "0")
    driver, bus = make_driver(tmp_path, sysfs)
    driver._check_power()
    assert [i for i in drain(bus) if isinstance(i, Event)] == []

    write(alarm_file, "1")
    driver._check_power()
    driver._check_power()  # still low: no second alarm
    items = drain(bus)
    events = [i for i in items if isinstance(i, Event)]
    assert [(e.kind, e.details["alarm"], e.severity) for e in events] == [("alarm_raised", "undervoltage", "warning")]
    state = [i for i in items if isinstance(i, Reading)][-1]
    assert state.force and state.values["undervoltage"] == "active" and state.values["alarms"] == ["undervoltage"]

    write(alarm_file, "0")
    driver._check_power()
    items = drain(bus)
    assert [(e.kind, e.details["alarm"]) for e in items if isinstance(e, Event)] == [("alarm_cleared", "undervoltage")]
    assert [i for i in items if isinstance(i, Reading)][-1].values["alarms"] == []


def test_sample_has_host_figures(tmp_path, sysfs):
    write(sysfs / "class/thermal/thermal_zone0/type", "acpitz")
    write(sysfs / "class/thermal/thermal_zone0/temp", "30000")
    write(sysfs / "class/thermal/thermal_zone1/type", "cpu-thermal")
    write(sysfs / "class/thermal/thermal_zone1/temp", "48312")
    driver, _ = make_driver(tmp_path, sysfs)
    values = driver.sample()
    assert values["temperature_c"] == 48.3  # the CPU zone, not the first zone
    assert 0 <= values["cpu_pct"] <= 100 and 0 < values["memory_pct"] < 100
    assert values["disk_free_mb"] > 0 and values["uptime_s"] > 0
    assert {"load_1m", "load_5m", "load_15m", "memory_available_mb", "disk_used_pct"} <= values.keys()


def test_no_thermal_zone_gives_null_temperature(tmp_path, sysfs):
    sysfs.mkdir()
    driver, _ = make_driver(tmp_path, sysfs)
    assert driver.sample()["temperature_c"] is None
