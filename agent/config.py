"""The agent's configuration: one TOML file, validated completely before anything starts.

Core sections are declared here; each driver declares its own section beside its code and is found
through `drivers.REGISTRY`. Any problem raises `ConfigError` as one line: file, key path, what is wrong.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.schema import SettingError, build, setting
from agent.secretfile import check_secret_file, read_secret
from agent.serviceuser import Account

DEFAULT_PATH = "/etc/boxtel/agent.toml"

# No MQTT wildcards or level separators (they would break topic structure and ACL patterns), no
# whitespace; a leading "$" is reserved by brokers.
_BOX_ID = re.compile(r"^[^\s+#/$][^\s+#/]{0,63}$")


@dataclass(kw_only=True)
class BoxSettings:
    id: str = setting(doc="box identity: MQTT client id, username and topic level, e.g. pib-017")
    site: str = setting("", doc="where the container stands now; rides in payloads, containers move")
    state_dir: str = setting("/var/lib/boxtel", path=True, doc="outbox, sequence counter, driver state")

    def validate(self) -> None:
        if not _BOX_ID.match(self.id):
            raise SettingError(
                "id", f'"{self.id}" is not a valid box id: 1-64 characters, no "+", "#", "/", '
                'whitespace, or leading "$"'
            )


@dataclass(kw_only=True)
class MqttSettings:
    host: str = setting("localhost", doc="broker host name or address; default localhost (a broker on the box)")
    port: int | None = setting(None, min=1, max=65535, doc="default 1883, or 8883 with tls")
    protocol: str = setting("5", choices=("5", "3.1.1"), doc="MQTT 5 shows refused publishes; 3.1.1 hides them")
    username: str | None = setting(None, doc="default: the box id (brokers bind identity to it)")
    password_file: str = setting("", path=True, doc="file holding the password; mode 0600, owned by the agent")
    tls: bool = setting(False, doc="encrypt and verify the broker")
    ca_file: str = setting("", path=True, doc="CA bundle for the broker; default: the system's CAs")
    cert_file: str = setting("", path=True, doc="client certificate (PEM)")
    key_file: str = setting("", path=True, doc="client private key (PEM); mode 0600, owned by the agent")
    tls_insecure: bool = setting(False, doc="skip certificate and host name checks (warned on every connect)")
    keepalive_s: int = setting(
        300, min=5, max=3600, doc="an idle link is checked this often (a ping costs ~200 B); a dead one noticed within twice this"
    )
    ack_timeout_s: float = setting(
        30.0, min=1.0, max=3600.0, doc="a publish unacknowledged this long means the link is dead: reconnect"
    )
    topic_prefix: str = setting("boxtel", doc="first topic level")
    inflight: int = setting(20, min=1, max=1000, doc="messages handed to the MQTT client at once")
    reconnect_min_s: float = setting(1.0, min=0.1, max=600.0, doc="first reconnect delay")
    reconnect_max_s: float = setting(
        12.0, min=1.0, max=3600.0,
        doc="longest reconnect delay: a box is back within about this of its broker (jitter: half to all of it)",
    )

    def validate(self) -> None:
        if not self.host.strip():
            raise SettingError("host", "must not be empty (leave it out for localhost)")
        if any(c.isspace() or c == "/" for c in self.host):
            raise SettingError("host", f'"{self.host}" is not a host name or address: give the name alone, e.g. '
                               'broker.example.org (port and tls are keys of their own)')
        if not self.topic_prefix or any(c in self.topic_prefix for c in "+#") or \
                self.topic_prefix.startswith("/") or self.topic_prefix.endswith("/"):
            raise SettingError("topic_prefix", "must be a topic without wildcards or leading/trailing '/'")
        if self.topic_prefix.startswith("$"):
            raise SettingError("topic_prefix", 'must not start with "$" (brokers reserve $-topics: $SYS, $share)')
        if bool(self.cert_file) != bool(self.key_file):
            raise SettingError("cert_file", "cert_file and key_file go together")
        if self.tls_insecure and not self.tls:
            raise SettingError("tls_insecure", "only applies with tls = true")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise SettingError("reconnect_min_s", "must not be larger than reconnect_max_s")

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)


@dataclass(kw_only=True)
class DiagnosticsSettings:
    socket: str = setting("/run/boxtel/control.sock", path=True, doc="local control socket (mode 0660)")
    group: str = setting("", doc="group allowed to use the socket, e.g. boxtel-admin")


@dataclass(kw_only=True)
class OutboxSettings:
    max_mb: float = setting(64.0, min=1.0, max=100000.0, doc="size on disk; when full, oldest history goes first")
    flush_interval_s: float = setting(1.0, min=0.05, max=60.0, doc="readings are committed in groups this often")
    history_interval_s: float = setting(60.0, min=0.0, max=86400.0, doc="offline: keep one reading per stream this often")
    replay_rate: float = setting(0.0, min=0.0, max=100000.0, doc="history replay, messages per second; 0 = unlimited")


@dataclass(kw_only=True)
class HomeAssistantSettings:
    enabled: bool = setting(False, doc="announce every sensor to Home Assistant (MQTT discovery)")
    discovery_prefix: str = setting("homeassistant", doc="Home Assistant's discovery topic prefix")
    # HA's own setting, apart from the discovery prefix: its birth, after which the box announces again
    birth_topic: str = setting("homeassistant/status", doc="where Home Assistant says it is online (its birth)")

    def validate(self) -> None:
        for key in ("discovery_prefix", "birth_topic"):
            topic = getattr(self, key)
            if not topic or any(c in topic for c in "+#") or topic.strip("/") != topic:
                raise SettingError(key, "must be a topic without wildcards or leading/trailing '/'")


@dataclass(kw_only=True)
class GpioSettings:
    pin_factory: str = setting(
        "", choices=("", "mock", "lgpio", "rpigpio", "pigpio", "native"),
        doc='gpiozero pin factory; "" lets gpiozero choose, "mock" simulates',
    )


SCENARIOS = ("demo", "quiet")


@dataclass(kw_only=True)
class SimulationSettings:
    scenario: str = setting(
        "demo", choices=SCENARIOS,
        doc='simulated hardware plays "demo" (every event in two minutes) or "quiet" (a parked box: nothing happens)',
    )


@dataclass(kw_only=True)
class LinkSettings:
    budget_mb_month: float = setting(
        0.0, min=0.0, max=1e6, doc="monthly data budget in MB (10^6 bytes); 0: off. Over it, the agent saves in steps"
    )


# Sections that are not drivers. A feature adds its section here.
CORE_SECTIONS: dict[str, type] = {
    "box": BoxSettings,
    "mqtt": MqttSettings,
    "diagnostics": DiagnosticsSettings,
    "outbox": OutboxSettings,
    "gpio": GpioSettings,
    "homeassistant": HomeAssistantSettings,
    "simulation": SimulationSettings,
    "link": LinkSettings,
}


@dataclass
class DriverEntry:
    section: str
    key: str  # key path in the file: "gps", "locker[1]"
    config: Any


@dataclass
class Config:
    file: str
    simulate: bool
    box: BoxSettings
    mqtt: MqttSettings
    diagnostics: DiagnosticsSettings
    outbox: OutboxSettings
    gpio: GpioSettings
    homeassistant: HomeAssistantSettings
    simulation: SimulationSettings
    link: LinkSettings
    drivers: list[DriverEntry] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)  # every core section by name

    @property
    def state_dir(self) -> Path:
        return Path(self.box.state_dir)

    @property
    def username(self) -> str:
        return self.mqtt.username or self.box.id

    def mqtt_password(self) -> str | None:
        if not self.mqtt.password_file:
            return None
        return read_secret(self.mqtt.password_file, file=self.file, key="mqtt.password_file")

    def driver_configs(self, section: str) -> list[Any]:
        return [entry.config for entry in self.drivers if entry.section == section]


def load(path: str | Path, *, simulate: bool | None = None, secret_owner: Account | None = None) -> Config:
    """Read and validate the config at `path`; `simulate` overrides the file's `simulate` key.
    `secret_owner`: who must own the secret files (default: us, the agent's own user)."""
    from drivers import REGISTRY, driver_class

    file = str(path)
    try:
        with open(path, "rb") as handle:
            raw = parse_toml(handle.read(), file=file)
    except FileNotFoundError:
        raise ConfigError("config file not found", file=file) from None
    except OSError as err:
        raise ConfigError(f"cannot read config: {err.strerror}", file=file) from None
    base_dir = Path(path).resolve().parent

    # A driver registered as "section.key" owns that key of a core section: `[box] tamper = {...}`.
    for name in REGISTRY:
        parent, _, key = name.partition(".")
        if key and isinstance(raw.get(parent), dict) and key in raw[parent]:
            raw[name] = raw[parent][key]
            raw[parent] = {k: v for k, v in raw[parent].items() if k != key}
    known = {"simulate", *CORE_SECTIONS, *REGISTRY}
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"unknown section or key (known: {', '.join(sorted(known))})", file=file, key=key
            )
    if "box" not in raw:
        raise ConfigError("missing required section [box]", file=file, key="box")
    file_simulate = raw.get("simulate", False)
    if not isinstance(file_simulate, bool):
        raise ConfigError("expected true or false", file=file, key="simulate")

    sections = {
        name: build(cls, raw.get(name, {}), where=name, base_dir=base_dir, file=file)
        for name, cls in CORE_SECTIONS.items()
    }
    drivers: list[DriverEntry] = []
    for section in REGISTRY:
        if section not in raw:
            continue
        cls = driver_class(section)
        tables = raw[section]
        if cls.many:
            if not isinstance(tables, list):
                raise ConfigError(f"expected an array of tables: write [[{section}]]", file=file, key=section)
            keyed = [(f"{section}[{i}]", table) for i, table in enumerate(tables)]
        else:
            if isinstance(tables, list):
                raise ConfigError(f"expected one table: write [{section}], not [[{section}]]", file=file, key=section)
            keyed = [(section, tables)]
        for key, table in keyed:
            config = build(cls.Config, table, where=key, base_dir=base_dir, file=file)
            drivers.append(DriverEntry(section, key, config))

    config = Config(
        file=file,
        simulate=file_simulate if simulate is None else simulate,
        drivers=drivers,
        sections=sections,
        **sections,
    )
    _check_unique_instances(config)
    _check_homeassistant(config)
    _check_claims(config)
    _check_files(config, secret_owner)
    return config


def parse_toml(data: bytes, *, file: str) -> dict[str, Any]:
    """The TOML in `data`, or ConfigError as one line: a file saved in Latin-1 or UTF-16 ("Besançon" typed
    on another machine) is named with the line of its first foreign byte, not a traceback. A UTF-8
    byte order mark, as some editors write, is skipped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"not UTF-8 text: byte 0x{data[err.start]:02X} on line {line} "
                          "(save the file as UTF-8)", file=file) from None
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"invalid TOML: {err}", file=file) from None
    except RecursionError:  # tomllib recurses per bracket: `site = [[[[...` thousands deep
        raise ConfigError("invalid TOML: lists or tables nested too deeply", file=file) from None


def _check_unique_instances(config: Config) -> None:
    from drivers import driver_class

    seen: dict[str, str] = {}
    for entry in config.drivers:
        name = driver_class(entry.section).instance_name(entry.config)
        if name in seen:
            raise ConfigError(f"{name!r} is configured twice (also at {seen[name]})", file=config.file, key=entry.key)
        seen[name] = entry.key


_HA_NODE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def _check_homeassistant(config: Config) -> None:
    """HA's node ids allow fewer characters than box ids. Cleaning would map `pib.017` and `pib_017` to one
    device (and the broker's ACL matches discovery topics to the username): refuse it instead."""
    if config.homeassistant.enabled and not _HA_NODE_ID.match(config.box.id):
        raise ConfigError(
            f'"{config.box.id}" cannot name a Home Assistant device: with [homeassistant] enabled a box id '
            'holds only letters, digits, "-" and "_"', file=config.file, key="box.id")


SHARED = "shared:"  # a claim prefix: users of a bus (SPI) may share it, but no one may take it alone


def _check_claims(config: Config) -> None:
    """A pin or serial port claimed by two inputs is a wiring mistake: refuse it before anything starts."""
    from drivers import driver_class

    owners: dict[str, tuple[str, bool]] = {}  # resource -> (key path, shared)
    for entry in config.drivers:
        for key, claim in driver_class(entry.section).claims(entry.config, entry.key):
            shared = claim.startswith(SHARED)
            resource = claim.removeprefix(SHARED)
            if resource in owners and not (shared and owners[resource][1]):
                raise ConfigError(f"{resource} is already used by {owners[resource][0]}", file=config.file, key=key)
            owners.setdefault(resource, (key, shared))


def _check_files(config: Config, owner: Account | None) -> None:
    mqtt = config.mqtt
    for key in ("ca_file", "cert_file"):
        path = getattr(mqtt, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"{path} does not exist or is not a file", file=config.file, key=f"mqtt.{key}")
        if path and Path(path).stat().st_size == 0:
            raise ConfigError(f"{path} is empty: it must hold a PEM certificate", file=config.file, key=f"mqtt.{key}")
    if mqtt.key_file:
        check_secret_file(mqtt.key_file, file=config.file, key="mqtt.key_file",
                          holds="the client's private key (PEM)", owner=owner)
    if mqtt.password_file:
        read_secret(mqtt.password_file, file=config.file, key="mqtt.password_file", owner=owner)
