"""What the GPIO drivers share: debounce, config checks, the pin factory, end to end through mosquitto,
and the simulated scenario."""

from __future__ import annotations

import gc
import time

import pytest

from drivers.gpio import AdcConfig, AnalogInput
from drivers.gpio_sim import GpioScenario, mock_adc
from drivers.locker import LockerDriver
from tests.gpio_support import Rig, agent_in_process, fast_demo_hardware
from tests.support import boxtel, toml_dumps, wait_until

DOOR = 23


def bounce_train(rig: Rig, pin: int, end_high: bool, train_s: float = 0.005, gap_s: float = 0.0005) -> float:
    """A contact bouncing for `train_s`, then resting at `end_high`; returns the first edge's time."""
    mock = rig.factory.pin(pin)
    level = not mock.state
    first = time.monotonic()
    while time.monotonic() - first < train_s:
        (mock.drive_high if level else mock.drive_low)()
        level = not level
        time.sleep(gap_s)
    (mock.drive_high if end_high else mock.drive_low)()
    return first


@pytest.fixture
def door(tmp_path, mock_pins):
    rig = Rig(LockerDriver, {"name": "armory-1", "door": {"pin": DOOR, "debounce_ms": 20.0}}, tmp_path, mock_pins)
    rig.wire(DOOR, False)
    rig.driver.start()
    yield rig
    rig.driver.stop()


def test_a_5ms_bounce_train_gives_exactly_one_event(door):
    first_edge = bounce_train(door, DOOR, end_high=True)
    opened = door.wait_event("door_opened")
    assert opened.mono == pytest.approx(first_edge, abs=0.01)  # the change (settling is 25 ms later)
    door.drive(DOOR, False)  # a marker: anything spurious from the train would come before it
    door.wait_event("door_closed")
    assert [e.kind for e in door.events()] == ["door_opened", "door_closed"]


def test_a_bounce_that_comes_back_is_no_change(door):
    bounce_train(door, DOOR, end_high=False)
    door.drive(DOOR, True)
    door.wait_event("door_opened")
    assert [e.kind for e in door.events()] == ["door_opened"]


def test_the_final_level_wins_where_a_lockout_debounce_would_miss_it(door):
    # gpiozero's bounce_time would take the first edge (high) and drop the rest; the pin settles low.
    mock = door.factory.pin(DOOR)
    mock.drive_high()
    mock.drive_low()
    mock.drive_high()
    mock.drive_low()
    mock.drive_high()  # settles open
    door.wait_event("door_opened")
    assert door.driver.pins()[0]["state"] == "open" and door.driver.pins()[0]["raw"] == 1


def test_pins_rows(door):
    door.pulse(DOOR, 3)
    row = door.driver.pins()[0]
    assert row == {"input": "locker/armory-1 door", "pin": DOOR, "raw": 0, "state": "closed", "edges_per_s": 3.0}


# -- config errors: one line, exit 78 -----------------------------------------------------------------
@pytest.mark.parametrize(("extra", "expected"), [
    ({"generator": {"running": {"pin": 17}}, "locker": [{"name": "a", "door": {"pin": 17}}]},
     "locker[0].door.pin: GPIO17 is already used by generator.running.pin"),
    ({"generator": {"running": {"pin": 40}}}, "generator.running.pin: GPIO40 does not exist"),
    ({"generator": {"running": {"pin": 17}, "faults": {"low_oil": {"pin": 17}}}},
     "generator.faults.low_oil.pin: GPIO17 is already used by generator.running.pin"),
    ({"generator": {"running": {"pin": 17}, "fuel": {"channel": 2}}, "water": {"tank": {"channel": 2}}},
     "water.tank: ADC channel 2 on SPI0.0 is already used by generator.fuel"),
    ({"generator": {"running": {"pin": 17}, "fuel": {"channel": 0}}, "locker": [{"name": "a", "door": {"pin": 10}}]},
     "locker[0].door.pin: GPIO10 is already used by generator.fuel"),  # the ADC's SPI bus (MOSI)
    ({"generator": {"faults": {"low_oil": {"pin": 27}}}}, "generator.running: missing required key"),
    ({"gpio": {"pin_factory": "wiringpi"}}, 'gpio.pin_factory: expected one of "", "mock"'),
])
def test_gpio_config_errors_exit_78_with_one_line(make_config, extra, expected):
    result = boxtel("check-config", "-c", str(make_config(extra=extra)))
    assert result.returncode == 78, result.stdout
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_two_adc_channels_share_one_spi_bus(make_config):
    config = make_config(extra={"generator": {"running": {"pin": 17}, "fuel": {"channel": 0}},
                                "water": {"tank": {"channel": 1}}})
    result = boxtel("check-config", "-c", str(config))
    assert result.returncode == 0, result.stderr


def test_a_machine_without_gpio_says_so_and_exits_69(make_config, broker):
    config = make_config(broker, extra={"locker": [{"name": "a", "door": {"pin": 23}}]})
    result = boxtel("run", "-c", str(config), timeout=30)
    assert result.returncode == 69
    assert 'no GPIO access' in result.stderr and 'gpio.pin_factory = "mock"' in result.stderr
    assert "Traceback" not in result.stderr


# -- end to end: a pin edge becomes a message at a subscriber ------------------------------------------
def test_door_edge_reaches_a_subscriber_through_mosquitto(make_config, broker, subscribe, mock_pins):
    from drivers.gpio_sim import wire_pin

    config = make_config(broker, extra={"gpio": {"pin_factory": "mock"},
                                        "locker": [{"name": "armory-1", "door": {"pin": DOOR}}]})
    wire_pin(mock_pins, DOOR, high=False)
    subscriber = subscribe("boxtel/test-001/#")
    with agent_in_process(config):
        subscriber.wait_for("boxtel/test-001/locker/armory-1", lambda p: p["door"] == "closed")
        mock_pins.pin(DOOR).drive_high()
        event = subscriber.wait_for("boxtel/test-001/events", lambda p: p["kind"] == "door_opened")
        assert event.json["source"] == "locker/armory-1" and event.json["seq"] > 0
        state = subscriber.wait_for("boxtel/test-001/locker/armory-1", lambda p: p["door"] == "open")
        assert state.json["since"] == event.json["ts"]
        late = subscribe("boxtel/test-001/locker/+")  # a dashboard connecting now sees the open door
        retained = late.wait_for("boxtel/test-001/locker/armory-1")
        assert retained.retain and retained.json["door"] == "open"


# -- the simulated scenario: every event and alarm in its first minute ---------------------------------
ALARMS = ["generator_fault:low_oil", "fuel_low", "tank_low", "tank_overflow", "leak_detected", "continuous_flow",
          "door_open_too_long", "door_opened_while_armed", "door_switch_fault", "door_tamper", "box_tamper"]


@pytest.mark.slow
def test_simulated_minute_shows_every_event_and_each_alarm_once(make_config, broker, subscribe, monkeypatch):
    speed = 4.0  # the scenario's minute in 15 s; the time thresholds shrink to match
    monkeypatch.setattr(GpioScenario, "speed", speed)
    extra = {"simulate": True, **fast_demo_hardware(speed)}
    config = make_config(broker, extra=extra)
    assert "simulate = true" in config.read_text() and toml_dumps(extra)
    subscriber = subscribe("boxtel/test-001/events")
    with agent_in_process(config):
        def events():
            return [m.json for m in subscriber.on("boxtel/test-001/events")]

        def all_seen():
            seen = events()
            kinds = {e["kind"] for e in seen}
            cleared = [e["alarm"] for e in seen if e["kind"] == "alarm_cleared"]
            return {"generator_started", "generator_stopped", "door_opened", "door_closed"} <= kinds and \
                all(a in cleared for a in ALARMS)

        wait_until(all_seen, 40, "every event kind and every alarm cleared")
        seen = events()
    raised = [(e["source"], e["alarm"]) for e in seen if e["kind"] == "alarm_raised" and e["source"] != "host"]
    cleared = [(e["source"], e["alarm"]) for e in seen if e["kind"] == "alarm_cleared" and e["source"] != "host"]
    assert {alarm for _, alarm in raised} == set(ALARMS) and sorted(raised) == sorted(cleared)
    # the supervised loops: the paper clip and the cut are each one door_tamper
    tampers = [e for e in seen if e["kind"] == "alarm_raised" and e["alarm"] == "door_tamper"]
    assert [(e["source"], e["loop"]) for e in tampers if e["source"] == "locker/armory-3"] == \
        [("locker/armory-3", "short"), ("locker/armory-3", "cut")]
    assert [e["loop"] for e in tampers if e["source"] == "locker/armory-4"] == ["short"]  # single EOL: cut reads open
    stopped = next(e for e in seen if e["kind"] == "generator_stopped")
    assert stopped["run_s"] == pytest.approx(37 / speed, abs=1.5)


def test_simulated_run_as_a_process_publishes_door_events(make_config, broker, subscribe, run_agent, tmp_path):
    config = make_config(broker, extra={"locker": [{"name": "armory-1", "door": {"pin": DOOR}}]})
    subscriber = subscribe("boxtel/test-001/#")
    agent = run_agent(config, "--simulate")
    subscriber.wait_for("boxtel/test-001/locker/armory-1", lambda p: p["door"] == "closed" and p["alarms"] == [])
    opened = subscriber.wait_for("boxtel/test-001/events", lambda p: p["kind"] == "door_opened", timeout=20)
    assert opened.json["source"] == "locker/armory-1" and opened.json["armed"] is False
    assert agent.terminate() == 0
    assert (tmp_path / "state" / "driver-locker_armory-1.json").exists()


def test_driver_shows_progress_while_idle_and_stops_promptly(door):
    started = door.ctx.last_progress
    wait_until(lambda: door.ctx.last_progress > started + 1.0, 5, "progress from an idle driver")
    begun = time.monotonic()
    door.driver.stop()
    assert time.monotonic() - begun < 0.5


def test_two_adc_users_open_after_an_earlier_bus_is_finalized_late(mock_pins):
    """gpiozero shares the SPI bus between ADCs; a closed bus that the garbage collector finalizes only
    later (it sits in a reference cycle) used to unregister the live bus, so the next ADC (the water
    tank after the generator's fuel) found the SPI pins taken (seen in CI as a flaky demo test)."""
    fuel, tank = AdcConfig(channel=0, raw_full=1023), AdcConfig(channel=1, raw_full=1023)
    mock_adc(mock_pins, fuel)
    mock_adc(mock_pins, tank)
    gc.disable()  # the collector runs when it likes; here: only where the test says
    try:
        earlier = AnalogInput("an earlier agent's fuel", fuel, mock_pins)
        earlier.close()
        del earlier  # garbage now, finalized whenever the collector next runs
        generator = AnalogInput("generator fuel", fuel, mock_pins)
        gc.collect()  # ...such as here, between two drivers opening their ADCs
        water = AnalogInput("water tank", tank, mock_pins)
        assert generator.sample() is not None and water.sample() is not None
        water.close()
        generator.close()
    finally:
        gc.enable()
