"""Home Assistant MQTT discovery: every reading of a box appears in Home Assistant with no manual setup.

With `[homeassistant] enabled = true` the publisher announces, retained, right after each birth, one
config message per entity on `<discovery_prefix>/<component>/<box>/<entity>/config`. All entities of a
box belong to one HA device (identifiers: the box id) and share its availability, read from `status`
(`{{ value_json.state }}` is `online` or `offline`, so a last will greys the whole box out). Entities
read the box's own retained state topics with value templates; nothing is published twice.

The entities follow each configured driver section (gps, generator, water, locker, host) and the agreed
payload field names, so a driver gets its entities by being configured. Full key names are used, not
HA's abbreviations: they are easier to read in `mosquitto_sub` and HA accepts both.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.schema import SettingError, setting

if TYPE_CHECKING:
    from agent.config import Config

MODEL = "boxtel field station"
MANUFACTURER = "boxtel"


@dataclass(kw_only=True)
class HomeAssistantSettings:
    enabled: bool = setting(False, doc="announce every sensor to Home Assistant (MQTT discovery)")
    discovery_prefix: str = setting("homeassistant", doc="Home Assistant's discovery topic prefix")

    def validate(self) -> None:
        prefix = self.discovery_prefix
        if not prefix or any(c in prefix for c in "+#") or prefix.strip("/") != prefix:
            raise SettingError("discovery_prefix", "must be a topic without wildcards or leading/trailing '/'")


def discovery_messages(config: Config, version: str) -> list[tuple[str, str]]:
    """(topic, JSON payload) of every discovery config message for the box `config` describes."""
    from drivers import driver_class

    settings: HomeAssistantSettings = config.sections["homeassistant"]
    box = Box(config.box.id, f"{config.mqtt.topic_prefix}/{config.box.id}", version)
    entities = agent_entities(box)
    for entry in config.drivers:
        stream = driver_class(entry.section).stream_name(entry.config)
        entities += driver_entities(box, entry.section, stream, entry.config)
    return [(entity.topic(settings.discovery_prefix, box), json.dumps(entity.payload(box), separators=(",", ":")))
            for entity in entities]


@dataclass
class Box:
    id: str
    base_topic: str  # "boxtel/pib-017"
    version: str

    @property
    def node_id(self) -> str:
        # HA allows only [a-zA-Z0-9_-] in the node and object ids of a discovery topic.
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.id)

    def device(self) -> dict[str, Any]:
        return {"identifiers": [self.id], "name": self.id, "model": MODEL, "manufacturer": MANUFACTURER,
                "sw_version": self.version}

    def availability(self) -> list[dict[str, str]]:
        return [{"topic": f"{self.base_topic}/status", "value_template": "{{ value_json.state }}",
                 "payload_available": "online", "payload_not_available": "offline"}]


@dataclass
class Entity:
    component: str  # sensor, binary_sensor, device_tracker
    key: str  # unique within the box: "generator_running", "locker_armory-1_door"
    name: str
    stream: str  # the state topic level it reads: "gps", "locker/armory-1", "health"
    options: dict[str, Any]

    def topic(self, prefix: str, box: Box) -> str:
        object_id = re.sub(r"[^A-Za-z0-9_-]", "_", self.key)
        return f"{prefix}/{self.component}/{box.node_id}/{object_id}/config"

    def payload(self, box: Box) -> dict[str, Any]:
        state_topic = f"{box.base_topic}/{self.stream}"
        payload: dict[str, Any] = {
            "name": self.name,
            "unique_id": f"boxtel_{box.node_id}_{re.sub(r'[^A-Za-z0-9_-]', '_', self.key)}",
            "device": box.device(),
            "availability": box.availability(),
            "qos": 1,
        }
        if self.component != "device_tracker":  # a tracker's position comes from its attributes
            payload["state_topic"] = state_topic
        if "json_attributes_template" in self.options:
            payload["json_attributes_topic"] = state_topic
        payload.update(self.options)
        return payload


# -- what each kind of reading becomes -----------------------------------------------------------------
def _value(field: str) -> str:
    # A field a box does not send (e.g. no fuel sender wired) renders None: HA shows "unknown".
    return f"{{{{ value_json.{field} if value_json.{field} is defined else None }}}}"


def _flag(test: str) -> str:
    return f"{{{{ 'ON' if {test} else 'OFF' }}}}"


def sensor(key: str, name: str, stream: str, field: str, *, unit: str | None = None,
           device_class: str | None = None, state_class: str | None = "measurement",
           diagnostic: bool = False, **extra: Any) -> Entity:
    options: dict[str, Any] = {"value_template": _value(field)}
    if unit is not None:
        options["unit_of_measurement"] = unit
    if device_class is not None:
        options["device_class"] = device_class
    if state_class is not None:
        options["state_class"] = state_class
    if diagnostic:
        options["entity_category"] = "diagnostic"
    options.update(extra)
    return Entity("sensor", key, name, stream, options)


def binary(key: str, name: str, stream: str, test: str, *, device_class: str | None = None,
           diagnostic: bool = False, **extra: Any) -> Entity:
    options: dict[str, Any] = {"value_template": _flag(test), "payload_on": "ON", "payload_off": "OFF"}
    if device_class is not None:
        options["device_class"] = device_class
    if diagnostic:
        options["entity_category"] = "diagnostic"
    options.update(extra)
    return Entity("binary_sensor", key, name, stream, options)


def problem(key: str, name: str, stream: str) -> Entity:
    """ON while the stream lists an active alarm; the names are in the `alarms` attribute."""
    return binary(key, name, stream, "value_json.alarms | default([]) | length > 0", device_class="problem",
                  json_attributes_template="{{ {'alarms': value_json.alarms} | tojson }}")


def agent_entities(box: Box) -> list[Entity]:
    """The agent's own figures on `health`: there with or without a [host] section."""
    h = "health"
    return [
        sensor("outbox_depth", "Outbox depth", h, "outbox_depth", unit="messages", diagnostic=True),
        sensor("outbox_oldest_s", "Outbox oldest", h, "outbox_oldest_s", unit="s", device_class="duration",
               diagnostic=True),
        sensor("dropped", "Dropped messages", h, "dropped", state_class="total_increasing", diagnostic=True),
        sensor("reconnects", "Reconnects", h, "reconnects", state_class="total_increasing", diagnostic=True),
        sensor("clock_source", "Clock source", h, "clock_source", state_class=None, device_class="enum",
               options=["ntp", "gps", "unsynced"], diagnostic=True),
        sensor("clock_offset_s", "Clock offset", h, "clock_offset_s", unit="s", device_class="duration",
               diagnostic=True),
    ]


def driver_entities(box: Box, section: str, stream: str, config: Any = None) -> list[Entity]:
    """The entities of one configured driver; `stream` is where its readings go. With its `config`,
    only the entities whose fields the driver sends (a water tank on an ADC sends `tank_pct`, one on
    float switches `tank_level`; `pump` and `leak` only when wired); without, all of them."""
    if section == "host":
        return _host(stream)
    if section == "gps":
        return _gps(stream)
    if section == "generator":
        return _generator(stream, config)
    if section == "water":
        return _water(stream, config)
    if section == "locker":
        return _locker(stream)
    return []  # a driver this version does not know how to present


def _host(h: str) -> list[Entity]:
    power = "{{ {'active': 'ON', 'ok': 'OFF'}.get(value_json.%s, 'None') }}"  # unavailable: unknown
    return [
        sensor("cpu_pct", "CPU", h, "cpu_pct", unit="%"),
        sensor("memory_pct", "Memory used", h, "memory_pct", unit="%"),
        sensor("disk_free_mb", "Disk free", h, "disk_free_mb", unit="MiB", device_class="data_size"),  # 2^20 bytes
        sensor("temperature_c", "CPU temperature", h, "temperature_c", unit="°C", device_class="temperature"),
        # Not total_increasing: it starts again at every boot; that is no meter going back.
        sensor("uptime_s", "Uptime", h, "uptime_s", unit="s", device_class="duration", diagnostic=True),
        Entity("binary_sensor", "undervoltage", "Under-voltage", h,
               {"value_template": power % "undervoltage", "payload_on": "ON", "payload_off": "OFF",
                "device_class": "problem"}),
        Entity("binary_sensor", "throttled", "Throttled", h,
               {"value_template": power % "throttled", "payload_on": "ON", "payload_off": "OFF",
                "device_class": "problem", "entity_category": "diagnostic"}),
        problem("host_alarm", "Host alarm", h),
    ]


def _gps(g: str) -> list[Entity]:
    # HA reads a device_tracker's position from attributes named latitude / longitude / gps_accuracy,
    # with no state topic since 2023.6 (home-assistant/core#93322); without a fix there is no position
    # and HA keeps the last one.
    attributes = (
        "{% if value_json.lat is not none and value_json.lon is not none %}"
        "{{ {'latitude': value_json.lat, 'longitude': value_json.lon, "
        "'gps_accuracy': ((value_json.hdop or 1) * 5) | round(1), 'fix': value_json.fix, "
        "'sats': value_json.sats, 'home_distance_m': value_json.home_distance_m} | tojson }}"
        "{% else %}{{ {'fix': value_json.fix} | tojson }}{% endif %}"
    )
    return [
        Entity("device_tracker", "position", "Position", g,
               {"json_attributes_template": attributes, "source_type": "gps"}),
        sensor("gps_fix", "GPS fix", g, "fix", device_class="enum", state_class=None, options=["none", "2d", "3d"]),
        sensor("gps_sats", "GPS satellites used", g, "sats", diagnostic=True),
        sensor("gps_hdop", "GPS HDOP", g, "hdop", diagnostic=True),
        sensor("gps_speed_mps", "Speed", g, "speed_mps", unit="m/s", device_class="speed"),
        sensor("gps_alt_m", "Altitude", g, "alt_m", unit="m", device_class="distance"),
        sensor("home_distance_m", "Distance from home", g, "home_distance_m", unit="m", device_class="distance"),
        problem("gps_alarm", "GPS alarm", g),
    ]


def _generator(s: str, config: Any = None) -> list[Entity]:
    entities = [
        binary("generator_running", "Generator running", s, "value_json.running", device_class="running"),
        sensor("generator_run_hours", "Generator run hours", s, "run_hours", unit="h", device_class="duration",
               state_class="total_increasing"),
        binary("generator_fault", "Generator fault", s, "value_json.fault", device_class="problem",
               json_attributes_template="{{ {'faults': value_json.faults} | tojson }}"),
        problem("generator_alarm", "Generator alarm", s),
    ]
    if _wired(config, "fuel"):  # without a fuel sender fuel_pct is always null
        entities.insert(1, sensor("generator_fuel_pct", "Fuel", s, "fuel_pct", unit="%", icon="mdi:gas-station"))
    return entities


def _water(s: str, config: Any = None) -> list[Entity]:
    # A tank is read either by an ADC (tank_pct) or by float switches (tank_level).
    entities = []
    if _wired(config, "tank"):
        entities.append(sensor("water_tank_pct", "Water tank", s, "tank_pct", unit="%", icon="mdi:water-percent"))
    if _wired(config, "float_low", "float_high"):
        entities.append(sensor("water_tank_level", "Water tank level", s, "tank_level", device_class="enum",
                               state_class=None, options=["low", "normal", "high"]))
    if _wired(config, "flow"):
        entities += [
            sensor("water_flow_lpm", "Water flow", s, "flow_lpm", unit="L/min", device_class="volume_flow_rate"),
            sensor("water_total_l", "Water used", s, "total_l", unit="L", device_class="water",
                   state_class="total_increasing"),
        ]
    if _wired(config, "pump"):
        entities.append(binary("water_pump", "Water pump", s, "value_json.pump", device_class="running"))
    if _wired(config, "leak"):
        entities.append(binary("water_leak", "Water leak", s, "value_json.leak", device_class="moisture"))
    entities.append(problem("water_alarm", "Water alarm", s))
    return entities


def _wired(config: Any, *inputs: str) -> bool:
    """Whether any of `inputs` is configured; True without a config (every entity)."""
    return config is None or any(getattr(config, name, None) is not None for name in inputs)


def _locker(s: str) -> list[Entity]:
    name = s.split("/", 1)[1] if "/" in s else s
    key = f"locker_{name}"
    return [
        binary(f"{key}_door", f"{name} door", s, "value_json.door == 'open'", device_class="door",
               json_attributes_template="{{ {'since': value_json.since} | tojson }}"),
        binary(f"{key}_armed", f"{name} armed", s, "value_json.armed", icon="mdi:shield-lock"),
        problem(f"{key}_alarm", f"{name} alarm", s),
    ]
