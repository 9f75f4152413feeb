"""The deployment docs a field engineer follows word for word: the wiring table is the example config,
the broker setup is one (deploy.md and mqtt.md), and that setup -- its mosquitto config, ACL and the PKI
commands -- runs: a real mosquitto started from it takes a real agent with its client certificate."""

from __future__ import annotations

import getpass
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from agent.devbroker import free_port, port_in_use
from tests.support import ROOT, Subscriber, toml_dumps, wait_until

DEPLOY = (ROOT / "docs" / "deploy.md").read_text()
MQTT_DOC = (ROOT / "docs" / "mqtt.md").read_text()
_COMMENTED_KEY = re.compile(r"^# ?((?:\[\[?[a-z_.]+\]\]?)|(?:[a-z_]+ = .*))$")


def example_config() -> dict:
    """config/agent.example.toml with every `# key = value` line switched on."""
    text = (ROOT / "config" / "agent.example.toml").read_text()
    return tomllib.loads("\n".join(m.group(1) if (m := _COMMENTED_KEY.match(line)) else line
                                   for line in text.splitlines()))


def example_inputs() -> dict[str, dict]:
    """Every GPIO input and ADC channel of the example config, by key path ("generator.faults.low_oil")."""
    raw = example_config()
    found: dict[str, dict] = {}

    def walk(path: str, table: dict) -> None:
        for key, value in table.items():
            if isinstance(value, dict) and ("pin" in value or "channel" in value):
                found[f"{path}.{key}"] = value
            elif isinstance(value, dict):
                walk(f"{path}.{key}", value)

    for section in ("box", "generator", "water"):
        walk(section, raw[section])
    walk("locker", raw["locker"][0])
    return found


def wiring_table() -> dict[str, dict[str, str]]:
    section = DEPLOY[DEPLOY.index("## 4. Wiring"):DEPLOY.index("## 5.")]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not re.fullmatch(r"`[a-z_.]+`", cells[0]):
                continue  # an alternative wiring the example config shows only as a comment
            rows[cells[0].strip("`")] = {"pin": cells[1], "pull_up": cells[3].strip("`"), "active_high": cells[4].strip("`")}
    return rows


def test_the_wiring_table_is_the_example_config():
    table, inputs = wiring_table(), example_inputs()
    assert table.keys() == inputs.keys() | {"gps"}
    for key, spec in inputs.items():
        row = table[key]
        if "channel" in spec:
            assert row["pin"] == f"{spec.get('chip', 'MCP3008')} CH{spec['channel']}", key
            continue
        assert re.match(rf"GPIO {spec['pin']}\b", row["pin"]), (key, row["pin"])
        assert row["pull_up"] == str(spec.get("pull_up", True)).lower(), key  # the schema's defaults
        assert row["active_high"] == str(spec.get("active_high", True)).lower(), key
    # a reed switch to ground with the pull-up reads high with the door open: active_high = true
    assert table["locker.door"]["active_high"] == "true" and table["generator.running"]["active_high"] == "false"


def _blocks(text: str) -> dict[str, str]:
    return {name: re.search(rf"`{re.escape(name)}`:\n\n```\n(.*?)```", text, re.S).group(1)
            for name in ("/etc/mosquitto/conf.d/boxtel.conf", "/etc/mosquitto/acl")}


def test_deploy_and_mqtt_give_one_broker_setup():
    assert _blocks(DEPLOY) == _blocks(MQTT_DOC)
    acl = _blocks(DEPLOY)["/etc/mosquitto/acl"]
    assert "pattern write homeassistant/+/%u/+/config" in acl and "pattern read homeassistant/status" in acl
    users = set(re.findall(r"^user (\S+)", acl, re.M))
    assert users == {"fleet-console", "telegraf", "nodered", "homeassistant"}


@pytest.mark.parametrize("identity", ["password", "certificate"])
def test_the_documented_broker_and_pki_take_a_box(identity: str, tmp_path: Path, run_agent):
    """The PKI commands of deploy.md run as written (broker name: localhost), mosquitto starts from the
    documented config and ACL (paths and port moved into a temp dir), and an agent connects -- by its
    password, or with the documented `require_certificate` lines by its certificate's CN -- and a
    central user reads it."""
    pki = re.search(r"### Certificates \(PKI\).*?```sh\n(.*?)```", DEPLOY, re.S).group(1)
    pki = pki.replace("broker.example.org", "localhost")
    per_box = pki[pki.index("# one per box"):]
    for commands in (pki, per_box.replace("pib-017", "telegraf")):  # a central user's certificate: the same steps
        subprocess.run(["sh", "-e", "-c", commands], cwd=tmp_path, check=True, capture_output=True)
    for key in tmp_path.glob("*.key"):
        key.chmod(0o600)
    blocks = _blocks(DEPLOY)
    port = free_port()
    conf = blocks["/etc/mosquitto/conf.d/boxtel.conf"].replace("listener 8883", f"listener {port} 127.0.0.1")
    conf = conf.replace("/etc/mosquitto/certs/", f"{tmp_path}/").replace("/etc/mosquitto/", f"{tmp_path}/")
    (tmp_path / "acl").write_text(blocks["/etc/mosquitto/acl"])
    (tmp_path / "passwd").write_text("")
    (tmp_path / "passwd").chmod(0o600)
    for user in ("pib-017", "telegraf"):
        subprocess.run(["mosquitto_passwd", "-b", str(tmp_path / "passwd"), user, f"{user}-secret"], check=True)
    if identity == "certificate":
        conf += "require_certificate true\nuse_identity_as_username true\n"
        assert "`require_certificate true`" in DEPLOY and "`use_identity_as_username true`" in DEPLOY
    (tmp_path / "mosquitto.conf").write_text(f"user {getpass.getuser()}\nlog_dest stderr\n{conf}")
    with open(tmp_path / "mosquitto.log", "wb") as log:
        broker = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: port_in_use(port) or broker.poll() is not None, 10, "mosquitto listening")
        assert broker.poll() is None, (tmp_path / "mosquitto.log").read_text()
        (tmp_path / "mqtt.password").write_text("pib-017-secret")
        (tmp_path / "mqtt.password").chmod(0o600)
        config = tmp_path / "agent.toml"
        config.write_text(toml_dumps({
            "box": {"id": "pib-017", "state_dir": str(tmp_path / "state")},
            "mqtt": {"host": "localhost", "port": port, "tls": True, "ca_file": str(tmp_path / "ca.crt"),
                     "cert_file": str(tmp_path / "pib-017.crt"), "key_file": str(tmp_path / "pib-017.key"),
                     "reconnect_min_s": 0.2,
                     **({"password_file": str(tmp_path / "mqtt.password")} if identity == "password" else {})},
            "diagnostics": {"socket": str(tmp_path / "control.sock")},
        }))
        agent = run_agent(config)
        central = Subscriber(port, "boxtel/#", host="localhost", ca_certs=str(tmp_path / "ca.crt"),
                             username="telegraf", password="telegraf-secret",
                             certfile=str(tmp_path / "telegraf.crt"), keyfile=str(tmp_path / "telegraf.key"))
        try:
            central.wait_for("boxtel/pib-017/status", lambda p: p["state"] == "online", timeout=20)
        finally:
            central.close()
        assert agent.alive() and "refused" not in agent.log()
    finally:
        broker.terminate()
        broker.wait(timeout=10)
