"""Many simulated boxes in one process, each its own MQTT client, to load-test a central broker,
its dashboards and `boxtel fleet`.

Each box speaks the real contract: client id = box id, birth and last will on `status` with a growing
`session`, retained state topics, `events`, `history/<stream>` replay after an outage, a `seq` per box
and the agreed payload fields. Its scenario is drawn from a seeded random generator by its index:
parked or moving (a `container_moved` alarm past its geofence), generator cycles with fuel running low,
door openings (some left open too long), a rare leak, clock sources, some boxes dropping off the
network (the broker publishes their will) and rejoining, some losing the odd `seq`.

A handful of worker threads drive all clients with paho's external loop (`loop_read`, `loop_write`,
`loop_misc` on an epoll selector): a thread per client would not scale to thousands, and `select()`
stops at 1024 descriptors. Each worker owns its boxes outright -- paho clients are not thread-safe --
so other threads reach a box only through `FleetSim.call()`, which queues the work to its worker.
"""

from __future__ import annotations

import heapq
import json
import math
import queue
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent import __version__
from agent.fleet.broker import BrokerTarget, BufferedClient
from agent.fleet.model import iso_utc

SITES = ("Kandahar North", "Gao East", "Bunia", "Bor", "Mopti", "Goma Lake", "Kidal", "Malakal")
_BACKLOG_MAX = 200  # messages a box keeps while offline before it drops (and counts) the oldest
_MISC_INTERVAL_S = 1.0  # keep-alive pings and rejoins
_EARTH_M_PER_DEG = 111_320.0
# As the drivers raise them: these are warnings, every other alarm has severity "alarm".
WARNING_ALARMS = frozenset({"fuel_low", "tank_low", "tank_overflow", "undervoltage"})
FUEL_LOW_PCT = 15.0
TANK_LOW_PCT = 15.0
DOOR_OPEN_TOO_LONG_S = 60.0


class FleetSim:
    def __init__(self, target: BrokerTarget, boxes: int, *, rate: float = 0.2, seed: int = 1,
                 id_prefix: str = "sim", scenarios: bool = True, workers: int | None = None,
                 keepalive_s: int = 60, protocol: str = "5"):
        """`rate`: messages per second per box. `scenarios=False`: only periodic readings, no random
        events, outages or gaps (the tests then act through `call()`)."""
        self.target = target
        self.rate = rate
        self.scenarios = scenarios
        self.keepalive_s = keepalive_s
        self.protocol = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        self.boxes = [SimBox(self, i, random.Random(seed * 1_000_003 + i), f"{id_prefix}-{i + 1:04d}")
                      for i in range(boxes)]
        self.by_id = {box.id: box for box in self.boxes}
        count = workers or max(1, min(4, math.ceil(boxes / 500)))
        self.workers = [_Worker(self, self.boxes[i::count], i) for i in range(count)]
        self.stopping = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Every connected box says a clean `offline` and disconnects."""
        self.stopping.set()
        for worker in self.workers:
            worker.join(timeout_s)

    def wait_connected(self, timeout_s: float = 30.0) -> bool:
        """True once every box has been connected (flaky ones may be off again already)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(box.sessions_up for box in self.boxes):
                return True
            if any(worker.error for worker in self.workers):
                return False
            time.sleep(0.02)
        return False

    @property
    def error(self) -> str | None:
        return next((w.error for w in self.workers if w.error), None)

    # -- control from other threads ----------------------------------------------------------------
    def call(self, box_id: str, action: Callable[[SimBox], Any]) -> None:
        """Run `action(box)` on the worker that owns the box."""
        box = self.by_id[box_id]
        box.worker.commands.put((box, action))

    def drop(self, box_id: str, offline_s: float = 3600.0) -> None:
        """Cut the box's connection without a DISCONNECT, as a dead cell link would: the broker
        publishes its will. It rejoins after `offline_s`."""
        self.call(box_id, lambda box: box.drop(offline_s))

    def rejoin(self, box_id: str) -> None:
        self.call(box_id, lambda box: box.rejoin_now())

    def skip_seq(self, box_id: str, count: int = 1) -> None:
        """Lose the next `count` seqs (never published, not counted as dropped)."""
        self.call(box_id, lambda box: box.skip(count))

    def raise_alarm(self, box_id: str, source: str, alarm: str) -> None:
        self.call(box_id, lambda box: box.set_alarm(source, alarm, True))

    def clear_alarm(self, box_id: str, source: str, alarm: str) -> None:
        self.call(box_id, lambda box: box.set_alarm(source, alarm, False))

    # -- figures -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        return {
            "boxes": len(self.boxes),
            "connected": sum(1 for box in self.boxes if box.connected),
            "sent": sum(box.sent for box in self.boxes),
            "skipped": sum(box.skipped for box in self.boxes),
            "dropped": sum(box.dropped for box in self.boxes),
        }


class SimBox:
    """One simulated box: its scenario, its state, its seq, its paho client."""

    def __init__(self, sim: FleetSim, index: int, rng: random.Random, box_id: str):
        self.sim = sim
        self.index = index
        self.rng = rng
        self.id = box_id
        self.worker: _Worker = None  # type: ignore[assignment]  # set by the worker that owns it
        self.site = SITES[index % len(SITES)]
        self.base_topic = f"{sim.target.prefix}/{box_id}"
        self.client: mqtt.Client | None = None
        self.connected = False
        self.sessions_up = 0  # connections the broker accepted
        self.session = 0
        self.seq = 0
        self.sent = 0
        self.skipped = 0
        self.dropped = 0
        self.reconnects = 0
        self.replayed = 0  # buffered messages sent after a rejoin
        self.backlog: list[tuple[str, dict]] = []
        self.offline_until: float | None = None
        self.boot_mono = time.monotonic()
        self.write_registered = False
        self.last_tick = time.monotonic()
        scenarios = sim.scenarios
        # The scenario, drawn once per box.
        self.moving = scenarios and rng.random() < 0.05
        self.flaky = scenarios and rng.random() < 0.03
        self.gappy = scenarios and rng.random() < 0.02
        self.no_fix = scenarios and rng.random() < 0.03
        self.clock_source = rng.choices(("ntp", "gps", "unsynced"), (0.8, 0.15, 0.05))[0] if scenarios else "ntp"
        self.home = (rng.uniform(-10.0, 15.0), rng.uniform(-5.0, 40.0))
        self.position = list(self.home)
        self.course_deg = rng.uniform(0, 360)
        self.geofence_m = 200.0
        self.generator_running = rng.random() < 0.5
        self.generator_since = time.monotonic()
        self.fuel_pct = rng.uniform(8.0, 100.0) if scenarios else 80.0
        self.run_hours = rng.uniform(10.0, 4000.0)
        self.low_oil = scenarios and rng.random() < 0.01
        self.tank_pct = rng.uniform(20.0, 100.0)
        self.total_l = rng.uniform(0.0, 50_000.0)
        self.leak = scenarios and rng.random() < 0.01
        names = ["armory-1"] + (["evidence"] if rng.random() < 0.5 else [])
        now_iso = iso_utc(time.time())
        self.doors = {name: {"door": "closed", "since": now_iso, "armed": rng.random() < 0.5,
                             "switch_fault": False, "opened_mono": None} for name in names}
        self.alarms: dict[str, set[str]] = {}
        self.streams = ["gps", "generator", "water", *(f"locker/{n}" for n in names), "health"]
        self.next_stream = rng.randrange(len(self.streams))
        self._derive_alarms(announce=False)

    # -- connection --------------------------------------------------------------------------------
    def connect(self) -> None:
        self.session += 1
        client = self.client
        if client is None:
            client = self.client = BufferedClient(CallbackAPIVersion.VERSION2, client_id=self.id,
                                                   protocol=self.sim.protocol, reconnect_on_failure=False)
            client.write_behind = False  # publishes go out as they are made; only reads are buffered
            self.sim.target.configure(client)
            if self.sim.target.username is None:
                client.username_pw_set(self.id)  # the documented ACL binds the username to the box
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_socket_open = lambda c, u, sock: self.worker.register(self, sock)
            client.on_socket_close = lambda c, u, sock: self.worker.unregister(self, sock)
        # The will carries the session it belongs to, so a late one can be told from the current one.
        client.will_set(f"{self.base_topic}/status", self._status("offline", "connection lost"), qos=1, retain=True)
        try:
            if self.session == 1:
                client.connect(self.sim.target.host, self.sim.target.port, keepalive=self.sim.keepalive_s)
            else:
                client.reconnect()
        except OSError:
            self.offline_until = time.monotonic() + self.rng.uniform(1.0, 5.0)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.worker.error = f"{self.id}: broker refused the connection: {reason_code}"
            return
        if self.session > 1:
            self.reconnects += 1
        self.sessions_up += 1
        self.connected = True
        self.offline_until = None
        self._publish_raw("status", self._status("online"), retain=True)
        # As the agent does: current state first, then what was buffered while offline.
        for stream in self.streams:
            self.emit(stream, self.values(stream))
        backlog, self.backlog = self.backlog, []
        self.replayed += len(backlog)
        for stream, payload in backlog:
            topic = stream if stream == "events" else f"history/{stream}"
            self._publish_raw(topic, json.dumps(payload, separators=(",", ":")), retain=False)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        if self.offline_until is None and not self.sim.stopping.is_set():
            self.offline_until = time.monotonic() + self.rng.uniform(1.0, 5.0)  # broker went away

    def drop(self, offline_s: float) -> None:
        sock = self.client.socket() if self.client else None
        self.offline_until = time.monotonic() + offline_s
        self.connected = False  # from now on the box buffers, as the agent does
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT: the broker sends the will
            except OSError:
                pass

    def rejoin_now(self) -> None:
        if not self.connected:
            self.offline_until = time.monotonic()

    def stop(self) -> None:
        if self.client is not None and self.connected:
            self._publish_raw("status", self._status("offline", "stopped"), retain=True)
            self.client.disconnect()
            self.connected = False

    # -- the scenario ------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """One message's worth of life: maybe something happens, then one stream reports."""
        dt = now - self.last_tick
        self.last_tick = now
        self._advance(dt)
        if self.sim.scenarios:
            self._happenings(now, dt)
        stream = self.streams[self.next_stream]
        self.next_stream = (self.next_stream + 1) % len(self.streams)
        self.emit(stream, self.values(stream))

    def _advance(self, dt: float) -> None:
        if self.generator_running:
            self.fuel_pct = max(0.0, self.fuel_pct - 0.02 * dt)
            self.run_hours += dt / 3600.0
        self.tank_pct = max(0.0, self.tank_pct - 0.01 * dt)
        if self.moving:
            self.course_deg = (self.course_deg + self.rng.uniform(-10, 10)) % 360
            step_m = 8.0 * dt  # ~30 km/h
            rad = math.radians(self.course_deg)
            self.position[0] += step_m * math.cos(rad) / _EARTH_M_PER_DEG
            self.position[1] += step_m * math.sin(rad) / (_EARTH_M_PER_DEG * math.cos(math.radians(self.position[0])))

    def _happenings(self, now: float, dt: float) -> None:
        rng = self.rng
        if self.flaky and self.connected and rng.random() < dt / 90.0:
            self.drop(rng.uniform(5.0, 20.0))
            return
        if self.gappy and rng.random() < dt / 30.0:
            self.skip(1)
        if rng.random() < dt / 300.0:
            self._toggle_generator(now)
        if self.fuel_pct < 5.0:
            self.fuel_pct = 95.0  # the refuelling truck came
        if self.tank_pct < 10.0:
            self.tank_pct = 100.0
        for name, door in self.doors.items():
            if door["door"] == "closed" and rng.random() < dt / 120.0:
                self._set_door(name, "open", now)
            elif door["door"] == "open" and rng.random() < dt / (200.0 if self.index % 10 == 3 else 20.0):
                self._set_door(name, "closed", now)
        self._derive_alarms(announce=True)

    def _toggle_generator(self, now: float) -> None:
        self.generator_running = not self.generator_running
        run_s = round(now - self.generator_since)
        self.generator_since = now
        if self.generator_running:
            self.event("generator_started", "generator", "info")
        else:
            self.event("generator_stopped", "generator", "info", run_s=run_s)
        self.emit("generator", self.values("generator"))

    def _set_door(self, name: str, state: str, now: float) -> None:
        door = self.doors[name]
        door["door"] = state
        door["since"] = iso_utc(time.time())
        source = f"locker/{name}"
        if state == "open":
            door["opened_mono"] = now
            self.event("door_opened", source, "info", armed=door["armed"])  # as the locker driver: the alarm is separate
            if door["armed"]:
                self.set_alarm(source, "door_opened_while_armed", True, emit_state=False)
        else:
            open_s = round(now - (door["opened_mono"] or now), 1)
            door["opened_mono"] = None
            self.event("door_closed", source, "info", open_s=open_s)
            self.set_alarm(source, "door_opened_while_armed", False, emit_state=False)
        self.emit(source, self.values(source))

    def _derive_alarms(self, *, announce: bool) -> None:
        now = time.monotonic()
        distance_m = self._home_distance_m()
        # (source, alarm) -> (active, the details the real driver sends with it)
        wanted = {
            ("generator", "fuel_low"): (self.fuel_pct < FUEL_LOW_PCT,
                                        {"fuel_pct": round(self.fuel_pct, 1), "threshold_pct": FUEL_LOW_PCT}),
            ("generator", "generator_fault:low_oil"): (self.low_oil, {"input": "low_oil"}),
            ("water", "tank_low"): (self.tank_pct < TANK_LOW_PCT, {"tank_pct": round(self.tank_pct, 1)}),
            ("water", "leak_detected"): (self.leak, {}),
            ("gps", "container_moved"): (distance_m > self.geofence_m,
                                         {"distance_m": round(distance_m, 1), "radius_m": self.geofence_m}),
        }
        for name, door in self.doors.items():
            opened = door["opened_mono"]
            open_s = None if opened is None else now - opened
            wanted[(f"locker/{name}", "door_open_too_long")] = (
                open_s is not None and open_s > DOOR_OPEN_TOO_LONG_S,
                {"open_s": round(open_s or 0.0), "limit_s": DOOR_OPEN_TOO_LONG_S})
        for (source, alarm), (active, details) in wanted.items():
            if announce:
                self.set_alarm(source, alarm, active, **details)
            elif active:
                self.alarms.setdefault(source, set()).add(alarm)

    def set_alarm(self, source: str, alarm: str, active: bool, *, emit_state: bool = True, **details: Any) -> None:
        current = self.alarms.setdefault(source, set())
        if active == (alarm in current):
            return
        if active:
            current.add(alarm)
            severity = "warning" if alarm in WARNING_ALARMS else "alarm"
            self.event("alarm_raised", source, severity, alarm=alarm, **details)
        else:
            current.discard(alarm)
            self.event("alarm_cleared", source, "info", alarm=alarm, **details)
        if emit_state:
            stream = "health" if source == "host" else source
            if stream in self.streams:
                self.emit(stream, self.values(stream))

    def skip(self, count: int) -> None:
        self.seq += count
        self.skipped += count

    # -- payloads ----------------------------------------------------------------------------------
    def values(self, stream: str) -> dict[str, Any]:
        if stream == "gps":
            values = self._gps()
        elif stream == "generator":
            values = {"running": self.generator_running, "fuel_pct": round(self.fuel_pct, 1),
                      "run_hours": round(self.run_hours, 2), "fault": self.low_oil,
                      "faults": ["low_oil"] if self.low_oil else []}
        elif stream == "water":
            flowing = self.rng.random() < 0.3
            flow = round(self.rng.uniform(2.0, 12.0), 1) if flowing else 0.0
            self.total_l += flow / 60.0
            values = {"tank_pct": round(self.tank_pct, 1), "flow_lpm": flow, "total_l": round(self.total_l, 1),
                      "pump": flowing, "leak": self.leak}
        elif stream.startswith("locker/"):
            door = self.doors[stream[7:]]
            values = {k: door[k] for k in ("door", "since", "armed", "switch_fault")}
        else:
            values = self._health()
        values["alarms"] = sorted(self.alarms.get("host" if stream == "health" else stream, ()))
        return values

    def _gps(self) -> dict[str, Any]:
        if self.no_fix:
            return {"lat": None, "lon": None, "alt_m": None, "speed_mps": None, "course_deg": None,
                    "fix": "none", "sats": None, "sats_seen": 3, "hdop": None, "pdop": None, "home_distance_m": None,
                    "gnss_integrity": "ok"}
        jitter = 0.0 if self.moving else self.rng.uniform(-1e-5, 1e-5)
        return {
            "lat": round(self.position[0] + jitter, 6), "lon": round(self.position[1] + jitter, 6),
            "alt_m": round(300.0 + self.index % 700, 1),
            "speed_mps": 8.0 if self.moving else 0.0,
            "course_deg": round(self.course_deg, 1) if self.moving else None,
            "fix": "3d", "sats": 9, "sats_seen": 14, "hdop": 0.9, "pdop": 1.6,
            "home_distance_m": round(self._home_distance_m(), 1), "gnss_integrity": "ok",
        }

    def _home_distance_m(self) -> float:
        if self.no_fix:
            return 0.0
        dlat = (self.position[0] - self.home[0]) * _EARTH_M_PER_DEG
        dlon = (self.position[1] - self.home[1]) * _EARTH_M_PER_DEG * math.cos(math.radians(self.home[0]))
        return math.hypot(dlat, dlon)

    def _health(self) -> dict[str, Any]:
        rng = self.rng
        uptime = round(time.monotonic() - self.boot_mono)
        load = round(rng.uniform(0.0, 0.6), 2)
        return {
            "cpu_pct": round(rng.uniform(1.0, 15.0), 1), "load_1m": load, "load_5m": load, "load_15m": load,
            "memory_pct": round(rng.uniform(20.0, 40.0), 1), "memory_available_mb": 600,
            "disk_free_mb": 12000, "disk_used_pct": 18.0, "temperature_c": round(rng.uniform(40.0, 62.0), 1),
            "uptime_s": uptime, "undervoltage": "ok", "throttled": "ok", "power_trouble_since_boot": "no",
            "agent_version": __version__, "agent_uptime_s": uptime,
            "outbox_depth": len(self.backlog), "outbox_oldest_s": 0, "outbox_bytes": 0,
            "dropped": self.dropped, "replay_rate": 0.0, "reconnects": self.reconnects, "publish_errors": 0,
            "last_publish_error": None, "mqtt_last_error": None, "clock_source": self.clock_source,
            "clock_offset_s": 0.0 if self.clock_source == "gps" else None,
            **{f"errors_{stream}": 0 for stream in self.streams if stream != "health"}, "errors_host": 0,
            "gps_link": "connected", "gps_fix": "none" if self.no_fix else "3d",
        }

    def event(self, kind: str, source: str, severity: str, **details: Any) -> None:
        self.emit("events", {"kind": kind, "source": source, "severity": severity, **details})

    def emit(self, stream: str, values: dict[str, Any]) -> None:
        """Accept one message: the next seq, then publish it -- or keep it while offline."""
        self.seq += 1
        payload = {**values, "ts": iso_utc(time.time()), "seq": self.seq}
        if not self.connected:
            self.backlog.append((stream, payload))
            if len(self.backlog) > _BACKLOG_MAX:
                self.backlog.pop(0)
                self.dropped += 1
            return
        self._publish_raw(stream, json.dumps(payload, separators=(",", ":")), retain=stream != "events")

    def _publish_raw(self, stream: str, payload: str, *, retain: bool) -> None:
        self.client.publish(f"{self.base_topic}/{stream}", payload, qos=1, retain=retain)
        self.sent += 1

    def _status(self, state: str, reason: str | None = None) -> str:
        payload = {"state": state, "ts": iso_utc(time.time()), "version": __version__, "site": self.site,
                   "boot_id": f"sim-{self.index}", "session": self.session}
        if reason:
            payload["reason"] = reason
        return json.dumps(payload, separators=(",", ":"))


class _Worker(threading.Thread):
    """Drives its share of the boxes: sockets on one epoll selector, ticks from one heap."""

    def __init__(self, sim: FleetSim, boxes: list[SimBox], number: int):
        super().__init__(name=f"fleetsim-{number}", daemon=True)
        self.sim = sim
        self.boxes = boxes
        self.selector = selectors.DefaultSelector()
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.error: str | None = None
        for box in boxes:
            box.worker = self

    def register(self, box: SimBox, sock: socket.socket) -> None:
        self.selector.register(sock, selectors.EVENT_READ, box)
        box.write_registered = False

    def unregister(self, box: SimBox, sock: socket.socket) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def run(self) -> None:
        try:
            self._run()
        except Exception as err:  # noqa: BLE001 - reported by FleetSim.error, not lost with the thread
            self.error = f"simulator worker failed: {type(err).__name__}: {err}"
            raise

    def _run(self) -> None:
        interval = 1.0 / self.sim.rate if self.sim.rate > 0 else None
        start = time.monotonic()
        due: list[tuple[float, int, SimBox]] = []
        for box in self.boxes:
            box.connect()
            if interval is not None:
                heapq.heappush(due, (start + box.rng.uniform(0, interval), box.index, box))
        next_misc = start + _MISC_INTERVAL_S
        while not self.sim.stopping.is_set():
            now = time.monotonic()
            wake = min(due[0][0] if due else now + 0.05, next_misc, now + 0.05)
            for key, mask in self.selector.select(max(0.0, wake - now)):
                box = key.data
                client = box.client
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                    while client.read_ahead and client.socket() is not None:
                        client.loop_read()
                if mask & selectors.EVENT_WRITE and client.socket() is not None:
                    client.loop_write()
                self._want_write(box)
            while True:
                try:
                    box, action = self.commands.get_nowait()
                except queue.Empty:
                    break
                action(box)
                self._want_write(box)
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, index, box = heapq.heappop(due)
                if box.connected or box.offline_until is not None:
                    box.tick(now)
                    self._want_write(box)
                heapq.heappush(due, (now + interval * box.rng.uniform(0.5, 1.5), index, box))
            if now >= next_misc:
                next_misc = now + _MISC_INTERVAL_S
                for box in self.boxes:
                    if box.connected:
                        box.client.loop_misc()
                        self._want_write(box)
                    elif box.offline_until is not None and now >= box.offline_until:
                        box.connect()
                        self._want_write(box)
        for box in self.boxes:
            box.stop()
        self._flush()

    def _want_write(self, box: SimBox) -> None:
        client = box.client
        sock = client.socket() if client is not None else None
        if sock is None:
            return
        wants = client.want_write()
        if wants != box.write_registered:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants else 0)
            try:
                self.selector.modify(sock, events, box)
                box.write_registered = wants
            except (KeyError, ValueError):
                pass

    def _flush(self, timeout_s: float = 2.0) -> None:
        """Let the goodbyes reach the broker before the sockets close."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pending = [box for box in self.boxes if box.client is not None and box.client.socket() is not None]
            if not pending:
                return
            for box in pending:
                box.client.loop_write()
                box.client.loop_read()
            time.sleep(0.01)
