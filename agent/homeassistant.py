"""Home Assistant MQTT discovery: every reading of a box appears in Home Assistant with no manual setup.

With `[homeassistant] enabled = true` the box announces, retained, one config message per entity on
`<discovery_prefix>/<component>/<box>/<entity>/config`. All entities of a box belong to one HA device
(identifiers: the box id) and share its availability, read from `status` (`{{ value_json.state }}` is
`online` or `offline`, so a last will greys the whole box out). Entities read the box's own retained
state topics with value templates; nothing is published twice.

The lifecycle (`Announcer`), so a metered link pays for discovery only when something changed:
- the box remembers in its state dir what it announced (a digest per config topic) and the state topics
  of its streams, once the broker acknowledged them;
- on connect it publishes only the configs that differ from that memory, and takes back -- an empty
  retained message -- every config and state topic it remembers but no longer has (a locker removed, a
  driver switched off, [homeassistant] disabled): otherwise HA and the fleet console keep showing a
  removed locker as closed and armed;
- it republishes every config when Home Assistant announces itself `online` on
  its birth topic (`homeassistant/status`, HA's birth after its own restart), never merely because the
  box reconnected.

Ids: a box id must be a valid HA node id ([A-Za-z0-9_-], checked with the config); an entity key that
needs cleaning (a locker `armory.1`) gets a short stable hash of the original appended, so `armory.1`
and `armory_1` stay two entities. The entities follow each configured driver section and the agreed
payload field names, so a driver gets its entities by being configured. Full key names are used, not
HA's abbreviations: they are easier to read in `mosquitto_sub` and HA accepts both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import PROJECT_URL, statefile
from agent.config import Config
from agent.errors import ConfigError
from agent.linkbudget import STEPS, max_interval_at
from agent.throttle import StreamSettings

log = logging.getLogger(__name__)

MODEL = "boxtel field station"
MANUFACTURER = "boxtel"
MEMORY_FILE = "announced.json"
# Home Assistant's births answered at most this often: anyone who may write homeassistant/status could
# otherwise make the box re-send every config per message on a billed link. Missing one costs nothing:
# the configs are retained on the broker, and HA reads them when it subscribes.
REANNOUNCE_MIN_S = 60.0
HEALTH = "health"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")  # HA allows only these in node and object ids
# Entities older versions announced that no longer exist under that key: taken back on the first start
# of a box that has no memory of what it announced (what it announced before this version is unknown).
RETIRED = (("sensor", "uptime_s"),)
# Where a Raspberry Pi says what it is (device tree, NUL-terminated) and its serial number.
PI_MODEL_FILES = ("/proc/device-tree/model",)
PI_SERIAL_FILES = ("/proc/device-tree/serial-number", "/proc/cpuinfo")


def object_id(key: str) -> str:
    """`key` as an HA object id; injective: a cleaned key carries a hash of the original."""
    clean = _UNSAFE.sub("_", key)
    if clean == key:
        return key
    return f"{clean}_{hashlib.sha256(key.encode()).hexdigest()[:6]}"


def read_pi_model(paths: tuple[str, ...] = PI_MODEL_FILES) -> str | None:
    """"Raspberry Pi 4 Model B Rev 1.4", or None where it cannot be read (not a Pi, a container)."""
    for path in paths:
        text = _read_small(path)
        if text:
            return _printable(text)
    return None


def read_pi_serial(paths: tuple[str, ...] = PI_SERIAL_FILES) -> str | None:
    for path in paths:
        text = _read_small(path)
        if not text:
            continue
        if path.endswith("cpuinfo"):
            match = re.search(r"^Serial\s*:\s*([0-9a-fA-F]+)\s*$", text, re.MULTILINE)
            text = match.group(1) if match else ""
        serial = _printable(text)
        if serial and serial.strip("0"):  # all zeros: a board that does not say
            return serial
    return None


def _read_small(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(65536).decode("utf-8", "replace")
    except OSError:
        return ""


def _printable(text: str) -> str:
    return "".join(c for c in text.strip("\x00 \n\t") if c.isprintable())[:64].strip()


def discovery_messages(config: Config, version: str, *, hardware: tuple[str | None, str | None] | None = None
                       ) -> list[tuple[str, str]]:
    """(topic, JSON payload) of every discovery config message for the box `config` describes.
    `hardware` is (Pi model, serial); read from the Pi when not given."""
    box, entities = _announced_entities(config, version, hardware)
    prefix = config.homeassistant.discovery_prefix
    messages: dict[str, tuple[Entity, str]] = {}
    for entity in entities:
        topic = entity.topic(prefix, box)
        if topic in messages:  # a bug in the declarations, or names only a hash could tell apart
            raise ConfigError(f"Home Assistant entities {messages[topic][0].key!r} and {entity.key!r} would share "
                              f"{topic}", file=config.file, key="homeassistant")
        messages[topic] = (entity, json.dumps(entity.payload(box), separators=(",", ":")))
    return [(topic, payload) for topic, (_, payload) in messages.items()]


def _announced_entities(config: Config, version: str, hardware: tuple[str | None, str | None] | None
                        ) -> tuple[Box, list[Entity]]:
    from drivers import driver_class

    model, serial = (read_pi_model(), read_pi_serial()) if hardware is None else hardware
    box = Box(config.box.id, f"{config.mqtt.topic_prefix}/{config.box.id}", version, site=config.box.site,
              hw_version=model, serial_number=serial)
    streams = [(entry, driver_class(entry.section).stream_name(entry.config)) for entry in config.drivers]
    health_interval = StreamSettings().max_interval_s  # health without [host]: the core's default
    for entry, stream in streams:
        if stream == HEALTH:
            health_interval = getattr(entry.config, "max_interval_s", health_interval)
    # With a data budget, a saving step may stretch the intervals: expire after the longest of them.
    step = STEPS if config.link.budget_mb_month > 0 else 0
    entities = expiring(agent_entities(box), max_interval_at(step, health_interval, health=True))
    for entry, stream in streams:
        interval = health_interval if stream == HEALTH else getattr(entry.config, "max_interval_s", None)
        if interval is not None:
            interval = max_interval_at(step, interval, health=stream == HEALTH)
        entities += expiring(driver_entities(box, entry.section, stream, entry.config), interval)
    return box, entities


def expiring(entities: list[Entity], max_interval_s: float | None) -> list[Entity]:
    """State sensors go `unavailable` after two of their stream's max intervals without a message: the
    box's keep-alive alone (a wedged core behind a live MQTT connection) must not look like fresh data."""
    if max_interval_s is not None:
        for entity in entities:
            if entity.component in ("sensor", "binary_sensor"):
                entity.options["expire_after"] = math.ceil(2 * max_interval_s)
    return entities


def state_topics(config: Config) -> set[str]:
    """The retained state topics the box's configured streams publish (health always)."""
    from drivers import driver_class

    base = f"{config.mqtt.topic_prefix}/{config.box.id}"
    streams = {HEALTH} | {driver_class(e.section).stream_name(e.config) for e in config.drivers}
    return {f"{base}/{stream}" for stream in streams}


@dataclass
class Box:
    id: str
    base_topic: str  # "boxtel/pib-017"
    version: str
    site: str = ""
    hw_version: str | None = None  # the Pi's model
    serial_number: str | None = None  # the Pi's serial

    @property
    def node_id(self) -> str:
        return _UNSAFE.sub("_", self.id)  # the config refuses such a box id with HA enabled

    def device(self) -> dict[str, Any]:
        device = {"identifiers": [self.id], "name": self.id, "model": MODEL, "manufacturer": MANUFACTURER,
                  "sw_version": self.version}
        # suggested_area only seeds HA's area when the device is first created; a moved box keeps its area.
        for key, value in (("suggested_area", self.site), ("hw_version", self.hw_version),
                           ("serial_number", self.serial_number)):
            if value:
                device[key] = value
        return device

    def origin(self) -> dict[str, str]:
        return {"name": "boxtel", "sw_version": self.version, "support_url": PROJECT_URL}

    def availability(self) -> list[dict[str, str]]:
        return [{"topic": f"{self.base_topic}/status", "value_template": "{{ value_json.state }}",
                 "payload_available": "online", "payload_not_available": "offline"}]


@dataclass
class Entity:
    component: str  # sensor, binary_sensor, device_tracker
    key: str  # unique within the box: "generator_running", "locker_armory-1_door"
    name: str
    stream: str  # the state topic level it reads: "gps", "locker/armory-1", "health"
    options: dict[str, Any] = field(default_factory=dict)

    def topic(self, prefix: str, box: Box) -> str:
        return f"{prefix}/{self.component}/{box.node_id}/{object_id(self.key)}/config"

    def payload(self, box: Box) -> dict[str, Any]:
        state_topic = f"{box.base_topic}/{self.stream}"
        payload: dict[str, Any] = {
            "name": self.name,
            "unique_id": f"boxtel_{box.node_id}_{object_id(self.key)}",
            "device": box.device(),
            "origin": box.origin(),
            "availability": box.availability(),
            "qos": 1,
        }
        if self.component != "device_tracker":  # a tracker's position comes from its attributes
            payload["state_topic"] = state_topic
        if "json_attributes_template" in self.options:
            payload["json_attributes_topic"] = state_topic
        payload.update(self.options)
        return payload


class Announcer:
    """The lifecycle above, for the publisher: `connected()` and `message()` publish on paho's thread
    (paho's publish only queues), `save()` writes the memory on the publisher's own thread."""

    def __init__(self, config: Config, version: str, request_save: Any = None):
        settings = config.homeassistant
        self.enabled = settings.enabled
        self.ha_status_topic = settings.birth_topic
        self.configs: dict[str, str] = dict(discovery_messages(config, version)) if self.enabled else {}
        self.state_topics = state_topics(config)
        self._legacy = _legacy_topics(config, self.configs) if self.enabled else set()
        self._path = Path(config.state_dir) / MEMORY_FILE
        self._broker = f"{config.mqtt.host}:{config.mqtt.effective_port}"
        self._request_save = request_save or (lambda: None)
        self._lock = threading.Lock()
        memory = statefile.load(self._path)
        if memory.get("broker") != self._broker:
            memory = {}  # another broker holds none of it
        self.first_start = not memory
        configs = memory.get("configs")
        self._announced: dict[str, str] = {t: d for t, d in configs.items() if isinstance(d, str)} \
            if isinstance(configs, dict) else {}
        states = memory.get("state_topics")
        self._states: set[str] = {t for t in states if isinstance(t, str)} if isinstance(states, list) else set()
        self._in_flight: dict[int, tuple[str, str | None]] = {}  # mid -> (topic, digest; None: taken back)
        self._refused: set[str] = set()  # not retried until HA restarts or the agent does
        self._dirty = not self.state_topics <= self._states
        self._states |= self.state_topics
        self.published = 0
        self.taken_back = 0
        self._reannounced_mono = -math.inf
        self._unanswered_logged_mono = -math.inf
        self.births_unanswered = 0  # Home Assistant births within REANNOUNCE_MIN_S of the last answered one

    # -- on paho's thread --------------------------------------------------------------------------
    def connected(self, client: Any) -> None:
        """Publish what the broker may not hold yet: changed configs, and what is to be taken back."""
        with self._lock:
            self._in_flight.clear()  # a new connection: mids of the last one are void
            todo = [(t, "") for t in sorted(self._announced.keys() - self.configs.keys())]
            todo += [(t, "") for t in sorted(self._states - self.state_topics)]
            if self.first_start:
                todo += [(t, "") for t in sorted(self._legacy)]
            todo += [(t, p) for t, p in self.configs.items() if self._announced.get(t) != _digest(p)]
            todo = [(t, p) for t, p in todo if t not in self._refused]
        self._publish(client, todo)
        if self._dirty and not self._in_flight:
            self._request_save()

    def subscribe(self, client: Any) -> None:
        if self.enabled:
            client.subscribe(self.ha_status_topic, qos=1)

    def message(self, client: Any, message: Any) -> bool:
        """True if `message` was Home Assistant's status (handled here). A retained `online` is an old
        birth, delivered on every subscribe: only a live one means HA has just started."""
        if not self.enabled or message.topic != self.ha_status_topic:
            return False
        if not message.retain and message.payload == b"online":
            now = time.monotonic()
            if now - self._reannounced_mono < REANNOUNCE_MIN_S:
                self.births_unanswered += 1
                if now - self._unanswered_logged_mono >= REANNOUNCE_MIN_S:
                    self._unanswered_logged_mono = now
                    log.warning("Home Assistant announced itself again within %.0f s: not answered "
                                "(%d so far; the configs are retained on the broker)", REANNOUNCE_MIN_S,
                                self.births_unanswered)
                return True
            self._reannounced_mono = now
            log.info("Home Assistant is online: announcing %d entities", len(self.configs))
            with self._lock:
                self._refused.clear()
            self._publish(client, list(self.configs.items()))
        return True

    def acknowledged(self, mid: int, error: str | None) -> bool:
        """The broker's answer to `mid`; False if it was not one of ours."""
        with self._lock:
            sent = self._in_flight.pop(mid, None)
            if sent is None:
                return False
            topic, digest = sent
            if error:
                self._refused.add(topic)
            elif digest is None:
                self._announced.pop(topic, None)
                self._states.discard(topic)
                self._legacy.discard(topic)
                self._dirty = True
            else:
                self._dirty = self._dirty or self._announced.get(topic) != digest
                self._announced[topic] = digest
            drained = not self._in_flight and self._dirty
        if drained:
            self._request_save()
        return True

    def _publish(self, client: Any, messages: list[tuple[str, str]]) -> None:
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=1, retain=True)
            with self._lock:
                self._in_flight[info.mid] = (topic, _digest(payload) if payload else None)
            if payload:
                self.published += 1
            else:
                self.taken_back += 1

    # -- on the publisher's thread -----------------------------------------------------------------
    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            data = {"broker": self._broker, "configs": dict(self._announced), "state_topics": sorted(self._states)}
            self._dirty = False
        try:
            statefile.save(self._path, data)
        except OSError as err:  # a full state dir costs a re-announcement next start, nothing more
            log.warning("cannot save %s: %s", self._path, err.strerror or err)
            with self._lock:
                self._dirty = True
        else:
            self.first_start = False


def _digest(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _legacy_topics(config: Config, configs: dict[str, str]) -> set[str]:
    """Config topics earlier versions used for what this box has now: retired keys, and keys that were
    cleaned without a hash (a locker `armory.1` was `locker_armory_1_door`)."""
    box, entities = _announced_entities(config, "", (None, None))
    prefix = config.homeassistant.discovery_prefix
    topics = {f"{prefix}/{component}/{box.node_id}/{key}/config" for component, key in RETIRED}
    topics |= {f"{prefix}/{e.component}/{box.node_id}/{_UNSAFE.sub('_', e.key)}/config" for e in entities}
    return topics - configs.keys()


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
        return _locker(stream, config)
    if section == "box.tamper":
        return [binary("box_tamper", "Box tamper", stream, "'box_tamper' in (value_json.alarms | default([]))",
                       device_class="tamper")]
    return []  # a driver this version does not know how to present


def _host(h: str) -> list[Entity]:
    power = "{{ {'active': 'ON', 'ok': 'OFF'}.get(value_json.%s, 'None') }}"  # unavailable: unknown
    return [
        sensor("cpu_pct", "CPU", h, "cpu_pct", unit="%"),
        sensor("memory_pct", "Memory used", h, "memory_pct", unit="%"),
        sensor("disk_free_mb", "Disk free", h, "disk_free_mb", unit="MiB", device_class="data_size"),  # 2^20 bytes
        sensor("temperature_c", "CPU temperature", h, "temperature_c", unit="°C", device_class="temperature"),
        # When the Pi booted, from its clock and uptime; to the minute, so it does not change with every
        # report (uptime_s is whole seconds, ts is when the sample was published).
        sensor("last_boot", "Last boot", h, "uptime_s", device_class="timestamp", state_class=None, diagnostic=True,
               value_template="{% if value_json.uptime_s is number and value_json.ts is string %}"
                              "{{ (((as_timestamp(value_json.ts) - value_json.uptime_s) / 60) | round(0) * 60)"
                              " | timestamp_utc }}{% else %}None{% endif %}"),
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
    controller = config is None or getattr(config, "source", "gpio") == "modbus"
    if controller or _wired(config, "fuel"):  # without a fuel sender (or a controller) fuel_pct is always null
        entities.insert(1, sensor("generator_fuel_pct", "Fuel", s, "fuel_pct", unit="%", icon="mdi:gas-station"))
    if config is None or getattr(config, "tank_litres", None) is not None:
        entities += [
            sensor("generator_fuel_l", "Fuel in tank", s, "fuel_l", unit="L", device_class="volume_storage"),
            sensor("generator_fuel_lph", "Fuel consumption", s, "fuel_lph", unit="L/h", device_class="volume_flow_rate"),
            sensor("generator_hours_to_empty", "Fuel time left", s, "hours_to_empty", unit="h", device_class="duration"),
        ]
    if controller:  # what a genset controller reports besides
        entities += [
            sensor("generator_battery_v", "Generator battery", s, "battery_v", unit="V", device_class="voltage"),
            sensor("generator_rpm", "Engine speed", s, "rpm", unit="rpm", icon="mdi:engine"),
            sensor("generator_engine_state", "Engine state", s, "engine_state", state_class=None, icon="mdi:engine"),
            sensor("generator_load_kw", "Generator load", s, "load_kw", unit="kW", device_class="power"),
            sensor("generator_oil_kpa", "Oil pressure", s, "oil_kpa", unit="kPa", device_class="pressure"),
            sensor("generator_coolant_c", "Coolant temperature", s, "coolant_c", unit="°C", device_class="temperature"),
        ]
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


def _locker(s: str, config: Any = None) -> list[Entity]:
    name = s.split("/", 1)[1] if "/" in s else s
    key = f"locker_{name}"
    entities = [
        binary(f"{key}_door", f"{name} door", s, "value_json.door == 'open'", device_class="door",
               json_attributes_template="{{ {'since': value_json.since} | tojson }}"),
        binary(f"{key}_armed", f"{name} armed", s, "value_json.armed", icon="mdi:shield-lock"),
        problem(f"{key}_alarm", f"{name} alarm", s),
    ]
    if config is None or hasattr(config.door, "eol"):  # a supervised loop: shorted, cut or unreadable
        entities.append(binary(f"{key}_tamper", f"{name} tamper", s, "value_json.tamper", device_class="tamper",
                               json_attributes_template="{{ {'loop': value_json.loop} | tojson }}"))
    return entities
