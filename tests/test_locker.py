"""Locker driver on MockFactory pins: door events, arming, door alarms, switch fault, restarts."""

from __future__ import annotations

import pytest

from drivers.locker import LockerDriver, armed_at
from tests.gpio_support import Rig
from tests.support import boxtel

DOOR = 23


def locker(tmp_path, mock_pins, *, door_open: bool = False, **extra) -> Rig:
    table = {"name": "armory-1", "door": {"pin": DOOR, "debounce_ms": 5.0}, **extra}
    rig = Rig(LockerDriver, table, tmp_path, mock_pins)
    rig.wire(DOOR, door_open)  # active_high: the reed switch reads high while the door is open
    return rig


def test_door_opened_and_closed_events_with_how_long_it_was_open(tmp_path, mock_pins):
    rig = locker(tmp_path, mock_pins)
    rig.driver.start()
    try:
        assert rig.state()["door"] == "closed"
        rig.drive(DOOR, True)
        opened = rig.wait_event("door_opened")
        assert opened.source == "locker/armory-1" and opened.details == {"armed": False}
        assert rig.state()["door"] == "open"
        rig.drive(DOOR, False)
        closed = rig.wait_event("door_closed")
        assert closed.details["open_s"] == pytest.approx(closed.mono - opened.mono, abs=0.05)
        state = rig.state()
        assert state["door"] == "closed" and state["since"] == rig.ctx.clock.iso_at(closed.mono)
        assert state["alarms"] == [] and state["switch_fault"] is False
    finally:
        rig.driver.stop()


def test_door_open_too_long_raised_once_and_cleared_on_close(tmp_path, mock_pins):
    rig = locker(tmp_path, mock_pins, open_too_long_s=60.0)
    rig.driver.open_pins()
    rig.drive(DOOR, True)
    rig.step(0.01)
    assert [e.kind for e in rig.events()] == ["door_opened"]
    rig.step(59.0)
    assert rig.alarms() == []
    rig.step(61.0)
    rig.step(120.0)  # still open: not raised again
    assert rig.alarms() == ["door_open_too_long"]
    assert rig.state()["alarms"] == ["door_open_too_long"]
    rig.drive(DOOR, False)
    rig.step(121.0)
    assert rig.alarms("alarm_cleared") == ["door_open_too_long"]
    assert rig.state()["alarms"] == []


def test_door_opened_while_armed_is_an_alarm(tmp_path, mock_pins):
    rig = locker(tmp_path, mock_pins, always_armed=True)
    rig.driver.open_pins()
    assert rig.state()["armed"] is True
    rig.drive(DOOR, True)
    rig.step(0.01)
    raised = rig.events("alarm_raised")
    assert [(e.details["alarm"], e.severity) for e in raised] == [("door_opened_while_armed", "alarm")]
    rig.drive(DOOR, False)
    rig.step(0.02)
    assert rig.alarms("alarm_cleared") == ["door_opened_while_armed"]


def test_schedule_arms_by_local_time_and_disarmed_doors_raise_nothing(tmp_path, mock_pins):
    rig = locker(tmp_path, mock_pins, armed_schedule=["22:00-06:00"])
    minute = [12 * 60]
    rig.driver.local_minute = lambda: minute[0]
    rig.driver.open_pins()
    assert rig.state()["armed"] is False
    rig.drive(DOOR, True)
    rig.step(0.01)
    rig.drive(DOOR, False)
    rig.step(0.02)
    assert rig.alarms() == []
    minute[0] = 23 * 60
    rig.step(1.0)
    assert rig.state()["armed"] is True
    rig.drive(DOOR, True)
    rig.step(1.1)
    assert rig.alarms() == ["door_opened_while_armed"]


@pytest.mark.parametrize(("minute", "armed"), [(21 * 60 + 59, False), (22 * 60, True), (3 * 60, True),
                                               (6 * 60, False), (12 * 60, False)])
def test_schedule_window_wraps_midnight(minute, armed):
    assert armed_at(["22:00-06:00"], minute) is armed


def test_chatter_raises_door_switch_fault_and_clears_when_quiet(tmp_path, mock_pins):
    rig = locker(tmp_path, mock_pins, chatter_edges_per_s=20.0, chatter_clear_s=5.0)
    rig.driver.open_pins()
    rig.pulse(DOOR, 60)  # 120 edges in no time: no switch bounces like that
    rig.step(0.0)
    raised = rig.events("alarm_raised")
    assert [e.details["alarm"] for e in raised] == ["door_switch_fault"]
    assert raised[0].details["pin"] == DOOR and raised[0].details["edges_per_s"] >= 20
    assert rig.state()["switch_fault"] is True
    rig.step(3.0)  # edges have left the 2 s window, but not quiet long enough yet
    assert rig.alarms("alarm_cleared") == []
    rig.step(6.0)
    assert rig.alarms("alarm_cleared") == ["door_switch_fault"]
    assert rig.state()["switch_fault"] is False


def test_restart_reads_the_door_from_the_pin_and_reports_a_missed_change(tmp_path, mock_pins):
    rig = locker(tmp_path, mock_pins)
    rig.driver.start()
    since = rig.state()["since"]
    rig.driver.stop()
    mock_pins.reset()

    # Unchanged across the restart: no event, `since` kept.
    again = locker(tmp_path, mock_pins)
    again.driver.open_pins()
    assert again.state()["door"] == "closed" and again.state()["since"] == since
    assert again.events() == []
    again.driver.stop()
    mock_pins.reset()

    # Opened while the agent was down: reported at start, marked as such.
    opened = locker(tmp_path, mock_pins, door_open=True, always_armed=True)
    opened.driver.open_pins()
    assert opened.state()["door"] == "open"
    assert [(e.kind, e.details.get("at_start")) for e in opened.events()] == [("door_opened", True),
                                                                              ("alarm_raised", True)]
    assert opened.state()["alarms"] == ["door_opened_while_armed"]
    opened.driver.stop()


def test_active_alarm_is_not_raised_again_after_restart(tmp_path, mock_pins):
    rig = locker(tmp_path, mock_pins, open_too_long_s=1.0)
    rig.driver.open_pins()
    rig.drive(DOOR, True)
    rig.step(0.01)
    rig.step(2.0)
    assert rig.alarms() == ["door_open_too_long"]
    rig.driver.stop()
    mock_pins.reset()

    still_open = locker(tmp_path, mock_pins, door_open=True, open_too_long_s=1.0)
    still_open.driver.open_pins()
    still_open.step(2.0)
    assert still_open.alarms() == []
    assert still_open.state()["alarms"] == ["door_open_too_long"]
    still_open.driver.stop()
    mock_pins.reset()

    closed = locker(tmp_path, mock_pins, open_too_long_s=1.0)
    closed.driver.open_pins()
    assert closed.alarms("alarm_cleared") == ["door_open_too_long"]
    closed.driver.stop()


@pytest.mark.parametrize(("entry", "expected"), [
    ({"armed_schedule": ["22:00-6:00"]}, 'locker[0].armed_schedule[0]: "22:00-6:00" is not a window'),
    ({"name": "armory/1"}, 'locker[0].name: "armory/1" is not a valid locker name'),
    ({"door": {"pin": 23, "debounce": 5}}, "locker[0].door.debounce: unknown key (did you mean 'debounce_ms'?)"),
])
def test_bad_locker_config_is_refused_with_exit_78(make_config, entry, expected):
    config = make_config(extra={"locker": [{"name": "armory-1", "door": {"pin": 23}, **entry}]})
    result = boxtel("check-config", "-c", str(config))
    assert result.returncode == 78
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_two_lockers_with_one_name_are_refused(make_config):
    config = make_config(extra={"locker": [{"name": "a", "door": {"pin": 23}}, {"name": "a", "door": {"pin": 24}}]})
    result = boxtel("check-config", "-c", str(config))
    assert result.returncode == 78 and "'locker/a' is configured twice" in result.stderr
