"""Home Assistant MQTT discovery: config payloads checked against the keys HA documents, templates rendered
with Jinja2 (HA's template engine) against the agreed payloads, and a real agent announcing itself."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import jinja2
import pytest

from agent.homeassistant import Box, Entity, agent_entities, driver_entities
from tests.support import wait_until

# From the Home Assistant docs of MQTT discovery and of each MQTT platform (full names, no abbreviations).
COMMON_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic", "default_entity_id",
    "device", "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id", "origin", "payload_available",
    "payload_not_available", "platform", "qos", "unique_id", "value_template",
}
COMPONENT_KEYS = {
    "sensor": {"device_class", "expire_after", "force_update", "last_reset_value_template", "options",
               "state_class", "state_topic", "suggested_display_precision", "unit_of_measurement"},
    "binary_sensor": {"device_class", "expire_after", "force_update", "off_delay", "payload_off", "payload_on",
                      "state_topic"},
    "device_tracker": {"payload_home", "payload_not_home", "payload_reset", "source_type", "state_topic"},
}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
               "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device"}
AVAILABILITY_KEYS = {"payload_available", "payload_not_available", "topic", "value_template"}
BINARY_DEVICE_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas",
    "heat", "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power",
    "presence", "problem", "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
}
# The sensor device classes we use, with the units HA accepts for each.
SENSOR_UNITS = {
    "duration": {"d", "h", "min", "s", "ms"}, "temperature": {"°C", "°F", "K"}, "data_size": {"B", "kB", "MB", "GB", "KiB", "MiB", "GiB"},
    "speed": {"m/s", "km/h", "kn", "mph"}, "distance": {"m", "km", "ft", "mi"},
    "volume_flow_rate": {"L/min", "L/h", "m³/h", "gal/min"}, "water": {"L", "m³", "gal"}, "enum": {None},
    "timestamp": {None},
    "volume_storage": {"L", "mL", "m³", "gal"}, "voltage": {"V", "mV"}, "power": {"W", "kW"},
    "pressure": {"Pa", "hPa", "kPa", "bar", "mbar", "psi"},
}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
SOURCE_TYPES = {"gps", "router", "bluetooth", "bluetooth_le"}

BOX = Box("pib-017", "boxtel/pib-017", "0.1.0")
PAYLOADS = {  # the agreed field names (BRIEFING), as the drivers publish them
    "gps": {"lat": 9.0301, "lon": 38.7402, "alt_m": 2355.0, "speed_mps": 0.0, "course_deg": None, "fix": "3d",
            "sats": 9, "sats_seen": 14, "hdop": 0.9, "pdop": 1.6, "home_distance_m": 12.5, "alarms": []},
    "generator": {"running": True, "fuel_pct": 12.0, "run_hours": 1520.4, "fault": True, "faults": ["low_oil"],
                  "alarms": ["fuel_low", "generator_fault:low_oil"]},
    "water": {"tank_pct": 64.0, "flow_lpm": 3.5, "total_l": 10450.0, "pump": True, "leak": False, "alarms": []},
    "locker/armory-1": {"door": "open", "since": "2026-11-24T18:58:02.123Z", "armed": True, "switch_fault": False,
                        "alarms": ["door_opened_while_armed"]},
    "health": {"cpu_pct": 7.5, "memory_pct": 31.0, "disk_free_mb": 12000, "temperature_c": 51.2, "uptime_s": 3600,
               "undervoltage": "active", "throttled": "unavailable", "outbox_depth": 3, "outbox_oldest_s": 12,
               "dropped": 0, "reconnects": 2, "clock_source": "gps", "clock_offset_s": 0.4, "alarms": ["undervoltage"]},
}
ALL_ENTITIES = (
    agent_entities(BOX)
    + driver_entities(BOX, "host", "health")
    + driver_entities(BOX, "gps", "gps")
    + driver_entities(BOX, "generator", "generator")
    + driver_entities(BOX, "water", "water")
    + driver_entities(BOX, "locker", "locker/armory-1")
)


def _ha_environment() -> jinja2.Environment:
    """Jinja2 with the two Home Assistant template functions our templates use, as HA documents them:
    as_timestamp(ISO string) -> UNIX seconds; timestamp_utc(seconds) -> ISO 8601 with +00:00."""
    env = jinja2.Environment()
    env.globals["as_timestamp"] = lambda text: datetime.fromisoformat(text).timestamp()
    env.filters["timestamp_utc"] = lambda seconds: datetime.fromtimestamp(seconds, UTC).isoformat()
    return env


def render(template: str, payload: dict) -> str:
    return _ha_environment().from_string(template).render(value_json=payload).strip()


def check_documented(component: str, config: dict) -> None:
    """Every key is one HA documents for the component; the required ones are there and consistent."""
    assert not set(config) - COMMON_KEYS - COMPONENT_KEYS[component], config
    assert not set(config["device"]) - DEVICE_KEYS
    assert config["origin"]["name"] == "boxtel" and config["origin"]["sw_version"] and config["origin"]["support_url"]
    if config.get("device_class") == "timestamp":
        assert "state_class" not in config and "unit_of_measurement" not in config
    assert config["device"]["identifiers"] and config["unique_id"]
    assert all(set(a) <= AVAILABILITY_KEYS and a["topic"] for a in config["availability"])
    if component == "device_tracker":
        assert config["source_type"] in SOURCE_TYPES and config["json_attributes_topic"]
    else:
        assert config["state_topic"]
    if component == "binary_sensor" and "device_class" in config:
        assert config["device_class"] in BINARY_DEVICE_CLASSES
    if component == "sensor":
        device_class = config.get("device_class")
        if device_class is not None:
            assert config.get("unit_of_measurement") in SENSOR_UNITS[device_class], config
        if device_class == "enum":
            assert config["options"] and "state_class" not in config
        if "state_class" in config:
            assert config["state_class"] in STATE_CLASSES
    if "json_attributes_template" in config:
        assert config["json_attributes_topic"]


@pytest.mark.parametrize("entity", ALL_ENTITIES, ids=lambda e: f"{e.component}:{e.key}")
def test_every_config_uses_only_documented_keys(entity: Entity):
    check_documented(entity.component, entity.payload(BOX))
    assert entity.topic("homeassistant", BOX) == f"homeassistant/{entity.component}/pib-017/{entity.key}/config"


def test_unique_ids_are_unique_and_one_device_per_box():
    configs = [e.payload(BOX) for e in ALL_ENTITIES]
    assert len({c["unique_id"] for c in configs}) == len(configs)
    assert {json.dumps(c["device"], sort_keys=True) for c in configs} == {json.dumps(BOX.device(), sort_keys=True)}
    assert BOX.device()["identifiers"] == ["pib-017"] and BOX.device()["sw_version"] == "0.1.0"


def test_availability_follows_birth_and_will():
    template = BOX.availability()[0]["value_template"]
    assert render(template, {"state": "online", "session": 3}) == "online"
    assert render(template, {"state": "offline", "reason": "connection lost"}) == "offline"


def by_key(key: str) -> dict:
    return next(e for e in ALL_ENTITIES if e.key == key).payload(BOX)


@pytest.mark.parametrize("key, expected, component, device_class", [
    ("locker_armory-1_door", "ON", "binary_sensor", "door"),
    ("locker_armory-1_armed", "ON", "binary_sensor", None),
    ("generator_running", "ON", "binary_sensor", "running"),
    ("generator_alarm", "ON", "binary_sensor", "problem"),
    ("gps_alarm", "OFF", "binary_sensor", "problem"),
    ("water_leak", "OFF", "binary_sensor", "moisture"),
    ("undervoltage", "ON", "binary_sensor", "problem"),
    ("throttled", "None", "binary_sensor", "problem"),  # no source: unknown in HA, never "OK"
    ("generator_fuel_pct", "12.0", "sensor", None),
    ("water_flow_lpm", "3.5", "sensor", "volume_flow_rate"),
    ("water_tank_level", "None", "sensor", "enum"),  # an ADC tank sends tank_pct only: "unknown"
    ("gps_fix", "3d", "sensor", "enum"),
    ("home_distance_m", "12.5", "sensor", "distance"),
    ("outbox_depth", "3", "sensor", None),
    ("clock_source", "gps", "sensor", "enum"),
])
def test_templates_read_the_agreed_fields(key, expected, component, device_class):
    config = by_key(key)
    entity = next(e for e in ALL_ENTITIES if e.key == key)
    assert entity.component == component and config.get("device_class") == device_class
    assert render(config["value_template"], PAYLOADS[entity.stream]) == expected


def test_door_closed_reads_off_and_alarm_names_are_attributes():
    config = by_key("locker_armory-1_door")
    assert render(config["value_template"], {**PAYLOADS["locker/armory-1"], "door": "closed"}) == "OFF"
    alarm = by_key("locker_armory-1_alarm")
    assert json.loads(render(alarm["json_attributes_template"], PAYLOADS["locker/armory-1"])) == {
        "alarms": ["door_opened_while_armed"]}


def test_gps_tracker_gives_home_assistant_latitude_and_longitude_and_nothing_without_a_fix():
    config = by_key("position")
    attributes = json.loads(render(config["json_attributes_template"], PAYLOADS["gps"]))
    assert (attributes["latitude"], attributes["longitude"]) == (9.0301, 38.7402)
    assert attributes["gps_accuracy"] == pytest.approx(4.5)
    no_fix = {**PAYLOADS["gps"], "lat": None, "lon": None, "fix": "none"}
    assert json.loads(render(config["json_attributes_template"], no_fix)) == {"fix": "none"}


def test_only_the_fields_a_configured_driver_sends_become_entities():
    from drivers.generator import GeneratorConfig
    from drivers.gpio import AdcConfig, InputConfig
    from drivers.water import WaterConfig

    floats = WaterConfig(float_low=InputConfig(pin=5), float_high=InputConfig(pin=6), leak=InputConfig(pin=26))
    keys = {e.key for e in driver_entities(BOX, "water", "water", floats)}
    assert keys == {"water_tank_level", "water_leak", "water_alarm"}  # no ADC, flow meter or pump wired
    adc = WaterConfig(tank=AdcConfig(channel=1), flow=InputConfig(pin=13), pump=InputConfig(pin=19))
    keys = {e.key for e in driver_entities(BOX, "water", "water", adc)}
    assert keys == {"water_tank_pct", "water_flow_lpm", "water_total_l", "water_pump", "water_alarm"}
    no_fuel = GeneratorConfig(running=InputConfig(pin=17))
    assert "generator_fuel_pct" not in {e.key for e in driver_entities(BOX, "generator", "generator", no_fuel)}


# -- a real agent --------------------------------------------------------------------------------------
def test_agent_announces_its_entities_retained_after_its_birth(broker, make_config, run_agent, subscribe):
    config = make_config(broker, {"simulate": True, "host": {"interval_s": 1.0, "power_check_s": 1.0},
                                  "homeassistant": {"enabled": True, "discovery_prefix": "ha"}})
    agent = run_agent(config)
    sub = subscribe(["ha/#", "boxtel/#"])
    def announced(subscriber) -> list:
        return [m for m in subscriber.on("ha/#") if m.raw]  # not the first start's take-backs of retired keys

    wait_until(lambda: len(announced(sub)) >= len(agent_entities(BOX)) + len(driver_entities(BOX, "host", "health")),
               what="every discovery config")
    health = sub.wait_for("boxtel/test-001/health", lambda p: "cpu_pct" in p)
    late = subscribe(["ha/#"])  # retained: Home Assistant starting later still finds them
    wait_until(lambda: len(late.on("ha/#")) == len(announced(sub)), what="retained configs")
    for message in late.on("ha/#"):
        assert message.retain
        component = message.topic.split("/")[1]
        config_payload = message.json
        check_documented(component, config_payload)
        assert config_payload["device"]["identifiers"] == ["test-001"]
        assert config_payload["availability"][0]["topic"] == "boxtel/test-001/status"
        if config_payload.get("state_topic") == "boxtel/test-001/health" and config_payload.get("unit_of_measurement") == "%":
            float(render(config_payload["value_template"], health.json))  # a number from the real payload
    assert agent.alive()


def test_a_broker_refusing_discovery_is_reported_and_the_agent_carries_on(make_broker, make_config, run_agent):
    broker = make_broker(acl="pattern readwrite boxtel/%u/#\n")
    config = make_config(broker, {"homeassistant": {"enabled": True}})
    agent = run_agent(config)
    wait_until(lambda: "refused Home Assistant discovery" in agent.log(), what="the refusal in the log")
    assert agent.alive()
    assert agent.terminate() == 0


def test_the_documented_acl_lets_a_box_announce_only_itself(make_broker, make_config, run_agent):
    from tests.support import Subscriber

    broker = make_broker(acl=documented_acl())
    ha = Subscriber(broker.port, "homeassistant/#", username="homeassistant")
    try:
        agent = run_agent(make_config(broker, {"homeassistant": {"enabled": True}}))
        wait_until(lambda: len([m for m in ha.on("homeassistant/#") if m.raw]) == len(agent_entities(BOX)),
                   what="the agent's configs")
        assert {m.topic.split("/")[2] for m in ha.on("homeassistant/#")} == {"test-001"}
        assert "refused" not in agent.log()
    finally:
        ha.close()


# -- ids, device, expiry -------------------------------------------------------------------------------
def _load(make_config, extra: dict):
    from agent.config import load

    return load(make_config(None, extra))


def test_lockers_that_clean_to_one_name_stay_two_entities(make_config):
    from agent.homeassistant import discovery_messages

    lockers = [{"name": name, "door": {"pin": pin}} for name, pin in (("armory.1", 17), ("armory_1", 27))]
    config = _load(make_config, {"simulate": True, "homeassistant": {"enabled": True}, "locker": lockers})
    messages = discovery_messages(config, "0.1.0", hardware=(None, None))
    doors = {t: json.loads(p) for t, p in messages if json.loads(p)["name"].endswith(" door")}
    assert len(doors) == 2 and len({c["unique_id"] for c in doors.values()}) == 2
    assert {c["state_topic"] for c in doors.values()} == {"boxtel/test-001/locker/armory.1",
                                                          "boxtel/test-001/locker/armory_1"}
    # the clean name keeps its id (HA keeps its history); the cleaned one carries a hash of the original
    assert "homeassistant/binary_sensor/test-001/locker_armory_1_door/config" in doors
    hashed = next(t for t, c in doors.items() if c["state_topic"].endswith("armory.1"))
    assert re.fullmatch(r"homeassistant/binary_sensor/test-001/locker_armory_1_door_[0-9a-f]{6}/config", hashed)
    assert len({t for t, _ in messages}) == len(messages)  # injective over every entity of the box


def test_a_box_id_home_assistant_cannot_name_is_a_config_error(make_config):
    from agent.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        _load(make_config, {"box": {"id": "pib.017"}, "homeassistant": {"enabled": True}})
    assert caught.value.key == "box.id" and "pib.017" in str(caught.value)
    assert _load(make_config, {"box": {"id": "pib.017"}}).box.id == "pib.017"  # fine without HA


def test_device_carries_site_pi_model_and_serial_where_readable(tmp_path, make_config):
    from agent.homeassistant import discovery_messages, read_pi_model, read_pi_serial

    (tmp_path / "model").write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    (tmp_path / "serial-number").write_bytes(b"10000000abcdef01\x00")
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 10000000deadbeef\n")
    (tmp_path / "zeros").write_bytes(b"0000000000000000\x00")
    assert read_pi_model((str(tmp_path / "missing"), str(tmp_path / "model"))) == "Raspberry Pi 4 Model B Rev 1.4"
    assert read_pi_serial((str(tmp_path / "serial-number"),)) == "10000000abcdef01"
    assert read_pi_serial((str(tmp_path / "zeros"), str(tmp_path / "cpuinfo"))) == "10000000deadbeef"
    assert read_pi_model((str(tmp_path / "missing"),)) is None and read_pi_serial((str(tmp_path / "model"),)) is not None

    config = _load(make_config, {"homeassistant": {"enabled": True}})
    device = json.loads(discovery_messages(config, "0.1.0", hardware=("Raspberry Pi 4", "10000000abcdef01"))[0][1])["device"]
    assert (device["suggested_area"], device["hw_version"], device["serial_number"]) == \
        ("Testville", "Raspberry Pi 4", "10000000abcdef01")
    bare = json.loads(discovery_messages(_load(make_config, {"box": {"site": ""}, "homeassistant": {"enabled": True}}),
                                         "0.1.0", hardware=(None, None))[0][1])["device"]
    assert not {"suggested_area", "hw_version", "serial_number"} & set(bare)


def test_state_sensors_expire_after_two_max_intervals_of_their_stream(make_config):
    from agent.homeassistant import discovery_messages

    config = _load(make_config, {"simulate": True, "homeassistant": {"enabled": True},
                                 "host": {"max_interval_s": 120.0},
                                 "generator": {"running": {"pin": 17}, "max_interval_s": 45.5},
                                 "gps": {"port": "/dev/null"}})
    configs = [json.loads(p) for _, p in discovery_messages(config, "0.1.0", hardware=(None, None))]
    expiry = {c["state_topic"].rsplit("/", 1)[1]: c.get("expire_after") for c in configs if "state_topic" in c}
    assert expiry == {"health": 240, "generator": 91, "gps": 7200}  # gps: the default max interval, an hour
    assert all("expire_after" in c for c in configs if "state_topic" in c)
    tracker = next(c for c in configs if "state_topic" not in c)
    assert "expire_after" not in tracker  # HA's device_tracker has no such key
    without_host = [json.loads(p) for _, p in discovery_messages(
        _load(make_config, {"homeassistant": {"enabled": True}}), "0.1.0", hardware=(None, None))]
    assert {c["expire_after"] for c in without_host} == {7200}  # the agent's own health: hourly
    # A data budget's saving steps stretch the intervals: health 4 times, state re-sent daily
    budgeted = _load(make_config, {"simulate": True, "homeassistant": {"enabled": True}, "link": {"budget_mb_month": 8},
                                   "host": {"max_interval_s": 120.0}, "gps": {"port": "/dev/null"}})
    configs = [json.loads(p) for _, p in discovery_messages(budgeted, "0.1.0", hardware=(None, None))]
    expiry = {c["state_topic"].rsplit("/", 1)[1]: c.get("expire_after") for c in configs if "state_topic" in c}
    assert expiry == {"health": 960, "gps": 172800}


def test_last_boot_is_a_timestamp_from_the_clock_and_uptime():
    config = by_key("last_boot")
    assert config["device_class"] == "timestamp"
    payload = {**PAYLOADS["health"], "ts": "2026-11-24T18:58:02.123Z", "uptime_s": 3600}
    assert render(config["value_template"], payload) == "2026-11-24T17:58:00+00:00"
    later = {**payload, "ts": "2026-11-24T19:58:02.911Z", "uptime_s": 7201}  # to the minute: the same boot
    assert render(config["value_template"], later) == "2026-11-24T17:58:00+00:00"
    assert render(config["value_template"], {"ts": "2026-11-24T18:58:02.123Z", "uptime_s": None}) == "None"


def documented_acl() -> str:
    """The mosquitto ACL file exactly as docs/mqtt.md gives it."""
    from tests.support import ROOT

    text = (ROOT / "docs" / "mqtt.md").read_text()
    return re.search(r"`/etc/mosquitto/acl`:\n\n```\n(.*?)```", text, re.S).group(1)


def test_the_birth_topic_is_home_assistants_own_setting_not_the_discovery_prefix(make_config):
    from agent.errors import ConfigError
    from agent.homeassistant import Announcer

    config = _load(make_config, {"homeassistant": {"enabled": True, "discovery_prefix": "ha"}})
    assert Announcer(config, "0.1.0").ha_status_topic == "homeassistant/status"  # HA's default for both
    config = _load(make_config, {"homeassistant": {"enabled": True, "birth_topic": "hass/birth"}})
    assert Announcer(config, "0.1.0").ha_status_topic == "hass/birth"
    with pytest.raises(ConfigError) as caught:
        _load(make_config, {"homeassistant": {"enabled": True, "birth_topic": "hass/#"}})
    assert caught.value.key == "homeassistant.birth_topic"


def test_a_modbus_generator_announces_the_controller_fields_and_the_tank_its_litres():
    from drivers.generator import GeneratorConfig
    from drivers.gpio import InputConfig

    modbus = GeneratorConfig(source="modbus", controller="dse", device="/dev/ttyUSB0", tank_litres=500.0)
    keys = {e.key for e in driver_entities(BOX, "generator", "generator", modbus)}
    assert {"generator_fuel_pct", "generator_fuel_l", "generator_fuel_lph", "generator_hours_to_empty",
            "generator_battery_v", "generator_rpm", "generator_engine_state", "generator_load_kw",
            "generator_oil_kpa", "generator_coolant_c"} <= keys
    payload = {"running": True, "fuel_pct": 63, "fuel_l": 315.0, "fuel_lph": 4.2, "hours_to_empty": 75.0,
               "battery_v": 27.4, "rpm": 1500, "engine_state": "running", "load_kw": 12.5, "oil_kpa": None}
    entities = {e.key: e for e in driver_entities(BOX, "generator", "generator", modbus)}
    assert render(entities["generator_rpm"].options["value_template"], payload) == "1500"
    assert render(entities["generator_fuel_l"].options["value_template"], payload) == "315.0"
    assert render(entities["generator_oil_kpa"].options["value_template"], payload) == "None"  # unknown in HA
    gpio = GeneratorConfig(running=InputConfig(pin=17))
    keys = {e.key for e in driver_entities(BOX, "generator", "generator", gpio)}
    assert not keys & {"generator_rpm", "generator_fuel_l", "generator_battery_v"}
