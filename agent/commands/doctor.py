"""`boxtel doctor`: a self-test a technician can read without knowing the code.

One line per check: `OK|WARN|FAIL <check>: <detail> — <fix hint>`. Exit 0 when everything is OK, 1 with
warnings, 2 with failures. Each check is a small function in `CHECKS`, run in order; a check that depends
on an earlier one (TLS on TCP, TCP on the name) says nothing when that one failed, so the first FAIL is
the one to fix. Run it as root or as the service user: it reads the same files the agent reads.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import importlib
import os
import pwd
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HELP = "self-test: config, serial/gpsd, GPIO, broker, TLS, login, clock, chrony, disk, power, systemd (exit 0/1/2)"

OK, WARN, FAIL = "OK", "WARN", "FAIL"
_EXIT = {OK: 0, WARN: 1, FAIL: 2}

NETWORK_TIMEOUT_S = 5.0
SERIAL_TIMEOUT_S = 3.0  # a receiver talks at least once a second
CERT_WARN_DAYS = 14  # renewals usually run at 30 days left; 14 means they have stopped
MIN_FREE_MB = 10.0
SERVICE = "boxtel.service"
# What really sets the system clock on a box without an RTC (a GPS fix alone stamps only the agent's data)
CLOCK_ADVICE = ("NTP (timedatectl set-ntp true) when the link allows, or GPS through chrony "
                "([gps] chrony_socket and chrony's refclock line, docs/deploy.md, 9.)")
_GPIO_SECTIONS = ("generator", "water", "locker")
_PRELOAD = (
    "agent.config", "agent.control", "agent.clock", "agent.outbox", "agent.publisher", "drivers.host", "drivers.gps",
    "psutil", "serial", "gpiozero", "importlib.metadata", "paho.mqtt.client", "tomllib", "json", "logging", "encodings.idna",
)
# X509_V_ERR_* codes from OpenSSL's x509_vfy.h that have their own advice.
_CERT_NOT_YET_VALID = 9
_CERT_EXPIRED = 10
_HOSTNAME_MISMATCH = 62


@dataclass(frozen=True)
class Result:
    mark: str
    check: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        from agent.errors import one_line  # a certificate's name or a device's answer may hold anything

        hint = f" — {self.fix}" if self.fix and self.mark != OK else ""
        return one_line(f"{self.mark:<4} {self.check}: {self.detail}{hint}")


@dataclass
class Context:
    """What the checks learn as they go (the config, the running agent, how far the broker answered)."""

    config_path: str
    config: Any = None
    socket_path: str = ""
    agent: dict[str, Any] | None = None  # the running agent's snapshot
    agent_silent: bool = False  # an agent holds the state dir but its control socket does not answer
    broker_addresses: list[str] = field(default_factory=list)
    broker_tcp: bool = False
    tls_ok: bool = False
    _service_user: str | None = None

    def service_user(self) -> str:
        """The user the service runs as (the installed unit's User=, root when unset), else whoever runs
        doctor."""
        if self._service_user is None:
            from agent.serviceuser import unit_user

            user = unit_user()
            if user is None:
                user = _systemctl_show("User").get("User")
            if user is None:
                user = pwd.getpwuid(os.geteuid()).pw_name
            self._service_user = user or "root"
        return self._service_user


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", metavar="NAME",
                        help="run as root: check as this user (default: the unit's User=)")


def run(args: argparse.Namespace) -> int:
    from agent.errors import UsageError

    ctx = Context(args.config)
    if args.user and os.geteuid() != 0:
        raise UsageError("--user needs root (it switches to that user)")
    results = []
    if os.geteuid() == 0:
        user = args.user or ctx.service_user()
        if user != "root":
            results.append(become(ctx, user))
            print(results[-1].line(), flush=True)
    for result in run_checks(ctx):
        print(result.line(), flush=True)
        results.append(result)
    return exit_code(results)


def become(ctx: Context, user: str) -> Result:
    """Run the checks as the service's user: root reads every file and port, the agent does not (and the
    agent's secrets must be owned by it, so root would be refused them)."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return Result(WARN, "user", f"no user {user}: checking as root", "create it (make install does)")
    for module in _PRELOAD:  # the user may not read every folder root imported from
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    os.initgroups(user, account.pw_gid)
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    ctx._service_user = user
    return Result(OK, "user", f"checking as {user}, the user the agent runs as")


def run_checks(ctx: Context) -> Iterable[Result]:
    for check in CHECKS:
        yield from check(ctx)


def exit_code(results: list[Result]) -> int:
    return max((_EXIT[r.mark] for r in results), default=0)


# -- the checks, in the order they run ---------------------------------------------------------------
def check_config(ctx: Context) -> list[Result]:
    from agent import control
    from agent.config import load
    from agent.errors import ConfigError

    ctx.socket_path = control.socket_path(ctx.config_path)
    try:
        ctx.config = load(ctx.config_path)
    except ConfigError as err:
        return [Result(FAIL, "config", str(err), "fix what it names, then `boxtel check-config`")]
    drivers = ", ".join(entry.key for entry in ctx.config.drivers) or "none"
    return [Result(OK, "config", f"{ctx.config.file} (box {ctx.config.box.id}; drivers: {drivers})")]


def check_agent(ctx: Context) -> list[Result]:
    from agent import control
    from agent.errors import UnavailableError

    try:
        ctx.agent = control.request(ctx.socket_path, "status", timeout_s=NETWORK_TIMEOUT_S,
                                    state_dir=control.state_dir_path(ctx.config_path))["status"]
    except control.AgentNotAnswering as err:
        ctx.agent_silent = True
        return [Result(FAIL, "agent", err.summary, err.REMEDY)]
    except control.AgentNotRunning:
        return [Result(WARN, "agent", f"not running (nothing answers on {ctx.socket_path})",
                       "systemctl start boxtel; `journalctl -u boxtel -e` shows why it stopped")]
    except UnavailableError as err:
        return [Result(WARN, "agent", str(err), "check diagnostics.socket and its group")]
    service = ctx.agent.get("service", {})
    results = [Result(OK, "agent", f"running (pid {service.get('pid')}, up {ctx.agent.get('uptime_s')} s, "
                      f"boxtel {ctx.agent.get('version')})")]
    return results + check_socket_access(ctx)


def check_socket_access(ctx: Context) -> list[Result]:
    """The socket's mode and group: who besides root may run status/watch/pins."""
    wanted = ctx.config.diagnostics.group if ctx.config is not None else ""
    try:
        st = os.stat(ctx.socket_path)
    except OSError:
        return []
    mode, group = st.st_mode & 0o777, _group_name(st.st_gid)
    detail = f"{ctx.socket_path} mode {mode:04o}, group {group}"
    if mode != 0o660:
        return [Result(WARN, "control socket", detail, "the agent sets 0660 at start: restart it")]
    if wanted and group != wanted:
        return [Result(WARN, "control socket", f"{detail}, not {wanted} (diagnostics.group)",
                       f"the agent's log says why; until then add technicians to group {group}")]
    return [Result(OK, "control socket", f"{detail}: its members may run status, watch and pins")]


def check_serial(ctx: Context) -> list[Result]:
    if ctx.config is None:
        return []
    results = []
    for gps in ctx.config.driver_configs("gps"):
        if getattr(gps, "source", "serial") == "gpsd":
            results.append(_gpsd(gps.gpsd, gps.stale_after_s))
            continue
        port, baud = gps.port, getattr(gps, "baud", 9600)
        if ctx.agent is not None and "gps" in ctx.agent.get("drivers", {}):
            results.append(_serial_through_agent(ctx, port))
            continue
        if ctx.config.simulate:  # the receiver is a pseudo-terminal the running agent makes
            results.append(Result(OK, "serial", "simulated: start the agent to read its receiver"))
            continue
        if not os.path.exists(port):
            results.append(Result(FAIL, "serial", f"{port} does not exist",
                                  "plug the receiver in; on a Pi enable the UART (raspi-config: serial port on, "
                                  "login shell off); or fix gps.port"))
            continue
        user = ctx.service_user()
        if not user_can_open(port, user):
            results.append(Result(FAIL, "serial", f"{port} is not readable and writable by {user} "
                                  f"({_owner_text(port)})", f"usermod -aG {_group_of(port)} {user}"))
            continue
        ok, why = probe_port()(port, baud, SERIAL_TIMEOUT_S)
        results.append(Result(OK if ok else FAIL, "serial", f"{port}: {why}",
                              "check the wiring (receiver TX to Pi RX), its power, and gps.baud"))
    return results


def _gpsd(address: str, stale_after_s: float) -> Result:
    """gpsd answers and relays the receiver: what the agent's gpsd source needs."""
    from drivers.gps import nmea
    from drivers.gps.gpsd_source import GpsdSource

    source = GpsdSource(address, stale_after_s, nmea.new_stats())
    try:
        source.open()
    except OSError as err:
        return Result(FAIL, "gpsd", f"cannot connect to gpsd at {address}: {err.strerror or err}",
                      "systemctl status gpsd (gpsd.socket listens on 127.0.0.1:2947); or fix gps.gpsd")
    try:
        deadline = time.monotonic() + SERIAL_TIMEOUT_S
        fixes = []
        while time.monotonic() < deadline and not fixes:
            fixes = source.read().fixes
    except OSError as err:
        return Result(FAIL, "gpsd", f"gpsd at {address} hung up: {err}", "journalctl -u gpsd")
    finally:
        source.close()
    if not fixes:
        return Result(FAIL, "gpsd", f"gpsd at {address} answers but relays no receiver reports",
                      "check DEVICES in /etc/default/gpsd, the receiver's power and wiring (gpsmon shows it)")
    fix = fixes[-1]
    return Result(OK, "gpsd", f"gpsd at {address} relays {source.device or 'a receiver'}: fix {fix.fix}"
                  + (f", {fix.sats} satellites used" if fix.sats is not None else ""))


def _serial_through_agent(ctx: Context, port: str) -> Result:
    from agent import control
    from agent.errors import UnavailableError

    try:
        gps = control.request(ctx.socket_path, "probe", what="gps", timeout_s=NETWORK_TIMEOUT_S)["gps"]
    except UnavailableError as err:
        return Result(FAIL, "serial", f"{port} is held by the running agent, which did not answer: {err}")
    age = gps.get("last_sentence_age_s")
    detail = (f"{port} (read by the running agent): link {gps.get('link')}, "
              f"last sentence {'never' if age is None else f'{age:.1f} s ago'}, "
              f"{gps.get('sentences_ok', 0)} sentences OK")
    if gps.get("link") == "connected" and gps.get("sentences_ok"):
        return Result(OK, "serial", detail)
    return Result(FAIL, "serial", detail, "check the wiring (receiver TX to Pi RX), its power, and gps.baud")


def check_gpio(ctx: Context) -> list[Result]:
    if ctx.config is None:
        return []
    name = ctx.config.gpio.pin_factory
    # a generator read over Modbus has no GPIO inputs
    inputs = [s for s in _GPIO_SECTIONS
              if any(getattr(c, "source", "gpio") == "gpio" for c in ctx.config.driver_configs(s))]
    if ctx.config.simulate or name == "mock":
        return [Result(OK, "gpio", "gpiozero MockFactory (simulated pins)")]
    if not inputs and not name:
        return [Result(OK, "gpio", "no GPIO inputs configured")]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            factory = make_pin_factory(name)
    except Exception as err:  # noqa: BLE001 - gpiozero raises many kinds; each means "no GPIO"
        return [Result(FAIL, "gpio", f"no gpiozero pin factory{f' {name!r}' if name else ''}: {err}",
                       "on a Pi: apt install python3-lgpio, and put the service user in group gpio")]
    kind = type(factory).__name__
    factory.close()
    if any("Native" in type(w.message).__name__ for w in caught) or kind == "NativeFactory":
        return [Result(WARN, "gpio", f"only gpiozero's {kind} works (no edge timestamps, polls)",
                       "apt install python3-lgpio")]
    return [Result(OK, "gpio", f"{kind} for {', '.join(inputs) or 'configured pins'}")]


def check_door_loops(ctx: Context) -> list[Result]:
    """Each supervised door loop reads a sound band (closed, or open on a double-EOL loop); when not, the
    line names the wire or resistor to check. Read through the running agent (it holds the SPI bus),
    else straight from the ADC."""
    from agent import control
    from agent.errors import UnavailableError

    if ctx.config is None:
        return []
    loops = [(locker.name, locker.door) for locker in ctx.config.driver_configs("locker")
             if hasattr(locker.door, "plan")]
    if not loops:
        return []
    if ctx.agent is not None:
        try:
            rows = control.request(ctx.socket_path, "pins", timeout_s=NETWORK_TIMEOUT_S)["pins"]
        except UnavailableError as err:
            return [Result(WARN, "door loop", f"the running agent did not answer: {err}")]
        raws = {row.get("input"): row.get("raw") for row in rows}
        return [loop_verdict(name, loop, raws.get(f"locker/{name} door")) for name, loop in loops]
    if ctx.config.simulate or ctx.config.gpio.pin_factory == "mock":
        return [Result(OK, "door loop", "simulated: start the agent to read its loops")]
    return [loop_verdict(name, loop, read_adc(ctx.config.gpio.pin_factory, loop)) for name, loop in loops]


def loop_verdict(name: str, loop: Any, raw: int | None) -> Result:
    """What one loop's reading says, and which part to check when it is not sound."""
    where = f"locker {name}: {loop.chip} channel {loop.channel}"
    ohm = {key: f"{getattr(loop, key):g} Ω" for key in ("r_eol_ohm", "r_alarm_ohm", "r_pullup_ohm")}
    if raw is None:
        return Result(FAIL, "door loop", f"{where} cannot be read",
                      "enable SPI (dtparam=spi=on) and check the ADC's wiring to GPIO 8-11 and its 3.3 V")
    plan = loop.plan
    state = plan.states[plan.classify(raw)]
    low, high = plan.expected[plan.states.index(state)]
    detail = f"{where} reads {raw}: {state} (expected {low}-{high})"
    if state == "short":
        return Result(FAIL, "door loop", f"{detail}: the pair is bridged",
                      f"find the short in the cable; r_eol_ohm ({ohm['r_eol_ohm']}) must sit at the door "
                      "contact, not at the Pi")
    if state == "cut":
        return Result(FAIL, "door loop", f"{detail}: open circuit",
                      f"check the cable, and r_eol_ohm ({ohm['r_eol_ohm']}) at the contact; with the door open "
                      f"check r_alarm_ohm ({ohm['r_alarm_ohm']}) across the contact too")
    if state == "open" and loop.eol == "single":
        return Result(WARN, "door loop", f"{detail}: the door is open or the loop is cut (single EOL cannot tell)",
                      f"close the door and run doctor again; then check the cable and r_eol_ohm ({ohm['r_eol_ohm']})")
    if not low <= raw <= high:
        part = f"r_alarm_ohm ({ohm['r_alarm_ohm']}) across the contact" if state == "open" else \
            f"r_eol_ohm ({ohm['r_eol_ohm']})"
        return Result(WARN, "door loop", f"{detail}: outside what its resistors give",
                      f"check {part} and r_pullup_ohm ({ohm['r_pullup_ohm']}), or set door.bands from "
                      "`boxtel pins` readings (docs/deploy.md)")
    return Result(OK, "door loop", detail)


def read_adc(factory_name: str, loop: Any) -> int | None:
    """One raw reading of a loop's ADC channel through gpiozero, or None if it cannot be read."""
    import gpiozero

    try:
        factory = make_pin_factory(factory_name)
        try:
            device = getattr(gpiozero, loop.chip)(channel=loop.channel, port=loop.spi_port,
                                                  device=loop.spi_device, pin_factory=factory)
            try:
                return int(device.raw_value)
            finally:
                device.close()
        finally:
            factory.close()
    except Exception:  # noqa: BLE001 - gpiozero raises many kinds; each means "cannot read"
        return None


def check_broker_name(ctx: Context) -> list[Result]:
    if ctx.config is None:
        return []
    host, port = ctx.config.mqtt.host, ctx.config.mqtt.effective_port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        return [Result(FAIL, "broker name", f"cannot resolve {host}: {err.strerror}",
                       "check mqtt.host, /etc/resolv.conf and the uplink (modem, APN)")]
    ctx.broker_addresses = sorted({info[4][0] for info in infos})
    return [Result(OK, "broker name", f"{host} is {', '.join(ctx.broker_addresses)}")]


def check_broker_tcp(ctx: Context) -> list[Result]:
    if not ctx.broker_addresses:
        return []
    host, port = ctx.config.mqtt.host, ctx.config.mqtt.effective_port
    started = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=NETWORK_TIMEOUT_S).close()
    except OSError as err:
        return [Result(FAIL, "broker tcp", f"cannot connect to {host}:{port}: {_why(err)}",
                       f"is the broker up? a firewall or the APN in the way? is mqtt.port ({port}) right?")]
    ctx.broker_tcp = True
    return [Result(OK, "broker tcp", f"{host}:{port} accepts connections "
                   f"({(time.monotonic() - started) * 1000:.0f} ms)")]


def check_client_certificate(ctx: Context) -> list[Result]:
    """Checked from the file, before any handshake: an expired client certificate is why a broker hangs
    up on us, and the broker does not say so."""
    if ctx.config is None or not ctx.config.mqtt.tls or not ctx.config.mqtt.cert_file:
        return []
    path, box = ctx.config.mqtt.cert_file, ctx.config.box.id
    try:
        decoded = decode_certificate(path)
        not_before, not_after = _cert_time(decoded["notBefore"]), _cert_time(decoded["notAfter"])
    except (ssl.SSLError, OSError, ValueError, KeyError) as err:
        return [Result(FAIL, "client certificate", f"cannot read {path}: {err}", "mqtt.cert_file must be a PEM certificate")]
    return [_validity("client certificate", path, not_before, not_after, f"issue a new certificate for {box}"),
            _identity(path, decoded, box)]


def _identity(path: str, decoded: dict[str, Any], box: str) -> Result:
    """Brokers take the client certificate's name as the client's identity (mosquitto's
    use_identity_as_username, EMQX's peer_cert_as_username): one made for another box gets every
    publish refused, while the handshake and the login look fine."""
    names = certificate_names(decoded)
    shown = ", ".join(f"{name} ({kind})" for kind, name in names) or "no CN or SAN"
    if any(name == box for _, name in names):
        return Result(OK, "client certificate", f"{path} is for {box} (box.id)")
    return Result(FAIL, "client certificate", f"{path} is for {shown}, not for this box {box} (box.id): the broker "
                  f"would refuse its publishes", f"issue a certificate with CN={box} for this box, or fix box.id")


def certificate_names(decoded: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name): the subject's CN, then the subjectAltName entries (DNS, email, URI, IP)."""
    names = [("CN", value) for rdn in decoded.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names + [(f"SAN {kind}", value) for kind, value in decoded.get("subjectAltName", ())]


def check_tls(ctx: Context) -> list[Result]:
    from agent.errors import ConfigError
    from agent.publisher import tls_context

    mqtt = ctx.config.mqtt if ctx.config is not None else None
    if mqtt is None or not mqtt.tls or not ctx.broker_tcp:
        return []
    host, port = mqtt.host, mqtt.effective_port
    try:
        context = tls_context(mqtt, file=ctx.config.file)
    except ConfigError as err:
        return [Result(FAIL, "tls", str(err), "fix the file named")]
    ca = mqtt.ca_file or "the system's CA store"
    try:
        with socket.create_connection((host, port), timeout=NETWORK_TIMEOUT_S) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            version, cert = tls.version(), tls.getpeercert()
    except ssl.SSLCertVerificationError as err:
        return [_verification_failure(err, host, ca)]
    except (ssl.SSLError, OSError) as err:
        from agent.tlswords import handshake_hung_up

        fix = ("set mqtt.port to the broker's TLS listener (ask its admin which port that is)" if handshake_hung_up(err)
               else "is this the broker's TLS port (8883)? does it want a client certificate?")
        return [Result(FAIL, "tls", f"handshake with {host}:{port} failed: {_why(err, tls=True)}", fix)]
    ctx.tls_ok = True
    if mqtt.tls_insecure:
        return [Result(WARN, "tls", f"{version} with certificate verification OFF (mqtt.tls_insecure)",
                       "set mqtt.ca_file to the broker's CA and remove tls_insecure")]
    left = _cert_time(cert["notAfter"]) - time.time()
    detail = f"{version}, broker certificate for {host} signed by {ca}, valid for another {_days(left)}"
    if left < CERT_WARN_DAYS * 86400:
        return [Result(WARN, "tls", detail, "renew the broker's certificate")]
    return [Result(OK, "tls", detail)]


def check_mqtt_login(ctx: Context) -> list[Result]:
    if not ctx.broker_tcp or (ctx.config.mqtt.tls and not ctx.tls_ok):
        return []
    user = ctx.config.username
    if ctx.agent is not None and ctx.agent.get("mqtt_connected"):
        # A second login with the box's id would take over the agent's session (and fire its will).
        return [Result(OK, "mqtt login", f"the running agent is logged in as {user}")]
    if ctx.agent_silent:  # it may well be logged in: not taken over to find out
        return [Result(WARN, "mqtt login", f"not tried: a login as {user} would take the running agent's "
                       "connection over", "restart the agent (systemctl restart boxtel), then run doctor again")]
    from agent.errors import ConfigError

    try:
        refused = mqtt_login(ctx.config)
    except ConfigError as err:
        return [Result(FAIL, "mqtt login", str(err), "fix the file named")]
    if refused:
        return [Result(FAIL, "mqtt login", f"the broker refused {user}: {refused}",
                       "check mqtt.password_file or the client certificate against the broker's password file")]
    return [Result(OK, "mqtt login", f"the broker accepted {user}")]


def check_box_identity(ctx: Context) -> list[Result]:
    """Another client with this box id (a cloned SD card, a copied config) took the agent's connection."""
    if ctx.agent is None or not ctx.agent.get("mqtt_takeovers"):
        return []
    ago = ctx.agent.get("mqtt_takeover_ago_s")
    return [Result(FAIL, "box id", f"{ctx.agent['mqtt_takeover_problem']} ({ctx.agent['mqtt_takeovers']} times, "
                   f"last {ago} s ago)",
                   "give each box its own box.id (and a fresh state dir); `boxtel fleet` shows the box as a conflict")]


def check_clock(ctx: Context) -> list[Result]:
    from agent.clock import iso_ms, kernel_clock_synchronised

    if kernel_clock_synchronised():
        return [Result(OK, "clock", "system clock synchronised (by NTP, or by chrony from GPS)")]
    fed = ctx.config is not None and any(getattr(g, "chrony_socket", "") for g in ctx.config.driver_configs("gps"))
    # A GPS fix alone sets only the agent's own timestamps; TLS, journald and cron read the system clock,
    # which follows GPS only through chrony.
    advice = ("chrony is fed GPS time and has not synchronised the clock yet: see the chrony check" if fed else
              CLOCK_ADVICE)
    if ctx.agent is not None and ctx.agent.get("clock_source") == "gps":
        offset = ctx.agent.get("clock_offset_s")
        off = "" if offset is None else f" ({offset:+.1f} s from GPS)"
        return [Result(WARN, "clock", f"the agent stamps with GPS time, but the system clock is not "
                       f"synchronised{off}: TLS, journald and cron run on it", advice)]
    return [Result(WARN, "clock", f"not synchronised and no GPS time: timestamps use the system clock as it is "
                   f"({iso_ms(time.time())})", advice)]


def check_chrony(ctx: Context) -> list[Result]:
    """[gps] chrony_socket end to end: chrony listens there, the agent's user may write, chrony gets the
    samples and selects GPS."""
    if ctx.config is None:
        return []
    return [_chrony(ctx, gps) for gps in ctx.config.driver_configs("gps") if getattr(gps, "chrony_socket", "")]


def _chrony(ctx: Context, gps: Any) -> Result:
    from drivers.gps import chrony

    path, user = gps.chrony_socket, ctx.service_user()
    line = f"refclock SOCK {path} refid {chrony.REFID} offset 0.1 delay 0.2"
    if not _is_socket(path):
        return Result(FAIL, "chrony", f"nothing listens on {path}",
                      f"add `{line}` to /etc/chrony/conf.d/boxtel-gps.conf and restart chrony (docs/deploy.md, 9.)")
    if not os.access(path, os.W_OK):
        return Result(FAIL, "chrony", f"{path} is not writable by {user} ({_owner_text(path)})",
                      "chrony makes it root's: the chrony.service drop-in of docs/deploy.md, 9. hands it to "
                      "group boxtel")
    state, reach, error = chrony.query(gps.chrony_command_socket)
    health = (ctx.agent or {}).get("health") or {}
    sent = health.get("gps_chrony_samples")
    if state is None:
        return Result(WARN, "chrony", f"{path} is ready; chrony could not be asked whether it uses GPS ({error})",
                      "chronyc sources: the GPS line should show Reach above 0 and '*'")
    if state == chrony.NOT_CONFIGURED:
        return Result(FAIL, "chrony", f"chrony lists no refclock with refid {chrony.REFID}",
                      f"the chrony.conf line must read `{line}`; restart chrony")
    if state == chrony.UNREACHABLE:
        if sent:
            return Result(FAIL, "chrony", f"the agent sent {sent} samples to {path}, chrony used none (reach 0)",
                          "the refclock SOCK line must name that very socket; and chrony drops samples of another "
                          "size: is it built for the same 32/64-bit time_t as this Python?")
        return Result(WARN, "chrony", "chrony has the GPS refclock but no samples yet",
                      "the agent sends one per trusted fix: is it running, with a fix (boxtel status)?")
    if state == chrony.NOT_SELECTED:
        return Result(WARN, "chrony", f"chrony reaches GPS (reach {reach:o}) but does not use it",
                      "chronyc sources -v: another source is preferred, or GPS disagrees with it")
    return Result(OK, "chrony", f"chrony {state} GPS (reach {reach:o})"
                  + (f"; {sent} samples from the agent" if sent else ""))


def check_state_dir(ctx: Context) -> list[Result]:
    if ctx.config is None:
        return []
    path = ctx.config.state_dir
    if not path.exists():
        parent = next(p for p in path.parents if p.exists())
        if os.access(parent, os.W_OK):
            return [Result(WARN, "state dir", f"{path} does not exist yet (the agent creates it at start)")]
        return [Result(FAIL, "state dir", f"{path} does not exist and {parent} is not writable",
                       f"mkdir -p {path} and chown it to the service user (the unit's StateDirectory= does)")]
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        return [Result(FAIL, "state dir", f"{path} is not writable: {err.strerror}",
                       f"chown -R {ctx.service_user()} {path}; \"Read-only file system\" means the SD card "
                       "was remounted read-only after errors: check or replace it")]
    results = [Result(OK, "state dir", f"{path} is writable")]
    from agent.outbox import volatile_reason

    volatile = volatile_reason(path)
    if volatile is not None:
        results.append(Result(WARN, "state dir", volatile,
                              "docs/deploy.md, \"SD cards and power loss\""))
    import psutil

    free_mb = psutil.disk_usage(str(path)).free / 2**20
    max_mb = ctx.config.outbox.max_mb
    if free_mb < MIN_FREE_MB:
        results.append(Result(FAIL, "state disk", f"{free_mb:.0f} MB free", "free space on the SD card"))
    elif free_mb < max_mb:
        results.append(Result(WARN, "state disk", f"{free_mb:.0f} MB free, less than outbox.max_mb ({max_mb:g} MB)",
                              "free space, or lower outbox.max_mb"))
    else:
        results.append(Result(OK, "state disk", f"{free_mb:.0f} MB free"))
    return results


def check_power(ctx: Context) -> list[Result]:
    power = read_power(ctx.config)
    fix = "use a 5.1 V / 3 A supply with a short, thick cable; check the generator under load"
    if power["undervoltage"] == "active":
        return [Result(FAIL, "power", "under-voltage now", fix)]
    if power["power_trouble_since_boot"] == "yes":
        return [Result(WARN, "power", "under-voltage or throttling since boot", fix)]
    if power["undervoltage"] == "unavailable":
        return [Result(WARN, "power", "cannot read the Pi's under-voltage flags (not a Raspberry Pi?)")]
    if power["power_trouble_since_boot"] == "unavailable":
        return [Result(OK, "power", "no under-voltage now (history since boot not readable)")]
    return [Result(OK, "power", "no under-voltage or throttling since boot")]


def check_systemd(ctx: Context) -> list[Result]:
    fix = f"install systemd/{SERVICE} (docs/deploy.md) and start it with systemctl"
    if ctx.agent is not None:
        service = ctx.agent.get("service", {})
        if not service.get("systemd"):
            return [Result(WARN, "systemd", "the running agent was started by hand, not by systemd",
                           "stop it and `systemctl start boxtel`")]
        if not service.get("watchdog_s"):
            return [Result(WARN, "systemd", "running without the watchdog", f"set WatchdogSec= in {SERVICE}")]
        return [Result(OK, "systemd", f"running under systemd, watchdog {service['watchdog_s']:g} s")]
    shown = _systemctl_show("LoadState", "ActiveState", "WatchdogUSec")
    if not shown:
        return [Result(WARN, "systemd", "cannot ask systemd (no systemctl, or systemd is not running)")]
    if shown.get("LoadState") != "loaded":
        return [Result(WARN, "systemd", f"{SERVICE} is not installed", fix)]
    if shown.get("ActiveState") != "active":
        return [Result(WARN, "systemd", f"{SERVICE} is {shown.get('ActiveState')}",
                       "systemctl enable --now boxtel; `journalctl -u boxtel -e` shows why")]
    if shown.get("WatchdogUSec", "0") in ("0", "infinity", ""):
        return [Result(WARN, "systemd", "running without the watchdog", f"set WatchdogSec= in {SERVICE}")]
    return [Result(OK, "systemd", f"{SERVICE} active, watchdog {shown['WatchdogUSec']}")]


CHECKS: list[Callable[[Context], list[Result]]] = [
    check_config,
    check_agent,
    check_serial,
    check_gpio,
    check_door_loops,
    check_broker_name,
    check_broker_tcp,
    check_client_certificate,
    check_tls,
    check_mqtt_login,
    check_box_identity,
    check_clock,
    check_chrony,
    check_state_dir,
    check_power,
    check_systemd,
]


# -- helpers -----------------------------------------------------------------------------------------
def _is_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def probe_port() -> Callable[[str, Any, float], tuple[bool, str]]:
    """The GPS driver's probe when it is installed, else a small one of the same signature."""
    try:
        from drivers.gps.serial_source import probe_port as gps_probe_port
    except ImportError:
        return fallback_probe_port
    return gps_probe_port


def fallback_probe_port(port: str, baud: Any, timeout_s: float) -> tuple[bool, str]:
    """True once a line with a valid NMEA checksum arrives within `timeout_s`."""
    import serial

    rates = [9600, 4800, 38400, 115200] if baud == "auto" else [int(baud)]
    read = 0
    for rate in rates:
        deadline = time.monotonic() + timeout_s / len(rates)
        try:
            with serial.Serial(port, rate, timeout=0.2) as link:
                while time.monotonic() < deadline:
                    line = link.readline()
                    read += len(line)
                    if nmea_checksum_ok(line):
                        return True, f"valid NMEA at {rate} baud ({line[:6].decode()} ...)"
        except (serial.SerialException, OSError) as err:
            return False, f"cannot open: {err}"
    return False, f"no valid NMEA within {timeout_s:g} s at {'/'.join(map(str, rates))} baud ({read} bytes read)"


def nmea_checksum_ok(line: bytes) -> bool:
    text = line.strip()
    if not text.startswith((b"$", b"!")) or len(text) < 4 or text[-3:-2] != b"*":
        return False
    body, wanted = text[1:-3], text[-2:]
    checksum = 0
    for byte in body:
        checksum ^= byte
    return f"{checksum:02X}".encode() == wanted.upper()


def make_pin_factory(name: str) -> Any:
    """The factory gpiozero would use: by name (its entry points), else its own default choice."""
    from importlib.metadata import entry_points

    from gpiozero import Device

    if not name:
        return Device._default_pin_factory()
    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name == name:
            return ep.load()()
    raise LookupError(f"gpiozero has no pin factory {name!r}")


def decode_certificate(path: str) -> dict[str, Any]:
    """subject, subjectAltName, notBefore, notAfter, ... `_test_decode_cert` is CPython's own PEM reader
    (used by its test suite since 2.7); the stdlib has no public one and `cryptography` is not a dependency."""
    return ssl._ssl._test_decode_cert(path)


def _cert_time(text: str) -> float:
    return float(ssl.cert_time_to_seconds(text))


def _validity(check: str, path: str, not_before: float, not_after: float, fix: str) -> Result:
    now = time.time()
    if now < not_before:
        return Result(FAIL, check, f"the system clock ({_date(now)}) is before {path} becomes valid "
                      f"({_date(not_before)})", f"set the clock: {CLOCK_ADVICE}: TLS cannot work until then")
    if now > not_after:
        return Result(FAIL, check, f"{path} expired on {_date(not_after)} ({_days(now - not_after)} ago)", fix)
    left = not_after - now
    if left < CERT_WARN_DAYS * 86400:
        return Result(WARN, check, f"{path} expires in {_days(left)} ({_date(not_after)})", fix)
    return Result(OK, check, f"{path} valid until {_date(not_after)} ({_days(left)} left)")


def _verification_failure(err: ssl.SSLCertVerificationError, host: str, ca: str) -> Result:
    if err.verify_code == _HOSTNAME_MISMATCH:
        return Result(FAIL, "tls", f"the broker's certificate is not for {host} ({err.verify_message})",
                      "mqtt.host must be a name (or IP) the broker's certificate lists")
    if err.verify_code == _CERT_NOT_YET_VALID:
        return Result(FAIL, "tls", "the broker's certificate is not valid yet: the system clock is behind",
                      f"set the clock: {CLOCK_ADVICE}")
    if err.verify_code == _CERT_EXPIRED:
        return Result(FAIL, "tls", "the broker's certificate has expired (or the system clock is ahead)",
                      "check the date, then renew the broker's certificate")
    return Result(FAIL, "tls", f"the broker's certificate is not signed by {ca} ({err.verify_message})",
                  "mqtt.ca_file must be the CA that signed the broker's certificate")


def mqtt_login(config: Any) -> str | None:
    """Log in once with the box's credentials and leave; never publishes. None when accepted, else why."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.publisher import tls_context

    settings = config.mqtt
    v5 = settings.protocol == "5"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.box.id,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, reconnect_on_failure=False)
    client.username_pw_set(config.username, config.mqtt_password())
    if settings.tls:
        client.tls_set_context(tls_context(settings, file=config.file))
        if settings.tls_insecure:
            client.tls_insecure_set(True)
    answered = threading.Event()
    outcome: list[str | None] = []

    def on_connect(client, userdata, flags, reason_code, properties):
        outcome.append(str(reason_code) if reason_code.is_failure else None)
        answered.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not answered.is_set():
            outcome.append(f"disconnected before answering ({reason_code})")
            answered.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(settings.host, settings.effective_port, keepalive=10)
    except (OSError, ssl.SSLError) as err:
        return _why(err, tls=settings.tls)
    client.loop_start()
    try:
        if not answered.wait(NETWORK_TIMEOUT_S):
            return f"no answer within {NETWORK_TIMEOUT_S:g} s"
        return outcome[0]
    finally:
        client.disconnect()
        client.loop_stop()


def read_power(config: Any) -> dict[str, Any]:
    """The host driver's own power reading (hwmon rpi_volt, firmware get_throttled), not a copy of it."""
    from agent.bus import Bus
    from agent.clock import Clock
    from drivers.base import DriverContext
    from drivers.host import HostConfig, HostDriver

    hosts = config.driver_configs("host") if config is not None else []
    host_config = hosts[0] if hosts else HostConfig()
    state_dir = config.state_dir if config is not None else Path(tempfile.gettempdir())
    ctx = DriverContext("host", bus=Bus(), clock=Clock(), state_dir=state_dir, simulate=False)
    return HostDriver(host_config, ctx).read_power()


def user_can_open(path: str, user: str) -> bool:
    """Whether `user` may open `path` read-write (pyserial opens a port read-write), by its mode bits."""
    try:
        account = pwd.getpwnam(user)
        st = os.stat(path)
    except (KeyError, OSError):
        return os.access(path, os.R_OK | os.W_OK)
    if account.pw_uid == 0:
        return True
    groups = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    if st.st_uid == account.pw_uid:
        return st.st_mode & 0o600 == 0o600
    if st.st_gid in groups:
        return st.st_mode & 0o060 == 0o060
    return st.st_mode & 0o006 == 0o006


def _owner_text(path: str) -> str:
    st = os.stat(path)
    return f"mode {st.st_mode & 0o777:04o}, owner {_user_name(st.st_uid)}, group {_group_of(path)}"


def _group_of(path: str) -> str:
    return _group_name(os.stat(path).st_gid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _systemctl_show(*properties: str) -> dict[str, str]:
    """Properties of the unit, or {} when systemd cannot be asked."""
    try:
        done = subprocess.run(
            ["systemctl", "show", SERVICE, *(f"--property={p}" for p in properties)],
            capture_output=True, text=True, timeout=NETWORK_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if done.returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def _days(seconds: float) -> str:
    days = int(seconds // 86400)
    return f"{days} day{'' if days == 1 else 's'}"


def _date(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _why(err: BaseException, *, tls: bool = False) -> str:
    from agent.tlswords import describe

    return describe(err, tls=tls)
