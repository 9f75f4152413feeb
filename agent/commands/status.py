"""`boxtel status`: what the running agent sees, one screen grouped by subsystem, with OK / WARN / FAIL
and the reason for each mark that is not OK. Exit 69 when no agent answers on the control socket."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

HELP = "show what the running agent sees, with OK/WARN/FAIL per subsystem (69: no agent running)"

OK, WARN, FAIL = "OK", "WARN", "FAIL"
_COLOURS = {OK: "\x1b[32m", WARN: "\x1b[33m", FAIL: "\x1b[31;1m"}
# Host figures worth a warning (a Pi throttles at 80-85 C; a full SD card stops the outbox).
_HOT_C = 80.0
_DISK_FULL_PCT = 90.0
_MEMORY_FULL_PCT = 90.0


@dataclass(frozen=True)
class Mark:
    subsystem: str
    mark: str
    detail: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="the agent's snapshot and the marks as JSON, for scripts")


def run(args: argparse.Namespace) -> int:
    from agent import control

    snapshot = control.request(control.socket_path(args.config), "status",
                               state_dir=control.state_dir_path(args.config))["status"]
    marks = assess(snapshot)
    if args.json:
        print(json.dumps({**snapshot, "checks": [asdict(m) for m in marks]}, indent=2, default=str))
    else:
        print(render(snapshot, marks, colour=sys.stdout.isatty()))
    return 0


def assess(snap: dict[str, Any]) -> list[Mark]:
    """Marks for every subsystem, in the order a technician reads them."""
    marks = [_box(snap), _service(snap), *_mqtt(snap), _link(snap), _outbox(snap), _clock(snap)]
    for name, status in snap.get("drivers", {}).items():
        marks.append(_driver(name, status))
    return marks


def render(snap: dict[str, Any], marks: list[Mark], *, colour: bool = False) -> str:
    width = max(len(m.subsystem) for m in marks)
    lines = [f"boxtel {snap.get('box')} — agent {snap.get('version')}, pid {snap.get('service', {}).get('pid')}"]
    for m in marks:
        shown = f"{_COLOURS[m.mark]}{m.mark:<4}\x1b[0m" if colour else f"{m.mark:<4}"
        lines.append(f"  {shown}  {m.subsystem:<{width}}  {m.detail}")
    return "\n".join(lines)


# -- one function per subsystem --------------------------------------------------------------------
def _box(snap: dict[str, Any]) -> Mark:
    where = f" at {snap['site']}" if snap.get("site") else ""
    simulated = " · simulated hardware" if snap.get("simulate") else ""
    return Mark("box", OK, f"{snap.get('box')}{where} · boxtel {snap.get('version')} · "
                f"up {duration(snap.get('uptime_s'))}{simulated}")


def _service(snap: dict[str, Any]) -> Mark:
    service = snap.get("service", {})
    if not service.get("systemd"):
        return Mark("service", WARN, "not running under systemd (started by hand?): nothing restarts it if it dies")
    if not service.get("watchdog_s"):
        return Mark("service", WARN, "under systemd without the watchdog (WatchdogSec=): a hung agent is not restarted")
    return Mark("service", OK, f"systemd, watchdog {service['watchdog_s']:g} s")


def _mqtt(snap: dict[str, Any]) -> list[Mark]:
    broker = snap.get("mqtt_broker", "the broker")
    if snap.get("mqtt_connected"):
        marks = [Mark("mqtt", OK, f"connected to {broker} for {duration(snap.get('mqtt_connected_s'))} "
                      f"(session {snap.get('mqtt_session')}, {snap.get('reconnects', 0)} reconnects)")]
    else:
        why = snap.get("mqtt_last_error") or "no connection yet"
        marks = [Mark("mqtt", FAIL, f"not connected to {broker}: {why}")]
    if snap.get("mqtt_takeovers"):
        marks.append(Mark("mqtt", FAIL, f"{snap['mqtt_takeover_problem']} ({snap['mqtt_takeovers']} times, last "
                          f"{duration(snap.get('mqtt_takeover_ago_s'))} ago; each box needs its own box.id)"))
    if snap.get("refused_pending"):  # cleared once they are delivered (publish_errors only grows)
        marks.append(Mark("mqtt", WARN, f"the broker refused {snap['refused_pending']} publishes, kept and "
                          f"retried (ACL?): {snap.get('last_publish_error')}"))
    return marks


def _link(snap: dict[str, Any]) -> Mark:
    """What the link costs: the month, the budget, and where the last hour's bytes went, per topic."""
    health = snap.get("health", {})
    month = f"{health.get('link_month_mb', 0):.2f} MB this month"
    projected = health.get("link_month_projected_mb")
    if projected is not None:
        month += f" (on course for {projected:.1f} MB)"
    topics = snap.get("link_topics_last_hour_b") or {}
    hour = ", ".join(f"{topic} {size / 1e3:.1f} kB" for topic, size in list(topics.items())[:8]) or "nothing"
    detail = f"{month}; last hour by topic: {hour}"
    budget = health.get("link_budget")
    if budget == "saving":
        return Mark("link", WARN, f"over its data budget, saving (step {health.get('link_budget_step')} of 3; "
                    f"events and alarms still go at once): {detail}")
    return Mark("link", OK, detail + ("; within its data budget" if budget == "ok" else ""))


def _outbox(snap: dict[str, Any]) -> Mark:
    health = snap.get("health", {})
    depth = snap.get("outbox_depth", 0)
    parts = [f"{depth} waiting", f"last seq {snap.get('last_seq')}"]
    if health.get("outbox_oldest_s"):
        parts.append(f"oldest {duration(health['outbox_oldest_s'])}")
    if health.get("outbox_bytes") is not None:
        parts.append(f"{health['outbox_bytes'] / 2**20:.1f} MB on disk")
    figures = ", ".join(parts)
    if health.get("dropped"):
        return Mark("outbox", WARN, f"{health['dropped']} messages dropped because the outbox was full ({figures})")
    if depth and not snap.get("mqtt_connected"):
        return Mark("outbox", WARN, f"holding messages until the broker is back ({figures})")
    return Mark("outbox", OK, figures)


def _clock(snap: dict[str, Any]) -> Mark:
    source, offset = snap.get("clock_source"), snap.get("clock_offset_s")
    if source == "ntp":
        return Mark("clock", OK, "synchronised (NTP)")
    if source == "gps":
        off = "" if offset is None else f"; system clock {offset:+.1f} s from GPS"
        return Mark("clock", OK, f"from GPS time{off}")
    return Mark("clock", WARN, "not synchronised (no NTP, no GPS time yet): timestamps may be wrong")


def _driver(name: str, status: dict[str, Any]) -> Mark:
    values = status.get("values")
    alarms = status.get("alarms") or {}
    serious = sorted(a for a, severity in alarms.items() if severity == "alarm")
    if serious:
        return Mark(name, FAIL, "alarm: " + ", ".join(serious))
    link = status.get("link")
    if link is not None and link != "connected":
        return Mark(name, FAIL, f"link {link}" + (f": {status['last_error']}" if status.get("last_error") else ""))
    problems = [f"warning: {a}" for a in sorted(alarms)]
    if status.get("fix") == "none":  # a GPS that talks but has no position yet (sky view, antenna)
        problems.append("no fix")
    if name == "host" and values:
        problems += _host_problems(values)
    errors = sum((status.get("errors") or {}).values())
    if errors:
        problems.append(f"{errors} errors, last: {status.get('last_error')}")
    if values is None:
        problems.append("no reading yet")
    if problems:
        worst = FAIL if name == "host" and values and values.get("undervoltage") == "active" else WARN
        return Mark(name, worst, "; ".join(problems))
    return Mark(name, OK, host_summary(values) if name == "host" else summary(values))


def _host_problems(values: dict[str, Any]) -> list[str]:
    problems = []
    if values.get("undervoltage") == "active":
        problems.append("under-voltage now: the supply sags (generator load? cable?)")
    elif values.get("power_trouble_since_boot") == "yes":
        problems.append("under-voltage or throttling since boot")
    if values.get("undervoltage") == "unavailable":
        problems.append("cannot read the power flags (not a Raspberry Pi?)")
    if (values.get("temperature_c") or 0) >= _HOT_C:
        problems.append(f"hot: {values['temperature_c']} C")
    if (values.get("disk_used_pct") or 0) >= _DISK_FULL_PCT:
        problems.append(f"state disk {values['disk_used_pct']} % full")
    if (values.get("memory_pct") or 0) >= _MEMORY_FULL_PCT:
        problems.append(f"memory {values['memory_pct']} % used")
    return problems


def host_summary(values: dict[str, Any]) -> str:
    parts = [
        ("cpu {} %", values.get("cpu_pct")),
        ("load {}", values.get("load_1m")),
        ("memory {} %", values.get("memory_pct")),
        ("{} C", values.get("temperature_c")),
        ("state disk {} % used", values.get("disk_used_pct")),
        ("power {}", values.get("undervoltage")),
    ]
    return ", ".join(text.format(_short(value)) for text, value in parts if value is not None) or "running"


def summary(values: dict[str, Any] | None, limit: int = 6) -> str:
    shown = [(k, v) for k, v in (values or {}).items() if k != "alarms" and v is not None][:limit]
    return " ".join(f"{k}={_short(v)}" for k, v in shown) or "running"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
