"""Config validation: every mistake is one line naming file and key, exit 78, no traceback."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass

import pytest

from agent import config as config_module
from agent.errors import EX_CONFIG, ConfigError
from agent.schema import setting
from tests.support import ROOT, boxtel, deep_merge, toml_dumps

BASE = {"box": {"id": "pib-017", "state_dir": "state"}, "mqtt": {"host": "127.0.0.1"}}


def check(tmp_path, data=None, text=None):
    path = tmp_path / "agent.toml"
    path.write_text(text if text is not None else toml_dumps(data))
    return path, boxtel("check-config", "-c", str(path))


def assert_one_line_error(result, path, *fragments):
    assert result.returncode == EX_CONFIG, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(path) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ({"mqtt": {"prot": 1883}}, ["mqtt.prot", "unknown key", "did you mean 'port'"]),
        ({"gsp": {}}, ["gsp", "unknown section"]),
        ({"mqtt": {"port": "1883"}}, ["mqtt.port", "expected an integer", '"1883"']),
        ({"mqtt": {"port": 70000}}, ["mqtt.port", "from 1 to 65535", "70000"]),
        ({"mqtt": {"keepalive_s": 1}}, ["mqtt.keepalive_s", "from 5 to 3600"]),
        ({"mqtt": {"tls": "yes"}}, ["mqtt.tls", "expected true or false"]),
        ({"mqtt": {"protocol": "4"}}, ["mqtt.protocol", 'expected one of "5", "3.1.1"']),
        ({"mqtt": {"protocol": 5}}, ["mqtt.protocol", "expected one of"]),
        ({"mqtt": {"topic_prefix": "boxtel/#"}}, ["mqtt.topic_prefix", "wildcards"]),
        ({"mqtt": {"tls_insecure": True}}, ["mqtt.tls_insecure", "only applies with tls"]),
        ({"mqtt": {"tls": True, "cert_file": "client.crt"}}, ["mqtt.cert_file", "go together"]),
        ({"mqtt": {"tls": True, "ca_file": "missing-ca.crt"}}, ["mqtt.ca_file", "missing-ca.crt", "does not exist"]),
        ({"mqtt": {"reconnect_min_s": 10.0, "reconnect_max_s": 5.0}}, ["mqtt.reconnect_min_s"]),
        ({"box": {"id": "pib 017"}}, ["box.id", "not a valid box id"]),
        ({"box": {"id": "pib+017"}}, ["box.id", "not a valid box id"]),
        ({"box": {"id": "pib#017"}}, ["box.id"]),
        ({"box": {"id": "pib/017"}}, ["box.id"]),
        ({"box": {"id": ""}}, ["box.id"]),
        ({"box": {"id": None}}, ["box.id", "missing required key"]),
        ({"box": {"site": 17}}, ["box.site", "expected a string"]),
        ({"simulate": "yes"}, ["simulate", "expected true or false"]),
        ({"outbox": {"max_mb": 0}}, ["outbox.max_mb", "from 1 to 100000", "got 0"]),
        ({"outbox": {"replay_rate": -1}}, ["outbox.replay_rate"]),
        ({"host": {"interval_s": "often"}}, ["host.interval_s", "expected a number"]),
        ({"host": {"deadband": {"cpu_pct": -1}}}, ["host.deadband.cpu_pct"]),
        ({"host": {"deadband": [1, 2]}}, ["host.deadband", "expected a table"]),
        ({"host": {"min_interval_s": 100.0, "max_interval_s": 50.0}}, ["host.min_interval_s"]),
        ({"host": [{"interval_s": 5.0}]}, ["host", "write [host], not [[host]]"]),
        ({"gpio": {"pin_factory": "magic"}}, ["gpio.pin_factory", "expected one of"]),
    ],
)
def test_config_error_is_one_line_naming_the_key(tmp_path, extra, fragments):
    path, result = check(tmp_path, deep_merge(BASE, extra))
    assert_one_line_error(result, path, *fragments)


def test_missing_box_section(tmp_path):
    path, result = check(tmp_path, {"mqtt": {"host": "x"}})
    assert_one_line_error(result, path, "box", "missing required section")


def test_invalid_toml_names_the_line(tmp_path):
    path, result = check(tmp_path, text='[box]\nid = "pib-017"\nsite = \n')
    assert_one_line_error(result, path, "invalid TOML", "line 3")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    result = boxtel("check-config", "-c", str(path))
    assert_one_line_error(result, path, "not found")


def test_valid_config_passes(tmp_path):
    path, result = check(tmp_path, BASE)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    path = tmp_path / "etc" / "agent.toml"
    path.parent.mkdir()
    path.write_text(toml_dumps(BASE))
    config = config_module.load(path)
    assert config.state_dir == tmp_path / "etc" / "state"


# -- secrets -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_password_file_readable_by_others_is_refused(tmp_path, mode):
    secret = tmp_path / "mqtt.password"
    secret.write_text("hunter2\n")
    secret.chmod(mode)
    path, result = check(tmp_path, deep_merge(BASE, {"mqtt": {"password_file": str(secret)}}))
    assert_one_line_error(result, path, "mqtt.password_file", str(secret), f"mode {mode:04o}")
    assert "hunter2" not in result.stderr


def test_private_key_readable_by_group_is_refused(tmp_path, certs):
    key = tmp_path / "client.key"
    key.write_bytes(certs["client_key"].read_bytes())
    key.chmod(0o640)
    extra = {"mqtt": {"tls": True, "ca_file": str(certs["ca_crt"]), "cert_file": str(certs["client_crt"]),
                      "key_file": str(key)}}
    path, result = check(tmp_path, deep_merge(BASE, extra))
    assert_one_line_error(result, path, "mqtt.key_file", str(key), "mode 0640")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_secret_owned_by_another_user_is_refused(tmp_path):
    secret = tmp_path / "mqtt.password"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    os.chown(secret, 65534, 65534)
    path, result = check(tmp_path, deep_merge(BASE, {"mqtt": {"password_file": str(secret)}}))
    assert_one_line_error(result, path, "mqtt.password_file", "owned by uid 65534", "mode 0600")


def test_safe_secret_is_accepted(tmp_path):
    secret = tmp_path / "mqtt.password"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    config = config_module.load(check(tmp_path, deep_merge(BASE, {"mqtt": {"password_file": str(secret)}}))[0])
    assert config.mqtt_password() == "hunter2"


# -- hardware claimed twice --------------------------------------------------------------------------
@dataclass(kw_only=True)
class _PinConfig:
    name: str = setting()
    pin: int = setting(min=0, max=27)


class _PinDriver:
    """A minimal driver class for the registry: the claim check only needs Config, many and claims()."""

    section = "pinned"
    Config = _PinConfig
    many = True

    @classmethod
    def instance_name(cls, config):
        return f"pinned/{config.name}"

    @classmethod
    def claims(cls, config, key):
        return [(f"{key}.pin", f"GPIO {config.pin}")]


def test_pin_used_twice_names_both_keys(tmp_path, monkeypatch):
    import drivers

    monkeypatch.setitem(drivers.REGISTRY, "pinned", "tests.test_config:_PinDriver")
    data = deep_merge(BASE, {"pinned": [{"name": "a", "pin": 17}, {"name": "b", "pin": 17}]})
    path = tmp_path / "agent.toml"
    path.write_text(toml_dumps(data))
    with pytest.raises(ConfigError) as error:
        config_module.load(path)
    assert str(error.value) == f"{path}: pinned[1].pin: GPIO 17 is already used by pinned[0].pin"


def test_same_instance_twice_is_refused(tmp_path, monkeypatch):
    import drivers

    monkeypatch.setitem(drivers.REGISTRY, "pinned", "tests.test_config:_PinDriver")
    data = deep_merge(BASE, {"pinned": [{"name": "a", "pin": 17}, {"name": "a", "pin": 18}]})
    path = tmp_path / "agent.toml"
    path.write_text(toml_dumps(data))
    with pytest.raises(ConfigError, match=r"pinned\[1\]: 'pinned/a' is configured twice"):
        config_module.load(path)


# -- the example config is the documentation; it must not drift from the schema ----------------------
_COMMENTED_KEY = re.compile(r"^# ?((?:\[\[?[a-z_.]+\]\]?)|(?:[a-z_]+ = .*))$")


def test_example_config_documents_every_key():
    """Uncomment every `# key = value` line: the result must load, and set every key of the schema."""
    from drivers import REGISTRY, driver_class

    text = (ROOT / "config" / "agent.example.toml").read_text()
    uncommented = "\n".join(
        m.group(1) if (m := _COMMENTED_KEY.match(line)) else line for line in text.splitlines()
    )
    raw = tomllib.loads(uncommented)
    schemas = {**config_module.CORE_SECTIONS, **{name: driver_class(name).Config for name in REGISTRY}}
    missing = []
    for section, cls in schemas.items():
        parent, _, key = section.partition(".")  # "box.tamper": a driver's key of a core section
        tables = raw.get(parent, {}).get(key) if key else raw.get(section)
        assert tables is not None, f"agent.example.toml has no [{section}] section"
        for table in tables if isinstance(tables, list) else [tables]:
            missing += [f"{section}.{f}" for f in cls.__dataclass_fields__ if f not in table]
    assert not missing, f"agent.example.toml does not document: {missing}"


def test_example_config_as_shipped_is_valid():
    result = boxtel("check-config", "-c", str(ROOT / "config" / "agent.example.toml"))
    assert result.returncode == 0, result.stderr


def test_simulate_config_is_valid():
    result = boxtel("check-config", "-c", str(ROOT / "config" / "simulate.toml"))
    assert result.returncode == 0, result.stderr
    assert "simulated" in result.stdout
