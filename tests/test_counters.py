"""Counters never go backwards: `total_l`, `run_hours` and every field Home Assistant gets as
`total_increasing` resume after a SIGKILL or a power cut from at least the last value any subscriber saw."""

from __future__ import annotations

import json
import re
import tomllib

from agent.config import load
from agent.homeassistant import discovery_messages
from agent.outbox import HISTORY, LIVE, Outbox
from agent.runtime import HEALTH, Agent, _counters
from tests.support import ROOT, wait_until

BASE = "boxtel/test-001"


def _demo(section: str) -> dict:
    return tomllib.loads((ROOT / "config" / "simulate.toml").read_text())[section]


def increasing(values: list[float]) -> bool:
    return all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_sigkill_while_water_flows_and_the_generator_runs_takes_no_counter_back(
        broker, make_config, subscribe, run_agent):
    # The demo's simulated generator runs from 3 s and water flows from 2 s of each start, 10 L/min;
    # every change is published, as a dashboard would want them.
    config = make_config(broker, {
        "simulate": True,
        "generator": {**_demo("generator"), "min_interval_s": 0.5, "deadband": {"run_hours": 0.0}},
        "water": {**_demo("water"), "min_interval_s": 0.5, "deadband": {"total_l": 0.0}},
    })
    sub = subscribe([f"{BASE}/water", f"{BASE}/generator"])

    def seen(stream: str, field: str) -> list[float]:
        # As a consumer is told to (docs/mqtt.md): a seq delivered again (in flight at the kill) is a
        # duplicate and dropped; a new seq with a lower value would still show.
        values, seqs = [], set()
        for m in sub.on(f"{BASE}/{stream}"):
            if not m.retain and m.json.get(field) is not None and m.json["seq"] not in seqs:
                seqs.add(m.json["seq"])
                values.append(m.json[field])
        return values

    agent = run_agent(config)
    wait_until(lambda: max(seen("water", "total_l"), default=0) >= 0.8 and
               max(seen("generator", "run_hours"), default=0) >= 0.001, timeout=30,
               what="water flowing and the generator running for a while")
    agent.kill()  # between two saves of the drivers' state (a minute apart)
    before = {"total_l": max(seen("water", "total_l")), "run_hours": max(seen("generator", "run_hours"))}
    counts = {"water": len(seen("water", "total_l")), "generator": len(seen("generator", "run_hours"))}

    again = run_agent(config)
    wait_until(lambda: len(seen("water", "total_l")) >= counts["water"] + 4 and
               len(seen("generator", "run_hours")) >= counts["generator"] + 2, timeout=30,
               what="readings after the restart")
    assert again.alive()
    for stream, field in (("water", "total_l"), ("generator", "run_hours")):
        values = seen(stream, field)
        assert increasing(values), (field, values)
        assert values[counts[stream]] >= before[field]  # resumed from what the subscriber last saw


def test_the_highest_counter_value_accepted_survives_a_reopen_and_never_drops(tmp_path):
    path = tmp_path / "outbox.db"
    box = Outbox(path, counters={"water": ("total_l",)})
    box.accept(LIVE, "water", {"total_l": 18.52, "flow_lpm": 3.0})
    box.accept(HISTORY, "water", {"total_l": 18.02})  # lower: not the counter's value
    box.accept(LIVE, "generator", {"run_hours": 7.5})  # not a counter of this outbox
    box.commit()
    box.close()  # the rows themselves may be delivered and deleted later: the counter stays
    again = Outbox(path, counters={"water": ("total_l",)})
    assert again.counters == {("water", "total_l"): 18.52}
    again.accept(LIVE, "water", {"total_l": None})
    again.accept(LIVE, "water", {"total_l": True})
    again.commit()
    assert again.counters == {("water", "total_l"): 18.52}


def test_every_total_increasing_field_home_assistant_gets_is_a_counter(make_config):
    """A new `total_increasing` entity needs its field among the counters (or to be the outbox's own
    `dropped`, durable already), else it could go back after a restart."""
    config = load(make_config(None, {
        "homeassistant": {"enabled": True},
        "generator": _demo("generator"), "water": _demo("water"), "host": {},
    }))
    counters = _counters(config)
    totals = []
    for _, payload in discovery_messages(config, "0"):
        entity = json.loads(payload)
        if entity.get("state_class") == "total_increasing":
            stream = entity["state_topic"].split("/", 2)[2]  # boxtel/<id>/<stream>
            field = re.match(r"\{\{ value_json\.(\w+)", entity["value_template"]).group(1)
            totals.append((stream, field))
    assert {("generator", "run_hours"), ("water", "total_l"), (HEALTH, "reconnects")} <= set(totals)
    missing = [(s, f) for s, f in totals if f not in counters.get(s, ()) and (s, f) != (HEALTH, "dropped")]
    assert not missing, missing


def test_health_reconnects_resume_from_the_last_value_published(make_config, tmp_path):
    config = load(make_config(None))
    box = Outbox(config.state_dir / "outbox.db", counters={HEALTH: ("reconnects",)})
    box.accept(LIVE, HEALTH, {"reconnects": 7})
    box.close()
    agent = Agent(config)
    try:
        assert agent.publisher.reconnects == 7 and agent.health_fields()["reconnects"] == 7
    finally:
        agent.outbox.close()
