"""End to end: the real agent on simulated hardware (GPS, generator, water, two lockers, host) with Home
Assistant discovery, through a real mosquitto, read by what sits at the other end -- Home Assistant's
templates, `boxtel fleet`, and the contract in docs/mqtt.md. The drivers are the source of truth: this
test fails when a consumer or the documentation no longer matches what they really publish."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from agent.fleet.broker import BrokerTarget
from agent.fleet.sim import FleetSim
from drivers.gpio_sim import GpioScenario
from tests.gpio_support import agent_in_process, fast_demo_hardware
from tests.support import ROOT, Subscriber, boxtel, wait_until
from tests.test_demo import check_live_view
from tests.test_homeassistant import check_documented, render

BOX = "test-001"
BASE = f"boxtel/{BOX}"
SPEED = 4.0  # the GPIO scenario's minute in 15 s
STATE_STREAMS = ("gps", "generator", "water", "locker/armory-1", "locker/armory-2", "locker/armory-3",
                 "locker/armory-4", "tamper", "health")
# Every kind of GPIO event and every GPIO alarm raised and cleared in the scenario's first minute.
EVENT_KINDS = {"generator_started", "generator_stopped", "door_opened", "door_closed", "gps_connected",
               "fix_acquired", "home_learned"}
GPIO_ALARMS = {"generator_fault:low_oil", "fuel_low", "tank_low", "tank_overflow", "leak_detected",
               "continuous_flow", "door_open_too_long", "door_opened_while_armed", "door_switch_fault",
               "door_tamper", "box_tamper"}
# Health fields Home Assistant reads that the durable outbox (issue 5) adds to the agent.
NOT_YET_SENT = {"outbox_oldest_s"}


@pytest.fixture
def simulated_box(make_config, broker, monkeypatch, mock_pins):
    """The agent of config/simulate.toml, its GPIO scenario played SPEED times faster, and a subscriber
    that saw everything from before its birth."""
    monkeypatch.setattr(GpioScenario, "speed", SPEED)
    config = make_config(broker, extra={
        "simulate": True,
        "host": {"interval_s": 1.0, "power_check_s": 1.0, "min_interval_s": 1.0},
        "gps": {"baud": "auto", "publish_interval_s": 1.0, "home_learn_s": 3.0},
        **fast_demo_hardware(SPEED),
        "homeassistant": {"enabled": True},
    })
    subscriber = Subscriber(broker.port, [f"{BASE}/#", f"homeassistant/+/{BOX}/+/config"])
    try:
        with agent_in_process(config):
            yield broker, subscriber
    finally:
        subscriber.close()


def test_what_the_agent_publishes_is_what_home_assistant_the_console_and_the_docs_expect(simulated_box):
    broker, sub = simulated_box

    def events() -> list[dict]:
        return [m.json for m in sub.on(f"{BASE}/events")]

    def scenario_played() -> bool:
        seen = events()
        cleared = {e["alarm"] for e in seen if e["kind"] == "alarm_cleared"}
        return EVENT_KINDS <= {e["kind"] for e in seen} and GPIO_ALARMS <= cleared and \
            _latest(sub, "gps").get("home_distance_m") is not None
    wait_until(scenario_played, 45, "every event kind, every GPIO alarm cleared, and a GPS fix with a home")
    states = {stream: _latest(sub, stream) for stream in STATE_STREAMS}

    # (a) every discovery config reads fields the drivers really send, and renders to a sound value
    configs = [(m.topic.split("/")[1], m.json) for m in sub.on(f"homeassistant/+/{BOX}/+/config") if m.raw]
    assert len({c["unique_id"] for _, c in configs}) == len(configs) > 30
    for component, config in configs:
        check_documented(component, config)
        topic = config.get("state_topic") or config["json_attributes_topic"]
        payload = states[topic.removeprefix(f"{BASE}/")]
        _check_entity(component, config, payload)

    # (b) the fleet console shows the box with its fix, generator, water and doors
    result = boxtel("fleet", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--json", "--for", "2", timeout=30)
    assert result.returncode == 0, result.stderr
    row = [json.loads(line) for line in result.stdout.splitlines() if json.loads(line)["box"] == BOX][-1]
    assert row["state"] == "online" and row["site"] == "Testville"
    assert row["gps"]["fix"] in ("2d", "3d") and isinstance(row["gps"]["lat"], float) and \
        isinstance(row["gps"]["lon"], float) and isinstance(row["gps"]["home_distance_m"], float)
    assert isinstance(row["generator"]["running"], bool) and isinstance(row["generator"]["fuel_pct"], float)
    assert isinstance(row["water"]["tank_pct"], float) and isinstance(row["water"]["total_l"], float)
    assert set(row["doors"]) == {"armory-1", "armory-2", "armory-3", "armory-4"}
    assert all(door["door"] in ("open", "closed", "unknown") for door in row["doors"].values())
    assert isinstance(row["outbox_depth"], int) and row["clock_source"] in ("ntp", "gps", "unsynced")
    assert isinstance(row["alarms"], list) and row["seq_lost"] == 0

    # (c) every field, event kind and severity the agent sent is in docs/mqtt.md
    doc = DocContract((ROOT / "docs" / "mqtt.md").read_text())
    for message in sub.on(f"{BASE}/#"):
        stream = message.topic.removeprefix(f"{BASE}/")
        doc.check(stream, message.json)

    # (e) `make demo`'s live view shows each of them as one readable line
    check_live_view([m for m in sub.messages[:] if m.topic.startswith(f"{BASE}/")])

    # (d) simulate-fleet's boxes publish what a real agent with the same hardware publishes
    fleet_sub = Subscriber(broker.port, "boxtel/+/#")
    sim = FleetSim(BrokerTarget("127.0.0.1", broker.port, False), 20, rate=20.0, seed=5)
    try:
        sim.start()
        assert sim.wait_connected(20), sim.error
        alarms = [("generator", "fuel_low"), ("water", "tank_low"), ("gps", "container_moved"), ("water", "leak_detected")]
        for box, (source, alarm) in zip(sim.boxes, alarms, strict=False):
            sim.raise_alarm(box.id, source, alarm)  # the scenarios make events too, but slowly

        def simulated_events() -> int:
            return sum(1 for m in fleet_sub.on("boxtel/+/events") if m.topic.startswith("boxtel/sim-"))
        wait_until(lambda: simulated_events() >= 4, 20, "events from the simulated fleet")
    finally:
        sim.stop()
        fleet_sub.close()
    simulated = [m for m in fleet_sub.messages if m.topic.startswith("boxtel/sim-")]
    assert len(simulated) > 100
    for message in simulated:
        box, _, stream = message.topic.removeprefix("boxtel/").partition("/")
        doc.check(stream, message.json)
        real = states.get("locker/armory-1" if stream.startswith("locker/") else stream)
        if real is not None and stream != "health":  # a real box's health names its own drivers
            assert set(message.json) == set(real), f"{box} {stream}: fields differ from a real agent's"


def _latest(sub: Subscriber, stream: str) -> dict:
    messages = sub.on(f"{BASE}/{stream}")
    return messages[-1].json if messages else {}


def _check_entity(component: str, config: dict, payload: dict) -> None:
    name = config["name"]
    for template_key in ("value_template", "json_attributes_template"):
        if template_key in config:
            for field in re.findall(r"value_json\.(\w+)", config[template_key]):
                assert field in payload or field in NOT_YET_SENT, f"{name}: the box does not send {field!r}"
    if "json_attributes_template" in config:
        attributes = json.loads(render(config["json_attributes_template"], payload))
        assert isinstance(attributes, dict)
        if component == "device_tracker":  # the box has a fix: Home Assistant gets a position
            assert isinstance(attributes["latitude"], float) and isinstance(attributes["longitude"], float)
    if "value_template" not in config:
        return
    value = render(config["value_template"], payload)
    field = re.search(r"value_json\.(\w+)", config["value_template"]).group(1)
    if component == "binary_sensor":
        # unknown ("None") only when the box says it cannot tell (e.g. a Pi without power flags)
        assert value in ("ON", "OFF") or (value == "None" and payload.get(field) == "unavailable"), (name, value)
    elif value == "None":
        assert payload.get(field) is None, f"{name}: rendered None from {payload.get(field)!r}"
    elif config.get("device_class") == "timestamp":
        assert datetime.fromisoformat(value).tzinfo is not None, (name, value)
    elif config.get("device_class") == "enum":
        assert value in config["options"], (name, value)
    elif "unit_of_measurement" in config or config.get("state_class"):
        float(value)


class DocContract:
    """docs/mqtt.md read as a contract: the names in backticks in each topic's section (plus the common
    fields), the event kinds and alarms with their severities from its tables."""

    def __init__(self, text: str):
        self.sections: dict[str, str] = {}
        for chunk in re.split(r"^## ", text, flags=re.M)[1:]:
            heading, _, body = chunk.partition("\n")
            self.sections[heading.strip()] = body
        common = self.names(next(body for heading, body in self.sections.items() if heading.startswith("Common")))
        self.fields = {topic: self.names(self.sections[f"`{topic}`"]) | common
                       for topic in ("status", "gps", "generator", "water", "locker/<name>", "tamper", "health",
                                     "events")}
        rows = re.findall(r"^\| `([^`|]+)`(?:, `([^`|]+)`)? \| `?([^|`]+)`? \| `?([^|`]+)`? \|",
                          self.sections["`events`"], flags=re.M)
        self.severity: dict[str, str] = {}  # kind or alarm -> severity
        for first, second, _source, severity in rows:
            for name in filter(None, (first, second)):
                self.severity[name] = severity.strip()

    @staticmethod
    def names(section: str) -> set[str]:
        return {token for token in re.findall(r"`([^`\s]+)`", section)}

    def documented(self, topic: str, field: str) -> bool:
        return any(_matches(name, field) for name in self.fields[topic])

    def check(self, stream: str, payload: dict) -> None:
        stream = stream.removeprefix("history/")  # replayed readings: the same fields as the live ones
        topic = "locker/<name>" if stream.startswith("locker/") else stream
        assert topic in self.fields, f"topic {stream} is not in docs/mqtt.md"
        for field in payload:
            assert self.documented(topic, field), f"{stream}: field {field!r} is not in docs/mqtt.md"
        if stream != "events":
            return
        kind = payload["kind"]
        assert kind in self.severity, f"event kind {kind!r} is not in docs/mqtt.md"
        expected = self.severity[kind]
        if kind == "alarm_raised":
            alarm = payload["alarm"]
            expected = next((sev for name, sev in self.severity.items() if _matches(name, alarm)), None)
            assert expected is not None, f"alarm {alarm!r} is not in docs/mqtt.md"
        assert payload["severity"] == expected, f"{kind} {payload.get('alarm', '')}: severity " \
                                                f"{payload['severity']}, docs/mqtt.md says {expected}"


def _matches(documented: str, name: str) -> bool:
    """`errors_<driver>` documents `errors_gps`; `generator_fault:<input>`, `generator_fault:low_oil`."""
    return re.fullmatch(re.sub(r"<[^>]+>", ".+", re.escape(documented)), name) is not None
