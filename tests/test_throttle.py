"""Deadband, minimum and maximum interval, per stream."""

from agent.throttle import StreamSettings, StreamThrottle


def throttle(**settings):
    return StreamThrottle(StreamSettings(**{"min_interval_s": 1.0, "max_interval_s": 60.0, **settings}))


def test_first_value_is_sent():
    assert throttle().offer({"a": 1}, 0.0) == {"a": 1}


def test_change_within_deadband_is_suppressed_and_drift_is_measured_from_last_sent():
    t = throttle(deadband={"fuel_pct": 2.0})
    t.offer({"fuel_pct": 50.0}, 0.0)
    assert t.offer({"fuel_pct": 51.5}, 10.0) is None
    assert t.offer({"fuel_pct": 48.5}, 20.0) is None
    # 52.5 is 2.5 from the last *sent* 50.0, even though each step was small
    assert t.offer({"fuel_pct": 52.5}, 30.0) == {"fuel_pct": 52.5}


def test_field_without_deadband_changes_on_any_difference():
    t = throttle(deadband={"fuel_pct": 2.0})
    t.offer({"fuel_pct": 50.0, "running": False}, 0.0)
    assert t.offer({"fuel_pct": 50.0, "running": True}, 5.0) == {"fuel_pct": 50.0, "running": True}


def test_change_inside_min_interval_is_held_then_sent_with_latest_value():
    t = throttle(min_interval_s=5.0)
    t.offer({"door": "closed"}, 0.0)
    assert t.offer({"door": "open"}, 1.0) is None
    assert t.offer({"door": "closed2"}, 2.0) is None
    assert t.next_due() == 5.0
    assert t.due(4.9) is None
    assert t.due(5.0) == {"door": "closed2"}


def test_unchanged_value_is_resent_at_max_interval():
    t = throttle(max_interval_s=30.0)
    t.offer({"a": 1}, 0.0)
    assert t.offer({"a": 1}, 10.0) is None
    assert t.next_due() == 30.0
    assert t.due(30.0) == {"a": 1}
    assert t.next_due() == 60.0


def test_force_sends_at_once_past_deadband_and_min_interval():
    t = throttle(min_interval_s=10.0, deadband={"x": 100.0})
    t.offer({"x": 1.0, "alarms": []}, 0.0)
    assert t.offer({"x": 1.0, "alarms": ["fuel_low"]}, 0.5, force=True) == {"x": 1.0, "alarms": ["fuel_low"]}


def test_infinite_deadband_never_triggers_on_its_own():
    t = throttle(deadband={"uptime_s": float("inf")})
    t.offer({"uptime_s": 1}, 0.0)
    assert t.offer({"uptime_s": 10**9}, 5.0) is None


def test_bool_is_not_treated_as_number():
    t = throttle(deadband={"running": 5.0})
    t.offer({"running": False}, 0.0)
    assert t.offer({"running": True}, 5.0) == {"running": True}


def test_resend_returns_latest_even_if_suppressed():
    t = throttle(deadband={"a": 10.0})
    t.offer({"a": 1.0}, 0.0)
    t.offer({"a": 2.0}, 5.0)
    assert t.resend(6.0) == {"a": 2.0}
    assert StreamThrottle(StreamSettings()).resend(0.0) is None


def test_infinite_deadband_lets_a_word_ride_along_too_and_it_goes_current_with_the_next_send():
    t = throttle(deadband={"mqtt_last_error": float("inf")})
    t.offer({"mqtt_last_error": None, "dropped": 0}, 0.0)
    assert t.offer({"mqtt_last_error": "connection lost", "dropped": 0}, 5.0) is None
    assert t.offer({"mqtt_last_error": "connection lost", "dropped": 1}, 6.0) == {
        "mqtt_last_error": "connection lost", "dropped": 1}


def test_differs_judges_a_state_against_another_under_the_deadbands():
    t = throttle(deadband={"tank_pct": 2.0})
    assert not t.differs({"tank_pct": 50.0, "pump": False}, {"tank_pct": 51.5, "pump": False})
    assert t.differs({"tank_pct": 50.0, "pump": False}, {"tank_pct": 52.5, "pump": False})
    assert t.differs({"tank_pct": 50.0, "pump": False}, {"tank_pct": 50.0, "pump": True})


def test_an_unchanged_stream_is_re_sent_hourly_by_default():
    t = StreamThrottle(StreamSettings())
    t.offer({"door": "closed"}, 0.0)
    assert t.next_due() == 3600.0 and t.due(3600.0) == {"door": "closed"}
