"""Generator driver on MockFactory pins: start/stop, faults, fuel from a mock MCP3008, run hours."""

from __future__ import annotations

import json

import pytest

from drivers.generator import GeneratorDriver
from drivers.gpio_sim import mock_adc
from tests.gpio_support import Rig

RUNNING, LOW_OIL, OVERTEMP = 17, 27, 22
FUEL = {"chip": "MCP3008", "channel": 0, "raw_empty": 100, "raw_full": 900, "smoothing": 1, "interval_s": 5.0}


def generator(tmp_path, mock_pins, *, running: bool = False, low_oil: bool = False, **extra) -> Rig:
    table = {
        # a relay contact to ground while running: active low with the pull-up
        "running": {"pin": RUNNING, "active_high": False, "debounce_ms": 5.0},
        "faults": {"low_oil": {"pin": LOW_OIL, "debounce_ms": 5.0}, "overtemp": {"pin": OVERTEMP}},
        **extra,
    }
    rig = Rig(GeneratorDriver, table, tmp_path, mock_pins)
    rig.wire(RUNNING, not running)
    rig.wire(LOW_OIL, low_oil)
    rig.wire(OVERTEMP, False)
    return rig


def test_started_and_stopped_events_carry_the_run_time(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins)
    rig.driver.open_pins()
    assert rig.state()["running"] is False
    rig.drive(RUNNING, False)  # active low: running
    rig.step(0.01)
    assert [e.kind for e in rig.events()] == ["generator_started"]
    assert rig.state()["running"] is True
    rig.step(1800.0)
    assert rig.state()["run_hours"] == pytest.approx(0.5, abs=0.001)
    rig.drive(RUNNING, True)
    rig.step(1800.01)
    stopped = rig.events("generator_stopped")
    assert len(stopped) == 1 and stopped[0].details["run_s"] == pytest.approx(1800, abs=1)
    rig.step(3600.0)  # stopped: no more run hours
    assert rig.state()["run_hours"] == pytest.approx(0.5, abs=0.001)


def test_fault_inputs_raise_and_clear_their_own_alarm(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins)
    rig.driver.open_pins()
    rig.drive(LOW_OIL, True)
    rig.step(0.01)
    assert rig.alarms() == ["generator_fault:low_oil"]
    state = rig.state()
    assert state["fault"] is True and state["faults"] == ["low_oil"]
    assert state["alarms"] == ["generator_fault:low_oil"]
    rig.drive(LOW_OIL, False)
    rig.step(0.02)
    assert rig.alarms("alarm_cleared") == ["generator_fault:low_oil"]
    assert rig.state()["fault"] is False and rig.state()["faults"] == []


def test_fuel_is_calibrated_and_fuel_low_has_hysteresis(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins, fuel=FUEL, fuel_low_pct=20.0, fuel_low_clear_pct=25.0)
    adc = mock_adc(mock_pins, rig.config.fuel)
    raw = [500]
    adc.levels[0] = lambda: raw[0]
    rig.driver.open_pins()
    assert rig.state()["fuel_pct"] == 50.0  # (500 - 100) / (900 - 100)
    t = 0.0
    for pct in (19.0, 21.0, 19.5, 24.0, 26.0, 30.0):  # hovering around the low mark
        raw[0] = round(100 + 8 * pct)
        t += 5.0
        rig.step(t)
        assert rig.state()["fuel_pct"] == pytest.approx(pct, abs=0.2)
    assert rig.alarms() == ["fuel_low"] and rig.alarms("alarm_cleared") == ["fuel_low"]
    assert rig.events("alarm_raised")[0].severity == "warning"


def test_fuel_smoothing_averages_samples(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins, fuel={**FUEL, "smoothing": 4})
    adc = mock_adc(mock_pins, rig.config.fuel)
    raw = [900]
    adc.levels[0] = lambda: raw[0]
    rig.driver.open_pins()
    raw[0] = 100
    rig.step(5.0)
    assert rig.state()["fuel_pct"] == 50.0  # (100 % + 0 %) / 2: a slosh is not an empty tank


def test_an_adc_read_that_fails_gives_null_fuel_counts_the_error_and_recovers(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins, fuel=FUEL)
    adc = mock_adc(mock_pins, rig.config.fuel)
    level = {"raw": 500}

    def raw() -> int:
        if level["raw"] is None:
            raise OSError("SPI transfer failed")
        return level["raw"]

    adc.levels[0] = raw
    rig.driver.open_pins()
    assert rig.state()["fuel_pct"] == 50.0
    level["raw"] = None
    rig.step(5.0)
    assert rig.state()["fuel_pct"] is None  # never the last good level standing in for a failed read
    assert rig.ctx.errors == {"adc_read": 1}
    assert "generator fuel" in rig.ctx.last_error and "SPI transfer failed" in rig.ctx.last_error
    level["raw"] = 900
    rig.step(10.0)
    assert rig.state()["fuel_pct"] == 100.0


def test_no_adc_means_null_fuel(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins)
    rig.driver.open_pins()
    assert rig.state()["fuel_pct"] is None


def test_run_hours_survive_a_restart(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins, running=True)
    rig.driver.open_pins()
    rig.step(3600.0)
    rig.driver.stop()
    mock_pins.reset()

    again = generator(tmp_path, mock_pins, running=True)
    again.driver.open_pins()
    assert again.state()["run_hours"] == pytest.approx(1.0, abs=0.001)
    assert again.events() == []  # still running: nothing was missed
    again.driver.stop()


def test_power_loss_costs_at_most_a_minute_of_run_hours(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins, running=True)
    rig.driver.open_pins()
    rig.step(600.0)  # > 60 s since the last save: saved now, without any stop
    saved = json.loads((tmp_path / "driver-generator.json").read_text())
    assert saved["run_hours"] == pytest.approx(600 / 3600, abs=0.001)
    rig.step(630.0)  # 30 s later: not saved yet (spares the SD card) ...
    saved = json.loads((tmp_path / "driver-generator.json").read_text())
    assert saved["run_hours"] == pytest.approx(600 / 3600, abs=0.001)
    rig.driver._close_devices()  # ... and the power goes: no stop(), no final save
    mock_pins.reset()

    again = generator(tmp_path, mock_pins, running=True)
    again.driver.open_pins()
    assert 630 / 3600 - again.state()["run_hours"] <= 60 / 3600
    again.driver.stop()


def test_a_stop_missed_while_down_is_reported_at_start(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins, running=True)
    rig.driver.open_pins()
    rig.driver.stop()
    mock_pins.reset()

    again = generator(tmp_path, mock_pins, running=False)
    again.driver.open_pins()
    assert [(e.kind, e.details) for e in again.events()] == [("generator_stopped", {"at_start": True, "run_s": None})]
    assert again.state()["running"] is False
    again.driver.stop()


def test_fault_active_across_a_restart_is_raised_once(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins, low_oil=True)
    rig.driver.open_pins()
    assert rig.alarms() == ["generator_fault:low_oil"]
    rig.driver.stop()
    mock_pins.reset()

    again = generator(tmp_path, mock_pins, low_oil=True)
    again.driver.open_pins()
    assert again.alarms() == [] and again.state()["alarms"] == ["generator_fault:low_oil"]
    again.driver.stop()


def test_pins_rows_show_raw_and_meaning(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins, running=True)
    rig.driver.open_pins()
    rows = {row["input"]: row for row in rig.driver.pins()}
    assert rows["generator running"] == {"input": "generator running", "pin": RUNNING, "raw": 0,
                                         "state": "running", "edges_per_s": 0.0}
    assert rows["generator fault low_oil"]["state"] == "ok"
    rig.driver.stop()


def test_fuel_low_hysteresis_holds_across_a_restart(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins, fuel=FUEL)
    adc = mock_adc(mock_pins, rig.config.fuel)
    raw = [100 + 8 * 10]  # 10 %
    adc.levels[0] = lambda: raw[0]
    rig.driver.open_pins()
    assert rig.alarms() == ["fuel_low"]
    rig.driver.stop()
    mock_pins.reset()

    again = generator(tmp_path, mock_pins, fuel=FUEL)
    adc = mock_adc(mock_pins, again.config.fuel)
    adc.levels[0] = lambda: 100 + 8 * 22  # 22 %: above the low mark (20), below the clear mark (25)
    again.driver.open_pins()
    assert again.alarms() == [] and again.alarms("alarm_cleared") == []
    assert again.state()["alarms"] == ["fuel_low"]


CRANKING = 23


def test_a_start_that_never_runs_raises_fail_to_start_and_running_clears_it(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins, cranking={"pin": CRANKING, "debounce_ms": 5.0}, fail_to_start_s=30.0)
    rig.wire(CRANKING, False)
    rig.driver.open_pins()
    rig.drive(CRANKING, True)  # the starter turns, the engine does not catch
    t = rig.step(0.01)
    rig.drive(CRANKING, False)
    rig.driver.step(t + 20.0)
    assert rig.alarms() == []
    assert rig.driver.timer() == pytest.approx(t + 30.0, abs=0.02)  # the driver wakes for the deadline
    rig.driver.step(t + 31.0)
    assert rig.alarms() == ["fail_to_start"]
    rig.drive(RUNNING, False)  # a second try runs
    rig.driver.step(t + 40.0)
    assert rig.alarms("alarm_cleared") == ["fail_to_start"]
    assert rig.state()["faults"] == []  # the starter input is not a fault


def test_a_start_that_runs_raises_nothing(tmp_path, mock_pins):
    rig = generator(tmp_path, mock_pins, cranking={"pin": CRANKING, "debounce_ms": 5.0}, fail_to_start_s=30.0)
    rig.wire(CRANKING, False)
    rig.driver.open_pins()
    rig.drive(CRANKING, True)
    t = rig.step(0.01)
    rig.drive(RUNNING, False)
    rig.drive(CRANKING, False)
    rig.driver.step(t + 3.0)
    rig.driver.step(t + 60.0)
    assert rig.alarms() == [] and [e.kind for e in rig.events()] == ["generator_started"]


def test_adc_fuel_accounting_sees_a_refuel_and_one_theft_but_not_noise(tmp_path, mock_pins):
    """The same fuel accounting as the Modbus source, fed by the ADC sender: a 200 L tank, the sender
    jittering by ±1 %, 30 L syphoned at night."""
    import random

    rig = generator(tmp_path, mock_pins, fuel={**FUEL, "interval_s": 10.0}, tank_litres=200.0, fuel_hold_s=60.0,
                    fuel_settle_s=120.0, fuel_drop_min_l=15.0, refuel_min_l=15.0)
    adc = mock_adc(mock_pins, rig.config.fuel)
    rng = random.Random(3)
    level = {"pct": 50.0}
    adc.levels[0] = lambda: round(100 + 8 * max(0.0, min(100.0, level["pct"] + rng.uniform(-1.0, 1.0))))
    rig.driver.open_pins()
    t = rig.step(0.0)
    for _ in range(360):  # a stopped night, noise only
        t += 10.0
        rig.driver.step(t)
    assert rig.events() == []
    level["pct"] = 90.0  # a refuel
    for _ in range(30):
        t += 10.0
        rig.driver.step(t)
    assert [(e.kind, round(e.details["litres"] / 10)) for e in rig.events()] == [("refuelled", 8)]
    for _ in range(60):  # 30 L syphoned over ten minutes, then quiet
        level["pct"] = max(75.0, level["pct"] - 0.25)
        t += 10.0
        rig.driver.step(t)
    for _ in range(360):
        t += 10.0
        rig.driver.step(t)
    drops = rig.events("alarm_raised")
    assert [e.details["alarm"] for e in drops] == ["fuel_drop_while_stopped"]
    assert 15 <= drops[0].details["litres"] <= 30  # what had gone when the drop had held for fuel_hold_s
    state = rig.state()
    assert state["fuel_l"] == pytest.approx(150, abs=3) and state["fuel_lph"] == 0.0
    assert state["alarms"] == ["fuel_drop_while_stopped"]
