"""Config validation: every mistake is one line naming file and key, exit 78, no traceback."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import config as config_module
from agent.cli import main
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


def _secret(tmp_path, name: str, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_empty_password_file_is_refused_naming_it(tmp_path, content):
    secret = _secret(tmp_path, "mqtt.password", content)
    path, result = check(tmp_path, deep_merge(BASE, {"mqtt": {"password_file": str(secret)}}))
    assert_one_line_error(result, path, "mqtt.password_file", str(secret), "must hold the password")


def _tls(certs, **keys) -> dict:
    return {"mqtt": {"tls": True, "ca_file": str(certs["ca_crt"]), "cert_file": str(certs["client_crt"]), **keys}}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "is empty: it must hold the client's private key (PEM)"),
        (b"not a key at all\n", 'is not a PEM private key (no "-----BEGIN ... PRIVATE KEY-----" line)'),
        (b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
         "is protected by a passphrase the agent cannot type"),
    ],
)
def test_empty_or_garbage_key_file_is_refused_in_words(tmp_path, certs, content, words):
    key = _secret(tmp_path, "client.key", content)
    path, result = check(tmp_path, deep_merge(BASE, _tls(certs, key_file=str(key))))
    assert_one_line_error(result, path, f"mqtt.key_file: {key} {words}")
    assert "PEM lib" not in result.stderr


def test_a_key_that_is_not_the_certificates_is_refused_in_words(tmp_path, certs):
    key = _secret(tmp_path, "server.key", certs["server_key"].read_bytes())
    path, result = check(tmp_path, deep_merge(BASE, _tls(certs, key_file=str(key))))
    assert_one_line_error(result, path, f"mqtt.key_file: {key} is not the private key of {certs['client_crt']}")


def test_a_ca_file_that_is_not_pem_is_refused_in_words(tmp_path, certs):
    garbage = _secret(tmp_path, "ca.crt", b"\x30\x82\x03\x0b not PEM", 0o644)
    path, result = check(tmp_path, deep_merge(BASE, {"mqtt": {"tls": True, "ca_file": str(garbage)}}))
    assert_one_line_error(result, path, f'mqtt.ca_file: {garbage} is not a PEM certificate (no "-----BEGIN '
                          'CERTIFICATE-----" line)')


def test_empty_certificate_file_is_refused(tmp_path, certs):
    empty = _secret(tmp_path, "client.crt", b"", 0o644)
    key = _secret(tmp_path, "client.key", certs["client_key"].read_bytes())
    path, result = check(tmp_path, deep_merge(BASE, _tls(certs, cert_file=str(empty), key_file=str(key))))
    assert_one_line_error(result, path, f"mqtt.cert_file: {empty} is empty: it must hold a PEM certificate")


def test_tls_insecure_is_a_warning_line_not_an_error(tmp_path):
    path, result = check(tmp_path, deep_merge(BASE, {"mqtt": {"tls": True, "tls_insecure": True}}))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"boxtel: warning: {path}: mqtt.tls_insecure: certificate verification is off: anyone on the path can "
        "pose as the broker (set ca_file to the broker's CA instead)"
    ]
    assert f"{path}: OK" in result.stdout


# -- secrets as root: judged for the user the service runs as, not for root ----------------------------
_as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")


def _nobodys_secret(tmp_path) -> Path:
    secret = _secret(tmp_path, "mqtt.password", b"hunter2\n")
    os.chown(secret, 65534, 65534)
    return secret


@_as_root
def test_root_judges_secrets_for_the_user_named_with_dash_dash_user(tmp_path):
    import pwd

    nobody = pwd.getpwuid(65534).pw_name
    secret = _nobodys_secret(tmp_path)
    path = tmp_path / "agent.toml"
    path.write_text(toml_dumps(deep_merge(BASE, {"mqtt": {"password_file": str(secret)}})))
    done = boxtel("check-config", "--user", nobody, "-c", str(path))
    assert done.returncode == 0, done.stderr
    done = boxtel("check-config", "--user", "root", "-c", str(path))
    assert_one_line_error(done, path, "mqtt.password_file", f"owned by uid 65534 ({nobody}), not by the agent's "
                          f"user root (uid 0): chown root {secret}")
    done = boxtel("check-config", "--user", "no-such-user-here", "-c", str(path))
    assert done.returncode == 64 and "no such user" in done.stderr


@_as_root
def test_root_judges_secrets_for_the_installed_units_user(tmp_path, monkeypatch, capsys):
    import pwd

    from agent import serviceuser

    nobody = pwd.getpwuid(65534).pw_name
    unit = tmp_path / "boxtel.service"
    unit.write_text(f"[Unit]\nDescription=x\n[Service]\nUser=root\nUser={nobody}\n")
    monkeypatch.setattr(serviceuser, "UNIT_FILES", (str(tmp_path / "missing.service"), str(unit)))
    secret = _nobodys_secret(tmp_path)
    path = tmp_path / "agent.toml"
    path.write_text(toml_dumps(deep_merge(BASE, {"mqtt": {"password_file": str(secret)}})))
    assert main(["check-config", "-c", str(path)]) == 0, capsys.readouterr().err
    monkeypatch.setattr(serviceuser, "UNIT_FILES", (str(tmp_path / "missing.service"),))  # no unit: root
    assert main(["check-config", "-c", str(path)]) == EX_CONFIG
    assert "not by the agent's user root (uid 0)" in capsys.readouterr().err


def test_unit_user_reads_the_service_section_and_its_drop_ins(tmp_path):
    from agent.serviceuser import unit_user

    unit = tmp_path / "boxtel.service"
    unit.write_text("[Unit]\nUser=wrong\n[Service]\nExecStart=/x\nUser = boxtel\n[Install]\nUser=wrong\n")
    assert unit_user((str(unit),)) == "boxtel"
    (tmp_path / "boxtel.service.d").mkdir()
    (tmp_path / "boxtel.service.d" / "10-user.conf").write_text("[Service]\nUser=telemetry\n")
    assert unit_user((str(unit),)) == "telemetry"
    (tmp_path / "boxtel.service.d" / "20-reset.conf").write_text("[Service]\nUser=\n")
    assert unit_user((str(unit),)) == "root"  # an empty assignment resets to systemd's default
    assert unit_user((str(tmp_path / "none.service"),)) is None


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


# -- regressions as data: tests/data/config_refused/<case>.toml must be refused with <case>.err -------
REFUSED = ROOT / "tests" / "data" / "config_refused"


@pytest.mark.parametrize("case", sorted(p.stem for p in REFUSED.glob("*.toml")))
def test_refused_config(case, capsys):
    path = REFUSED / f"{case}.toml"
    expected = (REFUSED / f"{case}.err").read_text(encoding="utf-8").rstrip("\n")
    code = main(["check-config", "-c", str(path)])
    out, err = capsys.readouterr()
    assert (code, out, err) == (EX_CONFIG, "", f"boxtel: {path}: {expected}\n")


def test_a_config_not_in_utf8_is_one_line_for_every_command_and_a_bom_is_skipped(tmp_path):
    """Saved in Latin-1 on a technician's laptop: `status` and `doctor` read the same file (leniently)."""
    latin1 = tmp_path / "agent.toml"
    latin1.write_bytes(b'[box]\nid = "pib-001"\nsite = "Besan\xe7on"\n')
    for command in ("check-config", "status", "doctor", "run"):
        result = boxtel(command, "-c", str(latin1))
        assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout, (command, result)
    assert "not UTF-8 text: byte 0xE7 on line 3" in boxtel("doctor", "-c", str(latin1)).stdout
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b'\xef\xbb\xbf[box]\nid = "pib-001"\nstate_dir = "state"\n')
    assert boxtel("check-config", "-c", str(bom)).returncode == 0


@pytest.mark.parametrize("command", ["check-config", "doctor"])
def test_output_into_a_pipe_closed_early_is_no_traceback(tmp_path, command):
    """`boxtel doctor | head -1`: the reader has gone; the command stops quietly, as a shell tool does."""
    config = tmp_path / "agent.toml"
    config.write_text(toml_dumps({"box": {"id": "pib-001", "state_dir": "state"}}))
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run([sys.executable, "-m", "agent", command, "-c", str(config)], stdout=writer,
                                stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT)
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (141, ""), result.stderr


def test_every_refused_case_has_its_line():
    assert {p.stem for p in REFUSED.glob("*.toml")} == {p.stem for p in REFUSED.glob("*.err")}


# -- every number: finite and bounded ------------------------------------------------------------
# The smallest valid table of each section that needs one, with every optional sub-table present, so
# that the walk below reaches every float key (a section not listed here must load from `{}`).
MINIMAL: dict[str, Any] = {
    "box": {"id": "pib-001"},
    "generator": {"running": {"pin": 17}, "faults": {"low_oil": {"pin": 27}}, "fuel": {"channel": 0},
                  "cranking": {"pin": 24}},
    "water": {"tank": {"channel": 1}, "float_low": {"pin": 5}, "float_high": {"pin": 6}, "flow": {"pin": 13},
              "pump": {"pin": 19}, "leak": {"pin": 26}},
    "locker": [{"name": "armory-1", "door": {"pin": 23}, "arm_switch": {"pin": 12}},
               {"name": "armory-2", "door": {"channel": 2}, "arm_switch": {"pin": 16}}],  # a pin door; a loop door
    "box.tamper": {"pin": 4},
}


def _schemas() -> dict[str, type]:
    from drivers import REGISTRY, driver_class

    return {**config_module.CORE_SECTIONS, **{name: driver_class(name).Config for name in REGISTRY}}


def _unwrap(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def _table_kinds(hint: Any) -> list[type]:
    """The table kinds a key may take: one dataclass, or a union of them (`door = { pin }` or a loop)."""
    if dataclasses.is_dataclass(hint):
        return [hint]
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    return list(args) if args and all(dataclasses.is_dataclass(a) for a in args) else []


def _float_keys(cls: type, table: Any, where: tuple) -> list[tuple[tuple, bool]]:
    """(key path as a tuple of keys and list indexes, inf_ok) of every float setting reachable in
    `table`, the fields of a float table (a deadband) included."""
    found = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint, path = _unwrap(hints[field.name]), (*where, field.name)
        inf_ok = bool(field.metadata.get("inf_ok"))
        if hint is float:
            found.append((path, inf_ok))
        elif typing.get_origin(hint) is dict and typing.get_args(hint)[1] is float:
            found += [((*path, name), inf_ok) for name in field.metadata.get("keys") or ()]
        elif _table_kinds(hint):
            assert field.name in table, f"add {'.'.join(map(str, path))} to MINIMAL so its float keys are tried"
            kind = next(k for k in _table_kinds(hint) if set(table[field.name]) <= {f.name for f in dataclasses.fields(k)})
            found += _float_keys(kind, table[field.name], path)
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            assert table.get(field.name), f"add an entry to {'.'.join(map(str, path))} in MINIMAL"
            for name, item in table[field.name].items():
                found += _float_keys(typing.get_args(hint)[1], item, (*path, name))
    return found


def _all_keys(walk) -> list[tuple]:
    """`walk(schema, table, path)` over every section of MINIMAL (each table of a list in turn)."""
    keys = []
    for section, cls in _schemas().items():
        table = MINIMAL.get(section, {})
        for i, item in enumerate(table if isinstance(table, list) else [table]):
            keys += walk(cls, item, (section, i) if isinstance(table, list) else (section,))
    return keys


FLOAT_KEYS = _all_keys(_float_keys)


def _key_text(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if n else p) for n, p in enumerate(path))


def test_every_section_has_its_float_keys_walked():
    paths = dict(FLOAT_KEYS)
    assert {"outbox", "mqtt", "host", "gps", "generator", "water", "locker"} <= {path[0] for path in paths}
    assert paths[("locker", 0, "door", "debounce_ms")] is False
    assert paths[("generator", "faults", "low_oil", "debounce_ms")] is False
    assert paths[("host", "deadband", "uptime_s")] is True  # inf: "never a reason to send on its own"


def _refused(inf_ok: bool) -> st.SearchStrategy:
    return st.sampled_from([math.nan, -math.inf] if inf_ok else [math.nan, math.inf, -math.inf])


@settings(max_examples=150, deadline=None)
@given(case=st.sampled_from(FLOAT_KEYS).flatmap(lambda key: st.tuples(st.just(key[0]), _refused(key[1]))))
def test_any_float_key_set_to_nan_or_inf_is_refused_naming_it(case):
    path, value = case
    data = copy.deepcopy({"box": MINIMAL["box"], path[0]: MINIMAL.get(path[0], {})})
    table = data
    for key in path[:-1]:
        table = table[key] if isinstance(key, int) else table.setdefault(key, {})
    table[path[-1]] = value
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "agent.toml"
        file.write_text(toml_dumps(data))
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = main(["check-config", "-c", str(file)])
    shown = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    assert code == EX_CONFIG
    assert stderr.getvalue().startswith(f"boxtel: {file}: {_key_text(path)}: expected "), stderr.getvalue()
    assert stderr.getvalue().endswith(f", got {shown}\n"), stderr.getvalue()


def _string_keys(cls: type, table: Any, where: tuple) -> list[tuple]:
    """Key path of every string setting reachable in `table` (a list of strings: its first item)."""
    found = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint, path = _unwrap(hints[field.name]), (*where, field.name)
        args = typing.get_args(hint)
        if hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType) and str in args):
            found.append(path)
        elif typing.get_origin(hint) is list and args[0] is str:
            found.append((*path, 0))
        elif dataclasses.is_dataclass(hint) and field.name in table:
            found += _string_keys(hint, table[field.name], path)
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(args[1]):
            for name, item in table.get(field.name, {}).items():
                found += _string_keys(args[1], item, (*path, name))
    return found


STRING_KEYS = _all_keys(_string_keys)


def test_every_section_has_its_string_keys_walked():
    assert {("box", "id"), ("box", "state_dir"), ("mqtt", "topic_prefix"), ("gps", "port"), ("gps", "baud"),
            ("locker", 0, "name"), ("locker", 0, "armed_schedule", 0)} <= set(STRING_KEYS)


@pytest.mark.parametrize("char", ["\x00", "\n", "\r", "\x1b", "\x85", "\u2028"], ids=repr)
def test_every_string_key_refuses_control_characters_naming_it(tmp_path, char):
    """Every string -- ids, names, topics, paths, schedule windows -- ends in topics, payloads or log lines."""
    for path in STRING_KEYS:
        data = copy.deepcopy({"box": MINIMAL["box"], path[0]: MINIMAL.get(path[0], {})})
        table = data
        for key, then in zip(path[:-1], path[1:], strict=True):
            table = table[key] if isinstance(key, int) else table.setdefault(key, [] if isinstance(then, int) else {})
        if isinstance(path[-1], int):
            table[:] = ["x"]
        table[path[-1]] = f"ab{char}c"
        file = tmp_path / "agent.toml"
        file.write_text(toml_dumps(data))
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = main(["check-config", "-c", str(file)])
        assert code == EX_CONFIG, (path, stderr.getvalue())
        assert stderr.getvalue() == (f"boxtel: {file}: {_key_text(path)}: control character U+{ord(char):04X} at "
                                     "position 3 is not allowed\n")


# Numbers bounded another way than `max=`: a set of valid values checked in the section's validate().
_BOUNDED_ELSEWHERE = {("InputConfig", "pin"): "BCM_PINS", ("TamperConfig", "pin"): "BCM_PINS", ("GpsConfig", "baud"): "BAUDS"}


def _number_settings(cls: type, seen: set) -> list[tuple[type, dataclasses.Field, Any]]:
    if cls in seen:
        return []
    seen.add(cls)
    found = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = _unwrap(hints[field.name])
        inner = typing.get_args(hint)[1] if typing.get_origin(hint) is dict else hint
        if _table_kinds(inner):
            for kind in _table_kinds(inner):
                found += _number_settings(kind, seen)
        elif inner in (int, float) or (typing.get_origin(hint) in (typing.Union, types.UnionType)):
            found.append((cls, field, inner))
    return found


def test_every_number_setting_has_an_upper_bound():
    """A value so large it means "never" (open_too_long_s = 1e308) would switch off what it drives."""
    unbounded = []
    seen: set = set()
    for cls in _schemas().values():
        for owner, field, inner in _number_settings(cls, seen):
            meta = field.metadata
            if (owner.__name__, field.name) in _BOUNDED_ELSEWHERE or meta.get("choices"):
                continue
            if meta.get("max") is None and not (inner is float and meta.get("inf_ok")):
                unbounded.append(f"{owner.__name__}.{field.name}")
    assert not unbounded, f"no max= for: {unbounded}"


def test_unsafe_characters_are_exactly_unicodes_controls_separators_surrogates_and_invisibles():
    import sys
    import unicodedata

    from agent.errors import unsafe_char

    # Of the format characters (Cf): the invisible ones and the bidi controls ("Trojan Source"), not
    # e.g. the soft hyphen or the Arabic number signs, which are text.
    invisible = {0x061C, 0x180E, *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2065),
                 *range(0x2066, 0x2070), 0xFEFF}
    assert all(unicodedata.category(chr(c)) == "Cf" for c in invisible)
    wrong = [hex(c) for c in range(sys.maxunicode + 1)
             if unsafe_char(chr(c)) != (unicodedata.category(chr(c)) in ("Cc", "Zl", "Zp", "Cs") or c in invisible)]
    assert not wrong

