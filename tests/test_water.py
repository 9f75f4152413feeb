"""Water driver on MockFactory pins: flow pulses, total litres, tank level by ADC or float switches,
pump, leak, continuous flow."""

from __future__ import annotations

import time

import pytest

from drivers.gpio_sim import mock_adc
from drivers.water import WaterDriver
from tests.gpio_support import Rig
from tests.support import boxtel

FLOW, PUMP, LEAK, FLOAT_LOW, FLOAT_HIGH = 13, 19, 26, 5, 6
TANK = {"chip": "MCP3208", "channel": 1, "raw_empty": 0, "raw_full": 4000, "smoothing": 1, "interval_s": 1.0}


def water(tmp_path, mock_pins, **table) -> Rig:
    rig = Rig(WaterDriver, table, tmp_path, mock_pins)
    for name, pin in (("flow", FLOW), ("pump", PUMP), ("leak", LEAK), ("float_low", FLOAT_LOW),
                      ("float_high", FLOAT_HIGH)):
        if name in table:
            rig.wire(pin, False)
    return rig


def test_flow_pulses_give_litres_per_minute_and_total(tmp_path, mock_pins):
    rig = water(tmp_path, mock_pins, flow={"pin": FLOW}, pulses_per_litre=100.0, flow_window_s=10.0)
    before = time.monotonic()
    rig.driver.open_pins()  # counting starts in here
    after = time.monotonic()
    assert rig.state()["flow_lpm"] == 0.0 and rig.state()["total_l"] == 0.0
    rig.pulse(FLOW, 250)
    now = rig.step(5.0)
    state = rig.state()
    assert state["total_l"] == 2.5
    assert 2.5 / (now - before) * 60 - 0.01 <= state["flow_lpm"] <= 2.5 / (now - after) * 60 + 0.01  # 2.5 L in ~5 s
    rig.step(20.0)  # no pulses in the last window: no flow
    assert rig.state()["flow_lpm"] == 0.0 and rig.state()["total_l"] == 2.5


def test_total_litres_survive_a_restart(tmp_path, mock_pins):
    rig = water(tmp_path, mock_pins, flow={"pin": FLOW}, pulses_per_litre=10.0)
    rig.driver.open_pins()
    rig.pulse(FLOW, 35)
    rig.driver.stop()
    mock_pins.reset()

    again = water(tmp_path, mock_pins, flow={"pin": FLOW}, pulses_per_litre=10.0)
    again.driver.open_pins()
    assert again.state()["total_l"] == 3.5
    again.pulse(FLOW, 5)
    again.step(1.0)
    assert again.state()["total_l"] == 4.0


def test_continuous_flow_alarm_after_the_configured_time_and_cleared_when_flow_stops(tmp_path, mock_pins):
    rig = water(tmp_path, mock_pins, flow={"pin": FLOW}, pulses_per_litre=10.0, flow_window_s=5.0,
                continuous_flow_s=60.0)
    rig.driver.open_pins()
    for second in range(1, 66):  # a tap left open: 1 L a second
        rig.pulse(FLOW, 10)
        rig.step(float(second))
        if second == 58:
            assert rig.alarms() == []
    raised = rig.events("alarm_raised")
    assert [e.details["alarm"] for e in raised] == ["continuous_flow"]
    assert raised[0].details["flowing_s"] >= 60
    rig.step(75.0)  # the tap is closed: no pulses for a whole window
    assert rig.alarms("alarm_cleared") == ["continuous_flow"]


def test_tank_percent_from_the_adc_with_low_and_overflow_alarms(tmp_path, mock_pins):
    rig = water(tmp_path, mock_pins, tank=TANK)
    adc = mock_adc(mock_pins, rig.config.tank)
    pct = [50.0]
    adc.levels[1] = lambda: round(pct[0] * 40)
    rig.driver.open_pins()
    assert rig.state()["tank_pct"] == 50.0 and "tank_level" not in rig.state()
    t = 0.0
    for value in (15.0, 16.0, 14.0, 19.0, 21.0, 60.0, 95.0, 93.0, 96.0, 91.0, 89.0):
        pct[0] = value
        t += 1.0
        rig.step(t)
        assert rig.state()["tank_pct"] == value
    assert rig.alarms() == ["tank_low", "tank_overflow"]
    assert rig.alarms("alarm_cleared") == ["tank_low", "tank_overflow"]


def test_float_switches_give_tank_level_and_alarms(tmp_path, mock_pins):
    rig = water(tmp_path, mock_pins, float_low={"pin": FLOAT_LOW, "debounce_ms": 1.0},
                float_high={"pin": FLOAT_HIGH, "debounce_ms": 1.0})
    rig.driver.open_pins()
    assert rig.state()["tank_level"] == "normal" and "tank_pct" not in rig.state()
    rig.drive(FLOAT_LOW, True)
    rig.step(0.01)
    assert rig.state()["tank_level"] == "low" and rig.alarms() == ["tank_low"]
    rig.drive(FLOAT_LOW, False)
    rig.drive(FLOAT_HIGH, True)
    rig.step(0.02)
    assert rig.state()["tank_level"] == "high"
    assert rig.alarms() == ["tank_low", "tank_overflow"] and rig.alarms("alarm_cleared") == ["tank_low"]


def test_pump_and_leak_inputs(tmp_path, mock_pins):
    rig = water(tmp_path, mock_pins, pump={"pin": PUMP, "debounce_ms": 1.0}, leak={"pin": LEAK, "debounce_ms": 1.0})
    rig.driver.open_pins()
    assert rig.state()["pump"] is False and rig.state()["leak"] is False
    assert rig.state()["flow_lpm"] is None and rig.state()["total_l"] is None  # no flow meter
    rig.drive(PUMP, True)
    rig.drive(LEAK, True)
    rig.step(0.01)
    assert rig.state()["pump"] is True and rig.state()["leak"] is True
    assert [(e.details["alarm"], e.severity) for e in rig.events("alarm_raised")] == [("leak_detected", "alarm")]
    rig.drive(LEAK, False)
    rig.step(0.02)
    assert rig.alarms("alarm_cleared") == ["leak_detected"]


def test_leak_present_at_start_is_raised_from_the_pin(tmp_path, mock_pins):
    rig = Rig(WaterDriver, {"leak": {"pin": LEAK}}, tmp_path, mock_pins)
    rig.wire(LEAK, True)
    rig.driver.open_pins()
    raised = rig.events("alarm_raised")
    assert [(e.details["alarm"], e.details.get("at_start")) for e in raised] == [("leak_detected", True)]


def test_pins_lists_the_flow_meter(tmp_path, mock_pins):
    rig = water(tmp_path, mock_pins, flow={"pin": FLOW}, leak={"pin": LEAK})
    rig.driver.open_pins()
    rig.pulse(FLOW, 3)
    rows = {row["input"]: row for row in rig.driver.pins()}
    assert rows["water flow"]["state"] == "3 pulses" and rows["water flow"]["edges_per_s"] == 3.0
    assert rows["water leak"]["state"] == "dry"


@pytest.mark.parametrize(("extra", "expected"), [
    ({"tank": {"channel": 1, "raw_full": 2000}}, "water.tank.raw_full: 2000 is beyond what a MCP3008 reads"),
    ({"tank_low_pct": 30.0, "tank_low_clear_pct": 25.0}, "water.tank_low_clear_pct: must not be below tank_low_pct"),
    ({"flow": {"pin": 13}, "leak": {"pin": 13}}, "water.leak.pin: GPIO13 is already used by water.flow.pin"),
])
def test_bad_water_config_is_refused_with_exit_78(make_config, extra, expected):
    result = boxtel("check-config", "-c", str(make_config(extra={"water": extra})))
    assert result.returncode == 78
    assert expected in result.stderr and "Traceback" not in result.stderr
