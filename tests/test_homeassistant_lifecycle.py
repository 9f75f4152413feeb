"""The Home Assistant discovery lifecycle with two real agents on one real mosquitto behind the documented
ACL: announced once, not again on a reconnect, again when Home Assistant comes online, and taken back
(config and retained state) when a locker or a driver is removed or discovery is switched off."""

from __future__ import annotations

import json
from pathlib import Path

from agent import __version__
from agent.config import load
from agent.homeassistant import discovery_messages
from tests.proxy import CUT, PASS, LinkProxy
from tests.support import Subscriber, wait_until
from tests.test_homeassistant import documented_acl

BOXES = ("pib-017", "pib-018")


def test_two_boxes_announce_once_answer_home_assistant_and_take_back_what_is_gone(
        make_broker, make_config, run_agent, tmp_path: Path):
    broker = make_broker(acl=documented_acl())
    ha = Subscriber(broker.port, ["homeassistant/#", "boxtel/#"], username="homeassistant")
    proxies = {box: LinkProxy(broker.port) for box in BOXES}
    try:
        def config(box: str, *, lockers=("armory-1", "armory_1"), generator: bool = True, enabled: bool = True) -> Path:
            return make_config(None, {
                "simulate": True,
                "box": {"id": box, "state_dir": str(tmp_path / box)},
                "mqtt": {"port": proxies[box].port},
                "diagnostics": {"socket": str(tmp_path / f"{box}.sock")},
                "homeassistant": {"enabled": enabled},
                # health every second: the marker that a box's connect burst is over
                "host": {"interval_s": 1.0, "power_check_s": 1.0, "min_interval_s": 0.0, "max_interval_s": 1.0},
                "locker": [{"name": name, "door": {"pin": 5 + i}} for i, name in enumerate(lockers)],
                "generator": {"running": {"pin": 20}} if generator else None,
            }, name=f"{box}-{len(list(tmp_path.glob(f'{box}-*')))}.toml")

        def expected(path: Path) -> dict[str, dict]:
            return {t: json.loads(p) for t, p in discovery_messages(load(path), __version__)}

        def configs_from(box: str) -> list:
            return [m for m in ha.on(f"homeassistant/+/{box}/+/config") if m.raw]

        def taken_back(box: str) -> set[str]:
            return {m.topic for m in ha.messages[:] if not m.raw and f"/{box}/" in m.topic}

        def birth(box: str, after: int) -> int:
            return ha.wait_for(f"boxtel/{box}/status", lambda p: p["state"] == "online" and p["session"] > after,
                               ).json["session"]

        def health_after_birth(box: str) -> None:
            """A state message sent after the birth: anything the box publishes on connect came before it."""
            births = [i for i, m in enumerate(ha.messages[:]) if m.topic == f"boxtel/{box}/status"]
            wait_until(lambda: any(m.topic == f"boxtel/{box}/health" for m in ha.messages[births[-1]:]),
                       what=f"{box}'s health after its birth")

        paths = {box: config(box) for box in BOXES}
        agents = {box: run_agent(paths[box]) for box in BOXES}
        want = {box: expected(paths[box]) for box in BOXES}
        sessions = {}
        for box in BOXES:
            wait_until(lambda box=box: len(configs_from(box)) == len(want[box]), what=f"{box}'s configs")
            assert {m.topic: m.json for m in configs_from(box)} == want[box]
            sessions[box] = birth(box, 0)
            ha.wait_for(f"boxtel/{box}/locker/armory_1")
        assert len(want["pib-017"]) > 20 and want["pib-017"].keys().isdisjoint(want["pib-018"])

        # Home Assistant's birth, retained (as some set it): live now, so both boxes answer with everything
        ha.clear()
        ha.client.publish("homeassistant/status", "online", qos=1, retain=True)
        for box in BOXES:
            wait_until(lambda box=box: len(configs_from(box)) == len(want[box]), what=f"{box} answering HA")

        # a reconnect costs the birth and the current state, no discovery (the retained HA birth is old news)
        ha.clear()
        for proxy in proxies.values():
            proxy.set_mode(CUT)
            proxy.set_mode(PASS)
        for box in BOXES:
            sessions[box] = birth(box, sessions[box])
            health_after_birth(box)
        assert ha.on("homeassistant/#") == [], ha.on("homeassistant/#")[:3]

        # pib-017 loses a locker and its generator: both come back cleared, nothing else is re-sent
        assert agents["pib-017"].terminate() == 0
        ha.clear()
        smaller = config("pib-017", lockers=("armory-1",), generator=False)
        agents["pib-017"] = run_agent(smaller)
        gone = want["pib-017"].keys() - expected(smaller).keys()
        assert len(gone) >= 6  # three locker entities, the generator's
        state_gone = {"boxtel/pib-017/locker/armory_1", "boxtel/pib-017/generator"}
        wait_until(lambda: taken_back("pib-017") >= gone | state_gone, what="the removed configs and states cleared")
        sessions["pib-017"] = birth("pib-017", sessions["pib-017"])
        health_after_birth("pib-017")
        assert configs_from("pib-017") == []  # unchanged configs are not announced again
        assert taken_back("pib-017") == gone | state_gone and taken_back("pib-018") == set()

        late = Subscriber(broker.port, ["homeassistant/#", "boxtel/#"], username="homeassistant")
        try:
            still = expected(smaller).keys() | want["pib-018"].keys()
            wait_until(lambda: {m.topic for m in late.on("homeassistant/+/+/+/config")} == still,
                       what="the retained configs of both boxes")
        finally:
            late.close()
        # mosquitto sends the retained messages of subscriptions in their order: once the last arrived,
        # anything retained on the first ones would have too
        late = Subscriber(broker.port, [*sorted(state_gone), "boxtel/pib-017/locker/armory-1"], username="homeassistant")
        try:
            assert late.wait_for("boxtel/pib-017/locker/armory-1").retain
            assert [m.topic for m in late.messages[:]] == ["boxtel/pib-017/locker/armory-1"]
        finally:
            late.close()

        # discovery switched off: the box takes all of it back
        assert agents["pib-017"].terminate() == 0
        ha.clear()
        agents["pib-017"] = run_agent(config("pib-017", lockers=("armory-1",), generator=False, enabled=False))
        wait_until(lambda: taken_back("pib-017") >= expected(smaller).keys(), what="every config taken back")
        assert configs_from("pib-017") == [] and taken_back("pib-018") == set()
        assert all(agent.alive() for agent in agents.values())
        assert "refused" not in agents["pib-017"].log() + agents["pib-018"].log()
    finally:
        ha.close()
        for proxy in proxies.values():
            proxy.close()


def test_a_flood_of_home_assistant_births_costs_one_announcement(make_broker, make_config, run_agent, tmp_path):
    # Anyone allowed to write homeassistant/status: 200 births in a burst must not become 200 rounds of
    # every config on a billed link.
    broker = make_broker()
    ha = Subscriber(broker.port, ["homeassistant/#", "boxtel/#"])
    try:
        path = make_config(broker, {"simulate": True, "homeassistant": {"enabled": True},
                                    "locker": [{"name": "armory-1", "door": {"pin": 5}}],
                                    "host": {"interval_s": 1.0, "power_check_s": 1.0, "min_interval_s": 0.0,
                                             "max_interval_s": 1.0}})
        want = {t for t, _ in discovery_messages(load(path), __version__)}
        agent = run_agent(path)

        def configs() -> list:
            return [m for m in ha.on("homeassistant/+/+/+/config") if m.raw]

        wait_until(lambda: {m.topic for m in configs()} == want, what="the first announcement")
        ha.wait_for("boxtel/test-001/status", lambda p: p["state"] == "online")
        ha.clear()
        for _ in range(200):
            ha.client.publish("homeassistant/status", "online", qos=1)
        wait_until(lambda: "announced itself again within 60 s" in agent.log(), what="the flood noticed")
        # Two health readings later the agent has long since taken every birth (they came in one burst),
        # and what it answered them with was sent before these.
        seen = len(ha.on("boxtel/test-001/health"))
        wait_until(lambda: len(ha.on("boxtel/test-001/health")) >= seen + 2, what="two more health readings")
        assert sorted(m.topic for m in configs()) == sorted(want)  # one round, not 200
        assert agent.log().count("announced itself again") == 1
    finally:
        ha.close()
