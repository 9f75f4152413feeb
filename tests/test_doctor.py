"""`boxtel doctor`: each check against the real thing (a pty, mosquitto with TLS, certificates made here,
a directory the service user cannot write), forced to fail once, with its line and exit code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

import drivers
from agent.cli import main
from agent.commands.doctor import FAIL, OK, WARN, Result, exit_code
from agent.outbox import volatile_reason
from tests.diag_support import FakeGps, agent_in_process, is_socket
from tests.support import boxtel, wait_until

LINE = re.compile(r"^(OK  |WARN|FAIL) [a-z ]+: .+")
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"


@pytest.fixture
def fake_gps(monkeypatch):
    """[gps] parses the same with or without the GPS driver; the check must not depend on which."""
    monkeypatch.setitem(drivers.REGISTRY, "gps", "tests.diag_support:FakeGps")


def doctor(config: Path, capsys) -> tuple[int, dict[str, list[str]]]:
    """Run doctor in this process; returns the exit code and {check: [lines]}."""
    code = main(["doctor", "-c", str(config)])
    lines = capsys.readouterr().out.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    by_check: dict[str, list[str]] = {}
    for line in lines:
        by_check.setdefault(line[5:].split(":", 1)[0], []).append(line)
    return code, by_check


def tls_broker(make_broker, certs, **extra):
    return make_broker(tls={"cafile": str(certs["ca_crt"]), "certfile": str(certs["server_crt"]),
                            "keyfile": str(certs["server_key"]), **extra})


def tls_settings(broker, **keys) -> dict:
    return {"mqtt": {"host": "localhost", "port": broker.port, "tls": True, **keys}}


def test_every_check_against_a_running_agent(broker, make_config, run_agent):
    config = make_config(broker, {"simulate": True})
    run_agent(config)
    path = str(config.parent / "control.sock")
    wait_until(lambda: is_socket(path), what="the control socket")
    done = boxtel("doctor", "-c", str(config))
    lines = done.stdout.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    text = done.stdout
    assert f"OK   config: {config} (box test-001; drivers: none)" in text
    assert "OK   agent: running (pid " in text
    assert f"OK   control socket: {path} mode 0660, group " in text
    assert "OK   broker name: 127.0.0.1 is 127.0.0.1" in text
    assert f"OK   broker tcp: 127.0.0.1:{broker.port} accepts connections" in text
    assert "OK   mqtt login: the running agent is logged in as test-001" in text
    assert "OK   state dir: " in text
    # Started by hand, not by systemd: a warning with its fix, so exit 1.
    assert "WARN systemd: the running agent was started by hand, not by systemd — " in text
    assert done.returncode == 1


def test_unreachable_broker_fails_and_skips_what_depends_on_it(make_config, capsys):
    code, checks = doctor(make_config(None), capsys)  # port 1: nothing listens
    assert checks["broker tcp"] == ["FAIL broker tcp: cannot connect to 127.0.0.1:1: Connection refused — is the "
                                    "broker up? a firewall or the APN in the way? is mqtt.port (1) right?"]
    assert "mqtt login" not in checks and "tls" not in checks
    assert checks["agent"][0].startswith("WARN agent: not running")
    assert code == 2


def test_invalid_config_fails_and_the_host_checks_still_run(tmp_path, capsys):
    config = tmp_path / "agent.toml"
    config.write_text('[box]\nid = "test-001"\n[mqtt]\nprot = 1883\n')
    code, checks = doctor(config, capsys)
    assert checks["config"] == [f"FAIL config: {config}: mqtt.prot: unknown key (did you mean 'port'?) — "
                                "fix what it names, then `boxtel check-config`"]
    assert "power" in checks and "systemd" in checks
    assert code == 2


def test_wrong_serial_port(make_config, capsys, fake_gps):
    code, checks = doctor(make_config(None, {"gps": {"port": "/dev/ttyNOPE"}}), capsys)
    assert checks["serial"] == ["FAIL serial: /dev/ttyNOPE does not exist — plug the receiver in; on a Pi enable "
                                "the UART (raspi-config: serial port on, login shell off); or fix gps.port"]
    assert code == 2


def test_a_simulated_box_with_no_agent_does_not_fail_on_its_receivers_port(make_config, capsys):
    # `boxtel doctor -c config/simulate.toml` before `make demo`: the receiver is the agent's pty
    code, checks = doctor(make_config(None, {"simulate": True, "gps": {"port": "/dev/ttyNOPE"}}), capsys)
    assert checks["serial"] == ["OK   serial: simulated: start the agent to read its receiver"]


@pytest.fixture
def pty_talking():
    """A pseudo-terminal whose far end sends what the test puts in `sending[0]` every 50 ms."""
    master, slave = os.openpty()
    sending = [GGA]
    stop = threading.Event()

    def talk():
        while not stop.wait(0.05):
            try:
                os.write(master, sending[0])
            except OSError:
                return

    thread = threading.Thread(target=talk, daemon=True)
    thread.start()
    yield os.ttyname(slave), sending
    stop.set()
    thread.join()
    os.close(master)
    os.close(slave)


def test_serial_port_with_nmea_is_ok(make_config, capsys, fake_gps, pty_talking):
    port, _ = pty_talking
    code, checks = doctor(make_config(None, {"gps": {"port": port}}), capsys)
    assert checks["serial"][0].startswith(f"OK   serial: {port}: ")


def test_serial_port_with_no_nmea_fails(make_config, capsys, fake_gps, pty_talking):
    port, sending = pty_talking
    sending[0] = b"\x00\xff garbage at the wrong baud rate \xfe\r\n"
    code, checks = doctor(make_config(None, {"gps": {"port": port}}), capsys)
    assert checks["serial"][0].startswith(f"FAIL serial: {port}: ")
    assert checks["serial"][0].endswith("— check the wiring (receiver TX to Pi RX), its power, and gps.baud")
    assert code == 2


def test_serial_port_held_by_the_agent_is_probed_through_it(broker, make_config, capsys, fake_gps, monkeypatch):
    config = make_config(broker, {"gps": {"port": "/dev/ttyAMA9"}})
    with agent_in_process(config):
        code, checks = doctor(config, capsys)
        assert checks["serial"] == ["OK   serial: /dev/ttyAMA9 (read by the running agent): link connected, "
                                    "last sentence 0.4 s ago, 42 sentences OK"]
        monkeypatch.setattr(FakeGps, "link", "disconnected")
        code, checks = doctor(config, capsys)
        assert checks["serial"][0].startswith("FAIL serial: /dev/ttyAMA9 (read by the running agent): link disconnected")
        assert code == 2


def test_tls_with_the_right_ca_and_a_real_login(make_broker, make_config, certs, capsys):
    broker = tls_broker(make_broker, certs)
    code, checks = doctor(make_config(broker, tls_settings(broker, ca_file=str(certs["ca_crt"]))), capsys)
    assert checks["tls"][0].startswith("OK   tls: TLSv1.")
    assert f"signed by {certs['ca_crt']}, valid for another 29 days" in checks["tls"][0]
    assert checks["mqtt login"] == ["OK   mqtt login: the broker accepted test-001"]


def test_a_ca_that_does_not_match(make_broker, make_config, certs, capsys):
    broker = tls_broker(make_broker, certs)
    code, checks = doctor(make_config(broker, tls_settings(broker, ca_file=str(certs["other_ca_crt"]))), capsys)
    line = checks["tls"][0]
    assert line.startswith(f"FAIL tls: the broker's certificate is not signed by {certs['other_ca_crt']} (")
    assert line.endswith(") — mqtt.ca_file must be the CA that signed the broker's certificate")
    assert "mqtt login" not in checks
    assert code == 2


def test_an_expired_client_certificate(make_broker, make_config, certs, tmp_path, capsys):
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=test-001", "-keyout", "old.key", "-out", "old.csr")
    openssl("x509", "-req", "-in", "old.csr", "-CA", str(certs["ca_crt"]), "-CAkey", str(certs["ca_key"]),
            "-CAcreateserial", "-days", "-1", "-out", "old.crt")
    (tmp_path / "old.key").chmod(0o600)
    broker = tls_broker(make_broker, certs)
    config = make_config(broker, tls_settings(broker, ca_file=str(certs["ca_crt"]),
                                              cert_file=str(tmp_path / "old.crt"), key_file=str(tmp_path / "old.key")))
    code, checks = doctor(config, capsys)
    line = checks["client certificate"][0]
    assert line.startswith(f"FAIL client certificate: {tmp_path / 'old.crt'} expired on ")
    assert line.endswith("(1 day ago) — issue a new certificate for test-001")
    assert code == 2


def test_a_refused_login(make_broker, make_config, tmp_path, capsys):
    broker = make_broker(passwords={"test-001": "right"})
    secret = tmp_path / "mqtt.password"
    secret.write_text("wrong\n")
    secret.chmod(0o600)
    code, checks = doctor(make_config(broker, {"mqtt": {"password_file": str(secret)}}), capsys)
    assert checks["mqtt login"][0].startswith("FAIL mqtt login: the broker refused test-001: ")
    assert "wrong" not in checks["mqtt login"][0]  # never the password
    assert code == 2


def test_a_read_only_state_dir():
    """The service user cannot write the state dir. Root writes anywhere, so as root doctor checks as nobody."""
    folder = Path(tempfile.mkdtemp(prefix="boxtel-doctor-"))
    try:
        folder.chmod(0o755)
        state = folder / "state"
        state.mkdir(mode=0o555)
        config = folder / "agent.toml"
        config.write_text(f'[box]\nid = "test-001"\nstate_dir = "{state}"\n[mqtt]\nport = 1\n'
                          f'[diagnostics]\nsocket = "{folder / "control.sock"}"\n')
        config.chmod(0o644)
        if os.geteuid() == 0:
            done = boxtel("doctor", "--user", "nobody", "-c", str(config))
            assert done.stdout.splitlines()[0] == "OK   user: checking as nobody, the user the agent runs as"
        else:
            done = boxtel("doctor", "-c", str(config))
        line = next(line for line in done.stdout.splitlines() if line.startswith(("OK   state dir", "FAIL state dir")))
        assert line.startswith(f"FAIL state dir: {state} is not writable: Permission denied — chown -R ")
        assert done.returncode == 2
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_state_dir_on_tmpfs_is_a_warning(make_config, capsys):
    if "tmpfs" not in (volatile_reason(Path("/dev/shm")) or ""):
        pytest.skip("no tmpfs at /dev/shm")
    state = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="boxtel-state-"))
    try:
        code, checks = doctor(make_config(None, {"box": {"state_dir": str(state)}}), capsys)
        warning = f"WARN state dir: the outbox's folder {state} is on tmpfs (RAM): queued messages are lost at power-off"
        assert any(line.startswith(warning) and "docs/deploy.md" in line for line in checks["state dir"])
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_under_voltage_now_fails_through_the_host_drivers_reading(make_config, tmp_path, capsys):
    hwmon = tmp_path / "sys/class/hwmon/hwmon0"
    hwmon.mkdir(parents=True)
    (hwmon / "name").write_text("rpi_volt\n")
    (hwmon / "in0_lcrit_alarm").write_text("1\n")
    code, checks = doctor(make_config(None, {"host": {"sysfs_root": str(tmp_path / "sys")}}), capsys)
    assert checks["power"] == ["FAIL power: under-voltage now — use a 5.1 V / 3 A supply with a short, thick cable; "
                               "check the generator under load"]
    (hwmon / "in0_lcrit_alarm").write_text("0\n")
    code, checks = doctor(make_config(None, {"host": {"sysfs_root": str(tmp_path / "sys")}}), capsys)
    assert checks["power"][0].startswith("OK   power: no under-voltage now")


def test_exit_code_is_the_worst_mark():
    assert exit_code([Result(OK, "a", "")]) == 0
    assert exit_code([Result(OK, "a", ""), Result(WARN, "b", "")]) == 1
    assert exit_code([Result(WARN, "a", ""), Result(FAIL, "b", ""), Result(OK, "c", "")]) == 2


def test_a_pin_factory_that_cannot_load(make_config, capsys):
    import importlib.util

    if importlib.util.find_spec("lgpio") is not None:
        pytest.skip("lgpio is installed here")
    code, checks = doctor(make_config(None, {"gpio": {"pin_factory": "lgpio"}}), capsys)
    assert checks["gpio"] == ["FAIL gpio: no gpiozero pin factory 'lgpio': No module named 'lgpio' — on a Pi: "
                              "apt install python3-lgpio, and put the service user in group gpio"]
    assert code == 2


def _client_certificate(tmp_path, certs, name: str, subject: str, san: str | None = None) -> dict:
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr")
    ext = []
    if san:
        (tmp_path / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        ext = ["-extfile", f"{name}.ext"]
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(certs["ca_crt"]), "-CAkey", str(certs["ca_key"]),
            "-CAcreateserial", "-days", "30", "-out", f"{name}.crt", *ext)
    (tmp_path / f"{name}.key").chmod(0o600)
    return {"ca_file": str(certs["ca_crt"]), "cert_file": str(tmp_path / f"{name}.crt"),
            "key_file": str(tmp_path / f"{name}.key")}


def test_a_client_certificate_for_another_box_fails_with_the_fix(make_broker, make_config, certs, tmp_path, capsys):
    """A certificate made for pib-002 on box test-001: the broker takes the certificate's name as the
    identity and refuses every publish, while the handshake and login succeed."""
    broker = tls_broker(make_broker, certs)
    files = _client_certificate(tmp_path, certs, "other", "/CN=pib-002", san="DNS:pib-002.boxes.example")
    code, checks = doctor(make_config(broker, tls_settings(broker, **files)), capsys)
    assert checks["client certificate"][0].startswith("OK   client certificate: ")  # dates are fine
    assert checks["client certificate"][1] == (
        f"FAIL client certificate: {files['cert_file']} is for pib-002 (CN), pib-002.boxes.example (SAN DNS), "
        "not for this box test-001 (box.id): the broker would refuse its publishes — issue a certificate with "
        "CN=test-001 for this box, or fix box.id")
    assert code == 2


def test_a_client_certificate_naming_the_box_in_its_san_is_ok(make_broker, make_config, certs, tmp_path, capsys):
    broker = tls_broker(make_broker, certs)
    files = _client_certificate(tmp_path, certs, "san", "/O=boxtel fleet", san="DNS:test-001")
    code, checks = doctor(make_config(broker, tls_settings(broker, **files)), capsys)
    assert checks["client certificate"][1] == f"OK   client certificate: {files['cert_file']} is for test-001 (box.id)"


def test_tls_against_a_plain_mqtt_port_says_so(broker, make_config, certs, capsys):
    code, checks = doctor(make_config(broker, tls_settings(broker, ca_file=str(certs["ca_crt"]))), capsys)
    assert checks["tls"] == [
        f"FAIL tls: handshake with localhost:{broker.port} failed: the broker's port does not speak TLS? (it hung "
        "up on the TLS handshake; the TLS port is usually 8883) — set mqtt.port to the broker's TLS listener "
        "(ask its admin which port that is)"]
    assert "Connection reset by peer" not in "\n".join(sum(checks.values(), []))
    assert code == 2


def test_a_certificate_name_cannot_forge_a_doctor_line(make_broker, make_config, certs, tmp_path, capsys):
    broker = tls_broker(make_broker, certs)
    files = _client_certificate(tmp_path, certs, "forged", "/CN=pib-002\nOK   tls: all fine")
    code, checks = doctor(make_config(broker, tls_settings(broker, **files)), capsys)  # every line well-formed
    assert checks["client certificate"][1].startswith(
        f"FAIL client certificate: {files['cert_file']} is for pib-002\\nOK   tls: all fine (CN), not for this box")
