"""`make demo`'s live view: the real agent's messages (simulated hardware, a real broker) as one readable
line each, health summarised, alarms marked; and the commands it suggests exist."""

from __future__ import annotations

import json

from agent.cli import COMMANDS
from agent.demo import live_line, try_these


def check_live_view(messages: list) -> None:
    """Every message a real agent published (tests/test_end_to_end.py feeds them) as `make demo` shows it."""
    lines: dict[str, list] = {}
    for message in messages:
        line = live_line(message.topic, message.raw, message.retain, width=120)
        if message.topic.startswith("homeassistant/"):
            assert line is None  # discovery configs are for Home Assistant, not for people
            continue
        assert line and "\n" not in line and len(line) <= 120, line
        lines.setdefault(message.topic.split("/", 2)[2], []).append((json.loads(message.raw), line))
    payload, health = lines["health"][-1]
    assert len(health) < len(json.dumps(payload)) and "cpu_pct=" in health and "load_5m" not in health
    alarm_events = [line for data, line in lines["events"] if data["severity"] == "alarm"]
    assert alarm_events and all(line.startswith("!! ") and "alarm_raised" in line for line in alarm_events)
    calm = [line for data, line in lines["events"] if data["severity"] == "info" and "alarms" not in data]
    assert calm and not any(line.startswith("!!") for line in calm)
    states_with_alarms = [(data, line) for stream, got in lines.items() if stream != "events"
                          for data, line in got if data.get("alarms")]
    assert states_with_alarms
    assert all(line.startswith("!! ") and all(a in line for a in data["alarms"]) for data, line in states_with_alarms)


def test_alarm_lines_are_red_on_a_terminal_and_a_cleared_state_says_so():
    coloured = live_line("boxtel/b/events", json.dumps({"kind": "alarm_raised", "severity": "alarm"}).encode(),
                         False, colour=True)
    assert coloured.startswith("\x1b[31;1m!! ") and coloured.count("\x1b[") == 2
    plain = live_line("boxtel/b/events", json.dumps({"kind": "door_closed", "severity": "info"}).encode(), False)
    assert not plain.startswith("!!") and "door_closed" in plain
    assert "cleared" in live_line("boxtel/b/locker/armory-1", b"", False)


def test_the_suggested_commands_are_the_cli_and_point_at_the_demo_broker():
    text = try_these(18830)
    used = {line.split()[0].rsplit("/", 1)[-1] + " " + line.split()[1] for line in text.splitlines()[1:]}
    assert {entry.split()[1] for entry in used if entry.startswith("boxtel ")} <= set(COMMANDS)
    assert "mqtt://127.0.0.1:18830" in text and "config/simulate.toml" in text
