"""Backlog replay and SD-card wear (BRIEF §7: replay >= 50 % of a bare paho QoS 1 loop, while a live event
still reaches the broker within 1 s).

1. Baseline, in the same run against the same loopback mosquitto: a bare paho client publishing the same
   number of QoS 1 messages of the same size with the same bounded in-flight window, nothing stored.
2. `boxtel run` (with the test suite's [load] driver sending live events) starts on an outbox holding
   100 000 history messages and drains it; the live events' delay from `ts` to arrival is measured
   meanwhile.
3. Bytes written to disk per hour by `boxtel run` online at default rates (the host driver on this
   machine's /sys; the simulator is left out, as it writes fake sysfs files itself), and with a 1 Hz
   stream added: `write_bytes` of /proc/<pid>/io over a measured window, extrapolated.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.devbroker import Broker
from agent.outbox import HISTORY, Outbox
from bench.common import ROOT, env_seconds, python, scratch, verdict
from tests.support import toml_dumps

MESSAGES = int(env_seconds("BENCH_REPLAY_MESSAGES", 100_000))
WINDOW = 20  # mqtt.inflight default
RATIO_TARGET = 0.5
LIVE_TARGET_S = 1.0
PAYLOAD = {"lat": 9.0301234, "lon": 38.7401234, "alt_m": 2355.2, "speed_mps": 0.0, "course_deg": 0.0,
           "fix": "3d", "sats": 9, "hdop": 0.9, "alarms": [], "ts": "2026-01-01T00:00:00.000Z"}

_BASELINE = """
import sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, count, window, size = (int(a) for a in sys.argv[1:5])
payload = b"x" * size
room = threading.Semaphore(window)
done = threading.Event()
acked = 0
def on_publish(client, userdata, mid, reason_code, properties):
    global acked
    acked += 1
    room.release()
    if acked == count:
        done.set()
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(window)
c.on_publish = on_publish
c.connect("127.0.0.1", port)
c.loop_start()
time.sleep(0.5)
start = time.monotonic()
for i in range(count):
    room.acquire()
    c.publish("bench/bare/history/gps", payload, qos=1)
done.wait()
print(count / (time.monotonic() - start))
c.disconnect()
c.loop_stop()
"""


def main() -> int:
    folder = scratch("replay")
    payload_size = len(json.dumps({**PAYLOAD, "seq": 123456}, separators=(",", ":")))
    with Broker(folder / "broker", extra=["max_queued_messages 1000000"]) as broker:
        bare_rate = float(subprocess.run(
            [python(), "-c", _BASELINE, str(broker.port), str(MESSAGES), str(WINDOW), str(payload_size)],
            check=True, capture_output=True, text=True, timeout=600,
        ).stdout)
        replay_rate, live_delays, drain_s = _replay(folder, broker)
        # The host driver on this machine's real /sys at its default rates (the simulator would add the
        # writes of its fake sysfs files), and a busier box: one 1 Hz stream (a GPS) and an event a minute.
        wear = {
            "host driver at default rates": _disk_writes(folder, broker, "defaults", {"host": {}}),
            "plus a 1 Hz stream and 1 event/min": _disk_writes(
                folder, broker, "busy", {"host": {}, "load": {"readings_per_s": 1.0, "events_per_s": 1 / 60}}),
        }
    ratio = replay_rate / bare_rate
    worst_live = max(live_delays, default=float("inf"))
    print(f"bare paho QoS 1 loop (window {WINDOW}): {bare_rate:,.0f} msg/s")
    print(f"boxtel replay of {MESSAGES:,} queued messages: {replay_rate:,.0f} msg/s ({drain_s:.1f} s), "
          f"ratio {ratio:.2f} (target >= {RATIO_TARGET}): {verdict(ratio >= RATIO_TARGET)}")
    print(f"live events during the replay: {len(live_delays)}, worst delay {worst_live * 1000:.0f} ms "
          f"(target < {LIVE_TARGET_S * 1000:.0f} ms): {verdict(worst_live < LIVE_TARGET_S)}")
    for what, figures in wear.items():
        print(f"disk writes online, {what}: {figures['bytes_per_hour'] / 2**20:.2f} MB/hour "
              f"({figures['write_bytes']:,} bytes in {figures['seconds']:.0f} s, extrapolated; write() calls "
              f"carried {figures['wchar']:,} bytes), {figures['bytes_per_hour'] * 24 / 2**20:.0f} MB/day")
    print(f"(logs: {folder})")
    return 0 if ratio >= RATIO_TARGET and worst_live < LIVE_TARGET_S else 1


def _replay(folder: Path, broker: Broker) -> tuple[float, list[float], float]:
    state_dir = folder / "replay-state"
    box = Outbox(state_dir / "outbox.db")
    for i in range(MESSAGES):
        box.accept(HISTORY, "gps", PAYLOAD)
        if i % 10_000 == 9_999:
            box.commit()
    box.close()
    config = folder / "replay.toml"
    config.write_text(toml_dumps({
        "box": {"id": "bench-001", "state_dir": str(state_dir)},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "diagnostics": {"socket": str(folder / "control.sock")},
        "load": {"readings_per_s": 1.0, "events_per_s": 4.0},
    }))
    arrivals: list[tuple[float, float]] = []  # (arrival wall, ts) of live events
    connected = []

    def on_message(client, userdata, message):
        payload = json.loads(message.payload)
        if message.topic.endswith("/status"):
            if payload.get("state") == "online":
                connected.append(time.monotonic())
            return
        ts = datetime.fromisoformat(payload["ts"].replace("Z", "+00:00")).timestamp()
        arrivals.append((time.time(), ts))

    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-watcher", protocol=mqtt.MQTTv5)
    watcher.on_message = on_message
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe([("boxtel/bench-001/events", 1), ("boxtel/bench-001/status", 1)])
    watcher.loop_start()
    db = sqlite3.connect(state_dir / "outbox.db")
    agent = subprocess.Popen([python(), "-m", "tests.loadgen", "run", "-c", str(config)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=open(folder / "replay-agent.log", "wb"))
    try:
        while not connected:
            _check_alive(agent, folder / "replay-agent.log")
            time.sleep(0.01)
        while db.execute(f"SELECT COUNT(*) FROM outbox WHERE prio = {HISTORY}").fetchone()[0]:
            _check_alive(agent, folder / "replay-agent.log")
            time.sleep(0.05)
        drained = time.monotonic()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=10)
        watcher.disconnect()
        watcher.loop_stop()
        db.close()
    drain_s = drained - connected[0]
    replay_start_wall = time.time() - (time.monotonic() - connected[0])
    replay_end_wall = time.time() - (time.monotonic() - drained)
    delays = [arrived - ts for arrived, ts in arrivals if replay_start_wall <= arrived <= replay_end_wall]
    return MESSAGES / drain_s, delays, drain_s


def _disk_writes(folder: Path, broker: Broker, name: str, extra: dict) -> dict[str, float]:
    """Bytes `boxtel run` writes to disk over a measured window, online, extrapolated to an hour."""
    seconds = env_seconds("BENCH_REPLAY_IO_S", 60.0)
    config = folder / f"{name}.toml"
    config.write_text(toml_dumps({
        "box": {"id": f"bench-{name}", "state_dir": str(folder / f"{name}-state")},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "diagnostics": {"socket": str(folder / "control.sock")},
        **extra,
    }))
    log = folder / f"{name}-agent.log"
    agent = subprocess.Popen([python(), "-m", "tests.loadgen", "run", "-c", str(config)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        time.sleep(5)  # past start-up (database creation, first samples)
        _check_alive(agent, log)
        before = _io(agent.pid)
        start = time.monotonic()
        time.sleep(seconds)
        after = _io(agent.pid)
        elapsed = time.monotonic() - start
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=10)
    written = after["write_bytes"] - before["write_bytes"]
    return {"write_bytes": written, "wchar": after["wchar"] - before["wchar"], "seconds": elapsed,
            "bytes_per_hour": written * 3600 / elapsed}


def _io(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, value = line.split(":")
        fields[key] = int(value)
    return fields


def _check_alive(agent: subprocess.Popen, log: Path) -> None:
    if agent.poll() is not None:
        print(log.read_text()[-2000:], file=sys.stderr)
        raise SystemExit(f"the agent exited ({agent.returncode})")
