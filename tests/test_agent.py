"""The agent as a whole: seq across restarts, simulation hook, callbacks that raise."""

from __future__ import annotations

import logging

from agent.clock import Clock
from agent.config import load
from agent.publisher import Publisher

HEALTH = "boxtel/test-001/health"
STATUS = "boxtel/test-001/status"
FAST_HEALTH = {"host": {"interval_s": 1.0, "power_check_s": 1.0, "min_interval_s": 0.0, "max_interval_s": 1.0}}


def test_seq_only_grows_across_clean_stops_and_kills(broker, make_config, subscribe, run_agent):
    config = make_config(broker, FAST_HEALTH)
    sub = subscribe("boxtel/test-001/#")
    seen: list[int] = []
    for stop in ("terminate", "kill", "terminate"):
        agent = run_agent(config)
        before, highest = len(sub.messages), max(seen, default=0)
        sub.wait_for(HEALTH, lambda p, highest=highest: p["seq"] > highest + 1, after=before)
        getattr(agent, stop)()
        seen = sorted(m.json["seq"] for m in sub.messages if "seq" in m.json)
    assert len(set(seen)) >= 6
    # A seq is never reused: after a SIGKILL a message may come twice, but as the same message.
    by_seq: dict[int, set[bytes]] = {}
    for message in sub.messages:
        if b'"seq"' in message.raw:
            by_seq.setdefault(message.json["seq"], set()).add(message.raw)
    assert all(len(payloads) == 1 for payloads in by_seq.values()), by_seq


def test_simulated_host_is_read_through_the_simulation_hook(broker, make_config, subscribe, run_agent):
    sub = subscribe(HEALTH)
    run_agent(make_config(broker, {**FAST_HEALTH, "simulate": True}))
    health = sub.wait_for(HEALTH, lambda p: p["temperature_c"] is not None).json
    # the simulated Pi: rpi_volt and get_throttled exist, the CPU zone is around 52 C
    assert health["undervoltage"] in ("ok", "active")
    assert health["throttled"] in ("ok", "active")
    assert 45.0 <= health["temperature_c"] <= 59.0


def test_simulate_flag_on_the_command_line(broker, make_config, subscribe, run_agent):
    sub = subscribe(HEALTH)
    run_agent(make_config(broker, FAST_HEALTH), "--simulate")
    assert sub.wait_for(HEALTH).json["undervoltage"] != "unavailable"


def test_exception_in_a_paho_callback_is_logged_and_contained(broker, make_config, caplog):
    publisher = Publisher(load(make_config(broker)), Clock(), notify=lambda item: None)

    def broken(*args):
        raise RuntimeError("boom")

    guarded = publisher._guard(broken)
    with caplog.at_level(logging.ERROR, logger="boxtel.mqtt"):
        guarded(None, None, None)  # must not raise into paho's thread
    assert "boom" in caplog.text
    assert publisher.last_error == "internal error in MQTT callback (see log)"
