"""The recipes under integrations/, run against what a real agent publishes: Telegraf's topic parsing
(implemented here as Telegraf's mqtt_consumer does it), the Grafana dashboard's queries, and the Node-RED
flow in a real Node-RED (tests/test_nodered.py)."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import pytest

from tests.proxy import CUT, PASS, LinkProxy
from tests.support import ROOT, Subscriber, boxtel, wait_until

INTEGRATIONS = ROOT / "integrations"
TELEGRAF = INTEGRATIONS / "telegraf" / "boxtel.conf"
DASHBOARD = INTEGRATIONS / "grafana" / "dashboard.json"
BOX = "pib-017"


# -- Telegraf's rules ------------------------------------------------------------------------------------
@dataclass
class TopicRule:
    """One `[[inputs.mqtt_consumer.topic_parsing]]`, as plugins/inputs/mqtt_consumer/topic_parser.go
    applies it: `+` matches any one level, `#` any number (once), other levels literally; without `#` a
    topic matches only with exactly as many levels; `_` in measurement/tags skips a level. Telegraf
    applies every rule that matches, in order (a later one overrides the measurement): the config is
    written so that exactly one matches each topic."""

    topic: str
    measurement: str = ""
    tags: str = ""
    literals: dict[str, int] = field(default_factory=dict)
    var_length: bool = False
    min_length: int = 0

    def __post_init__(self) -> None:
        levels = self.topic.split("/")
        inverted = False
        for i, level in enumerate(levels):
            if level == "#":
                assert not self.var_length, "topic can only contain one hash"
                self.var_length = inverted = True
                continue
            if level != "+":
                self.literals[level] = i - len(levels) if inverted else i
            self.min_length += 1
        for setting in (self.measurement, self.tags):
            if setting and not self.var_length:  # Telegraf refuses to start otherwise
                assert len(setting.split("/")) == self.min_length, f"{setting!r} is not as long as {self.topic!r}"

    def parse(self, topic: str) -> tuple[str | None, dict[str, str]] | None:
        parts = topic.split("/")
        if (len(parts) < self.min_length) if self.var_length else (len(parts) != self.min_length):
            return None
        if any(parts[i] != literal for literal, i in self.literals.items()):
            return None
        measurement = next((parts[i] for i, name in enumerate(self.measurement.split("/")) if name not in ("_", "")),
                           None) if self.measurement else None
        tags = {name: parts[i] for i, name in enumerate(self.tags.split("/")) if name not in ("_", "")}
        return measurement, tags


@dataclass
class Input:
    topics: list[str]
    rules: list[TopicRule]
    excluded: set[str]
    tag_keys: set[str]
    timestamp_path: str | None
    topic_tag: str

    def metric(self, topic: str, payload: dict) -> tuple[str, dict[str, str], dict[str, object]]:
        matches = [parsed for rule in self.rules if (parsed := rule.parse(topic)) is not None]
        assert len(matches) == 1, f"{topic}: {len(matches)} topic_parsing rules match"
        measurement, tags = matches[0]
        tags = {**tags, **({self.topic_tag: topic} if self.topic_tag else {})}
        tags |= {key: str(payload[key]) for key in self.tag_keys if payload.get(key) is not None}
        fields = {key: value for key, value in payload.items() if key not in self.excluded | self.tag_keys
                  and value is not None and not isinstance(value, list | dict)}
        return measurement, tags, fields


def telegraf_inputs() -> list[Input]:
    config = tomllib.loads(TELEGRAF.read_text())
    inputs = []
    for section in config["inputs"]["mqtt_consumer"]:
        assert section["qos"] == 1 and section["persistent_session"] and section["client_id"]
        assert section["data_format"] == "json_v2"
        (parser,) = section["json_v2"]
        (obj,) = parser["object"]
        assert obj["path"] == "@this"
        inputs.append(Input(section["topics"], [TopicRule(r["topic"], r.get("measurement", ""), r.get("tags", ""))
                                                for r in section["topic_parsing"]],
                            set(obj.get("excluded_keys", [])), set(obj.get("tags", [])),
                            parser.get("timestamp_path"), section.get("topic_tag", "topic")))
    return inputs


def to_metric(topic: str, payload: dict) -> tuple[str, dict, dict, Input]:
    inputs = [i for i in telegraf_inputs() if any(mqtt.topic_matches_sub(t, topic) for t in i.topics)]
    assert len(inputs) == 1, f"{topic}: subscribed by {len(inputs)} Telegraf inputs"
    return (*inputs[0].metric(topic, payload), inputs[0])


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> list[tuple[str, dict]]:
    """Every (topic, payload) a real agent on simulated hardware publishes, history replay included."""
    from agent.devbroker import Broker
    from tests.support import AgentProcess, toml_dumps

    tmp = tmp_path_factory.mktemp("integrations")
    broker = Broker(tmp / "broker").start()
    proxy = LinkProxy(broker.port)
    sub = Subscriber(broker.port, "boxtel/#")
    config = tmp / "agent.toml"
    quick = {"max_interval_s": 1.0, "min_interval_s": 0.0}
    config.write_text(toml_dumps({
        "simulate": True,
        "box": {"id": BOX, "site": "Bor", "state_dir": str(tmp / "state")},
        "mqtt": {"host": "127.0.0.1", "port": proxy.port, "keepalive_s": 5, "reconnect_min_s": 0.2,
                 "reconnect_max_s": 1.0},
        "diagnostics": {"socket": str(tmp / "control.sock")},
        "outbox": {"history_interval_s": 0.2},
        "host": {"interval_s": 1.0, "power_check_s": 1.0, "min_interval_s": 0.0, "max_interval_s": 1.0},
        "gps": {"publish_interval_s": 1.0, **quick},
        "generator": {"running": {"pin": 17, "active_high": False}, **quick,
                      "fuel": {"channel": 0, "interval_s": 0.5, "smoothing": 1}},
        # a simulated tank is below 99 %: tank_low is raised at once (an alarm event, with its tags)
        "water": {"tank": {"channel": 1, "interval_s": 0.5, "smoothing": 1}, "pump": {"pin": 19}, **quick,
                  "tank_low_pct": 99.0, "tank_low_clear_pct": 99.5, "tank_high_pct": 100.0, "tank_high_clear_pct": 99.8},
        "locker": [{"name": "armory-1", "door": {"pin": 23}, **quick}],
    }))
    agent = AgentProcess(config)
    try:
        for stream in ("gps", "generator", "water", "health", "locker/armory-1", "status"):
            sub.wait_for(f"boxtel/{BOX}/{stream}", timeout=30)
        sub.wait_for(f"boxtel/{BOX}/events", lambda p: p["kind"] == "alarm_raised", timeout=30)
        proxy.set_mode(CUT)

        def buffered() -> bool:
            result = boxtel("status", "--json", "-c", str(config))
            return result.returncode in (0, 1, 2) and (json.loads(result.stdout or "{}").get("outbox_depth") or 0) >= 12
        wait_until(buffered, 30, "readings buffered while the link is down")
        proxy.set_mode(PASS)
        wait_until(lambda: sub.on(f"boxtel/{BOX}/history/locker/+") and sub.on(f"boxtel/{BOX}/history/gps"), 30,
                   "history replayed after the outage")
        assert agent.terminate() == 0
        messages = [(m.topic, m.json) for m in sub.messages[:] if m.raw]
    except AssertionError as err:
        raise AssertionError(f"{err}; the agent's log ends: {agent.log()[-1500:]}") from None
    finally:
        agent.close()
        sub.close()
        proxy.close()
        broker.stop()
    return messages


def test_every_published_topic_matches_exactly_one_telegraf_rule_and_history_merges(published):
    series: dict[str, set] = {}
    for topic, payload in published:
        measurement, tags, fields, source = to_metric(topic, payload)
        stream = topic.split("/", 2)[2]
        live = stream.removeprefix("history/")
        assert measurement == live.split("/")[0], topic
        assert tags["box"] == BOX and (tags.get("name") == live.split("/")[1] if "/" in live else "name" not in tags)
        if stream != "events":
            assert not set(tags) - {"box", "name"}, (topic, tags)  # door, fix, state: fields, not tags
        if stream == "status":
            assert source.timestamp_path is None and fields["state"] in ("online", "offline")
        else:
            assert source.timestamp_path == "ts" and "ts" in payload
        if live.startswith("locker/"):
            assert fields["door"] in ("open", "closed")
        if live == "gps":
            assert "fix" in fields
        series.setdefault(stream, set()).add((measurement, tuple(sorted(tags.items()))))
    streams = set(series)
    assert {"gps", "generator", "water", "health", "events", "status", "locker/armory-1",
            "history/gps", "history/locker/armory-1"} <= streams
    for stream in streams:
        if stream.startswith("history/"):  # the very series of the live stream
            assert series[stream] == series[stream.removeprefix("history/")], stream


def test_the_docs_point_to_the_shipped_files():
    doc = (ROOT / "docs" / "mqtt.md").read_text()
    for path in ("integrations/telegraf/boxtel.conf", "integrations/node-red/flow.json",
                 "integrations/grafana/dashboard.json"):
        assert path in doc and (ROOT / path).is_file(), path
    assert "[[inputs.mqtt_consumer]]" not in doc  # one copy of the config: the file


# -- Grafana --------------------------------------------------------------------------------------------
def test_every_dashboard_query_reads_a_measurement_and_field_telegraf_writes(published):
    written: dict[str, set[str]] = {}
    tags: dict[str, set[str]] = {}
    for topic, payload in published:
        measurement, metric_tags, fields, _ = to_metric(topic, payload)
        written.setdefault(measurement, set()).update(fields)
        tags.setdefault(measurement, set()).update(metric_tags)
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["query"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(queries) == len(dashboard["panels"]) >= 6
    kinds = {panel["type"] for panel in dashboard["panels"]}
    assert {"geomap", "table", "timeseries", "state-timeline"} <= kinds
    for query in queries:
        measurements = re.findall(r'r\._measurement == "([^"]+)"', query)
        assert measurements, query
        for measurement in measurements:
            assert measurement in written, query
            for name in re.findall(r'r\._field == "([^"]+)"', query):
                assert name in written[measurement], (measurement, name)
            for tag in re.findall(r'r\.(\w+) == "', query):
                assert tag in ("_measurement", "_field") or tag in tags[measurement], (measurement, tag)
            for column in re.findall(r'columns: \[([^\]]*)\]', query):
                for name in re.findall(r'"(\w+)"', column):
                    assert name.startswith("_") or name in tags[measurement] | written[measurement], (query, name)
    assert dashboard["templating"]["list"][0]["name"] == "bucket"
