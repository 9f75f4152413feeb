"""The fleet console behind `boxtel fleet`: a live, read-only view of every box on the broker.

Subscribes to `<prefix>/+/#` and never publishes. paho's network thread feeds `agent.fleet.model.FleetModel`
(parse and account, nothing more); the main thread renders at most once per refresh interval, so the
cost of drawing does not grow with the message rate. On a terminal: a table redrawn in place, boxes with
alarms first. `--json`: one JSON object per line for each box whose state changed, each naming its `box`.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import ssl
import threading
import time
from datetime import datetime
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import UnavailableError
from agent.fleet.broker import BrokerTarget, BufferedClient
from agent.fleet.model import SETTLE_S, BoxView, FleetModel

_CONNECT_TIMEOUT_S = 10.0
_KEEPALIVE_S = 30
# Fields that change with every message; a row is re-printed for a real change, not for these.
_VOLATILE = ("last_seen", "seq_last", "seq_received")


class FleetConsole:
    """The subscription: the network thread feeds the model under a lock, nothing else."""

    def __init__(self, target: BrokerTarget, *, qos: int = 1, settle_s: float = SETTLE_S):
        self.target = target
        self.qos = qos
        self.model = FleetModel(target.prefix, settle_s=settle_s)
        self.lock = threading.Lock()
        self.connected = False
        self.disconnects = 0
        self.internal_errors = 0
        self.problem: str | None = None
        self._ready = threading.Event()
        self._refusal: str | None = None
        self.live_messages = 0  # not retained: sent while we listened
        self.first_mono: float | None = None  # of the first and the last live message
        self.last_mono: float | None = None
        # MQTT 3.1.1: the console only subscribes, and a refused subscription shows in 3.1.1's SUBACK
        # too; paho parses a v5 property block for every incoming message, a third of its cost per
        # message (bench/fleet.py). The boxes' own publishes stay MQTT 5.
        self.client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=f"boxtel-fleet-{socket.gethostname()}-{os.getpid()}"[:64],
            protocol=mqtt.MQTTv311,
            clean_session=True,
            reconnect_on_failure=False,
        )
        target.configure(self.client)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._network, name="fleet-mqtt", daemon=True)

    def start(self) -> None:
        """Connect and subscribe, or raise UnavailableError (exit 69) naming the broker and why."""
        try:
            self.client.connect(self.target.host, self.target.port, keepalive=_KEEPALIVE_S)
        except ssl.SSLCertVerificationError as err:
            raise UnavailableError(f"{self.target.url}: TLS certificate not trusted ({err.verify_message})") from None
        except (OSError, ssl.SSLError) as err:
            raise UnavailableError(f"cannot connect to {self.target.url}: {err.strerror or err}") from None
        self._thread.start()
        if not self._ready.wait(_CONNECT_TIMEOUT_S) or self._refusal:
            self.stop()
            why = self._refusal or f"no answer within {_CONNECT_TIMEOUT_S:g} s"
            raise UnavailableError(f"{self.target.url}: {why}")

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)
        else:
            self.client.disconnect()

    def _network(self) -> None:
        """paho's external loop over a BufferedClient: drain the read-ahead before waiting in select(),
        flush the collected writes once per round; no wake-up socket pair (paho's threaded loop writes
        to one for every PUBACK)."""
        client = self.client
        next_misc = time.monotonic() + 1.0
        delay_s = 1.0
        while not self._stopping.is_set():
            sock = client.socket()
            if sock is None:
                if self._stopping.wait(delay_s):
                    break
                delay_s = min(delay_s * 2, 30.0)
                try:
                    client.reconnect()
                    delay_s = 1.0
                except (OSError, ssl.SSLError) as err:
                    self.problem = f"cannot reconnect to {self.target.url}: {getattr(err, 'strerror', None) or err}"
                continue
            try:
                if client.read_ahead or self._wait_readable(sock):
                    client.loop_read()
                    while client.read_ahead and client.socket() is not None:
                        client.loop_read()
            except Exception as err:  # noqa: BLE001 - a bug must show, not silently stop the console
                self.internal_errors += 1
                self.problem = f"internal error ({self.internal_errors} so far): {type(err).__name__}: {err}"
            now = time.monotonic()
            if now >= next_misc and client.socket() is not None:
                client.loop_misc()  # keep-alive pings
                next_misc = now + 1.0
            client.flush_writes()  # the PUBACKs of this round in one send()
        if client.socket() is not None:
            client.flush_writes()
            client.write_behind = False  # paho closes the socket right after writing DISCONNECT
            client.disconnect()

    def _wait_readable(self, sock: Any) -> bool:
        """Wait (briefly, so stop and keep-alive stay responsive) for data; write what is pending."""
        wanted = [sock] if self.client.write_pending or self.client.want_write() else []
        readable, writable, _ = select.select([sock], wanted, [], 0.5)
        if writable:
            self.client.loop_write()
            self.client.flush_writes()
        return bool(readable)

    # paho's callbacks, on the network thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = f"broker refused the connection: {reason_code}"
            self._ready.set()
            return
        client.subscribe(f"{self.target.prefix}/+/#", qos=self.qos)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            self._refusal = f"broker refused the subscription to {self.target.prefix}/+/#: {refused[0]}"
        else:
            self.connected = True
            self.problem = None
        self._ready.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected:
            self.disconnects += 1
            self.problem = f"connection to {self.target.url} lost ({reason_code}); reconnecting"
        self.connected = False
        with self.lock:
            self.model.resync()

    def _on_message(self, client, userdata, message) -> None:
        now = time.monotonic()
        retained = message.retain
        with self.lock:
            self.model.ingest(message.topic, message.payload, retained, now=now)
        if not retained:
            self.live_messages += 1
            if self.first_mono is None:
                self.first_mono = now
            self.last_mono = now

    def summary_line(self) -> str:
        with self.lock:
            self.model.settle()
            summary = self.model.summary()
        span = (self.last_mono or 0.0) - (self.first_mono or 0.0)
        rate = f", {self.live_messages / span:.0f} msg/s from the first to the last" if span > 0 else ""
        return (f"boxtel fleet: {summary['messages']} messages from {summary['boxes']} boxes "
                f"({self.live_messages} live{rate}); seq lost {summary['seq_lost']}, pending {summary['seq_pending']}")


# -- --json ------------------------------------------------------------------------------------------
def run_json(console: FleetConsole, stop: threading.Event, for_s: float | None, flush_s: float,
              out: TextIO) -> None:
    deadline = None if for_s is None else time.monotonic() + for_s
    printed: dict[str, dict[str, Any]] = {}
    while True:
        finished = stop.wait(_wait_s(flush_s, deadline))
        with console.lock:
            console.model.settle()
            rows = [view.row() for view in console.model.take_changed()]
        lines = []
        for row in rows:
            stable = {k: v for k, v in row.items() if k not in _VOLATILE}
            if printed.get(row["box"]) != stable:
                printed[row["box"]] = stable
                lines.append(json.dumps(row, separators=(",", ":")))
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()
        if finished or (deadline is not None and time.monotonic() >= deadline):
            return


# -- the table ---------------------------------------------------------------------------------------
_COLUMNS = ("BOX", "SITE", "STATUS", "SEEN", "GPS", "GENERATOR", "WATER", "DOORS", "ALARMS", "OUTBOX",
            "CLOCK", "SEQ LOST/PEND")


def run_table(console: FleetConsole, stop: threading.Event, for_s: float | None, refresh_s: float,
               out: TextIO) -> None:
    deadline = None if for_s is None else time.monotonic() + for_s
    tty = out.isatty()
    last_count, last_mono = 0, time.monotonic()
    while True:
        finished = stop.wait(_wait_s(refresh_s, deadline))
        now_mono, now_wall = time.monotonic(), time.time()
        with console.lock:
            console.model.settle()
            console.model.dirty.clear()
            views = console.model.sorted_views()
            summary = console.model.summary()
            cells = [_cells(view, now_wall) for view in views]
        rate = (summary["messages"] - last_count) / max(now_mono - last_mono, 1e-6)
        last_count, last_mono = summary["messages"], now_mono
        header = (f"{console.target.url}  boxes {summary['boxes']}  online {summary['online']}  "
                  f"offline {summary['offline']}  with alarms {summary['with_alarms']}  "
                  f"lost {summary['seq_lost']}  pending {summary['seq_pending']}  {rate:,.0f} msg/s")
        if console.problem:
            header += f"\n!! {console.problem}"
        if tty:  # what fits the terminal, without wrapping
            size = shutil.get_terminal_size()
            limit = max(1, size.lines - header.count("\n") - 4)
            text = "\n".join(line[:size.columns] for line in _format_table(header, cells, limit).splitlines())
        else:
            text = _format_table(header, cells, None)
        out.write(("\x1b[H\x1b[2J" if tty else "\n") + text + "\n")
        out.flush()
        if finished or (deadline is not None and time.monotonic() >= deadline):
            return


def _format_table(header: str, cells: list[tuple[str, ...]], limit: int | None) -> str:
    shown = cells if limit is None else cells[:limit]
    widths = [len(c) for c in _COLUMNS]
    for row in shown:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [header, "  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in shown]
    if len(shown) < len(cells):
        lines.append(f"... {len(cells) - len(shown)} more (boxes with alarms and offline ones come first)")
    return "\n".join(lines)


def _cells(view: BoxView, now: float) -> tuple[str, ...]:
    status = "?" if view.state is None else view.state.upper() if view.state == "offline" else view.state
    if view.id_conflicts:
        status = f"ID CONFLICT ({view.id_conflicts}) {status}"  # two boxes take turns with this box id
    if view.since:
        status += " " + _age(_epoch(view.since), now)
    seen = "-" if view.last_seen is None else _age(view.last_seen, now)
    return (
        view.box, view.site or "", status, seen, _gps(view.gps), _generator(view.generator),
        _water(view.water), _doors(view.doors), ",".join(view.alarms),
        _outbox(view.outbox_depth, view.dropped or 0), view.clock_source or "",
        f"{view.seq_lost}/{len(view.seq.pending)}",
    )


def _gps(gps: dict | None) -> str:
    if not gps:
        return ""
    fix = gps.get("fix") or "?"
    lat, lon = gps.get("lat"), gps.get("lon")
    if fix == "none" or not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return "no fix"
    text = f"{fix} {lat:.5f},{lon:.5f}"
    home = gps.get("home_distance_m")
    if isinstance(home, int | float):
        text += f" {home:.0f}m"
    return text


def _generator(gen: dict | None) -> str:
    if not gen:
        return ""
    text = "FAULT" if gen.get("fault") else "run" if gen.get("running") else "off"
    fuel = gen.get("fuel_pct")
    return f"{text} {fuel:.0f}%" if isinstance(fuel, int | float) else text


def _water(water: dict | None) -> str:
    if not water:
        return ""
    tank = water.get("tank_pct")
    text = f"{tank:.0f}%" if isinstance(tank, int | float) else str(water.get("tank_level", ""))
    return text + (" LEAK" if water.get("leak") else "")


def _outbox(depth: int | None, dropped: int) -> str:
    """Pending messages, and how many the box has dropped from a full outbox (its own counter)."""
    text = "" if depth is None else str(depth)
    return f"{text} ({dropped} dropped)" if dropped else text


def _doors(doors: dict | None) -> str:
    if not doors:
        return ""
    opened = [name for name, door in sorted(doors.items()) if door.get("door") == "open"]
    return "open: " + ",".join(opened) if opened else f"{len(doors)} closed"


def _epoch(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _age(then: float | None, now: float) -> str:
    if then is None:
        return ""
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _wait_s(interval_s: float, deadline: float | None) -> float:
    if deadline is None:
        return interval_s
    return max(0.0, min(interval_s, deadline - time.monotonic()))
