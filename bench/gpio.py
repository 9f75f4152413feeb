"""GPIO edge to subscriber latency (BRIEF §7: p99 <= 2 ms beyond the configured debounce).

The path measured is the whole agent: a MockFactory pin edge, the locker driver's debounce, the core
(seq, timestamp, the outbox commit with synchronous=FULL that every event gets), the MQTT publish to a
loopback mosquitto, and a subscriber receiving it. The configured debounce is subtracted.

Baseline, measured in the same run: a bare paho QoS 1 publish -> subscriber round on the same broker
(no debounce, no disk), the floor any MQTT path starts from. For scale it also times the durable commit
alone (one SQLite WAL commit with synchronous=FULL on the same disk), the part durability adds.
"""

from __future__ import annotations

import signal
import sqlite3
import statistics
import subprocess
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.devbroker import Broker
from bench.common import env_seconds, python, scratch, verdict
from drivers.gpio import pin_factory
from drivers.gpio_sim import reset_mock_hardware, wire_pin
from tests.gpio_support import agent_in_process
from tests.support import toml_dumps

TARGET_P99_MS = 2.0
DEBOUNCE_MS = 10.0
DOOR = 23


_SUBSCRIBER = """
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
def on_message(client, userdata, message):
    sys.stdout.write(f"{time.monotonic()}\\n")
    sys.stdout.flush()
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub-" + sys.argv[2], protocol=mqtt.MQTTv5)
c.on_connect = lambda c, *a: c.subscribe(sys.argv[3], qos=1)
c.on_subscribe = lambda *a: (sys.stdout.write("ready\\n"), sys.stdout.flush())
c.on_message = on_message
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_forever()
"""


class _Arrivals:
    """A subscriber in its own process (as a dashboard is: it must not share the agent's interpreter
    lock), printing the monotonic time -- one clock for the whole machine -- of every arrival."""

    def __init__(self, port: int, topic: str):
        self.process = subprocess.Popen([python(), "-c", _SUBSCRIBER, str(port), str(id(self)), topic],
                                        stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("bench subscriber could not subscribe")

    def next_arrival(self) -> float:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("bench subscriber died")
        return float(line)

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def baseline(port: int, count: int, idle_s: float = 0.0) -> list[float]:
    """Bare paho: publish (QoS 1) -> subscriber, one at a time, in ms; `idle_s` between rounds."""
    arrivals = _Arrivals(port, "bench/baseline")
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    latencies = []
    try:
        for i in range(count + 20):
            time.sleep(idle_s)
            sent = time.monotonic()
            publisher.publish("bench/baseline", f'{{"kind":"door_opened","n":{i}}}', qos=1)
            arrived = arrivals.next_arrival()
            if i >= 20:  # the first rounds warm up connections and caches
                latencies.append((arrived - sent) * 1000.0)
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        arrivals.close()
    return latencies


def durable_commit(folder, count: int, idle_s: float = 0.0) -> list[float]:
    """The outbox's part alone: one SQLite WAL commit with synchronous=FULL on the same disk, in ms;
    `idle_s` between commits."""
    db = sqlite3.connect(folder / f"commit-{idle_s}.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, payload TEXT)")
    latencies = []
    for _ in range(count):
        time.sleep(idle_s)
        start = time.monotonic()
        with db:
            db.execute("BEGIN")
            db.execute("INSERT INTO t (payload) VALUES (?)", ('{"kind":"door_opened"}',))
        latencies.append((time.monotonic() - start) * 1000.0)
    db.close()
    return latencies


def agent_edges(broker: Broker, folder, count: int) -> list[float]:
    """Pin edge -> event at a subscriber through the agent, in ms beyond the debounce."""
    config = folder / "bench.toml"
    config.write_text(toml_dumps({
        "box": {"id": "bench-001", "state_dir": str(folder / "state")},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "diagnostics": {"socket": str(folder / "control.sock")},
        "gpio": {"pin_factory": "mock"},
        # edges come far faster than any door; not a loose wire here
        "locker": [{"name": "bench", "door": {"pin": DOOR, "debounce_ms": DEBOUNCE_MS},
                    "chatter_edges_per_s": 1e9}],
    }))
    factory = pin_factory("mock")
    reset_mock_hardware(factory)
    pin = wire_pin(factory, DOOR, high=False)
    arrivals = _Arrivals(broker.port, "boxtel/bench-001/events")
    latencies = []
    try:
        with agent_in_process(config):
            for i in range(count + 20):
                edge = time.monotonic()
                (pin.drive_low if i % 2 else pin.drive_high)()
                arrived = arrivals.next_arrival()
                if i >= 20:
                    latencies.append((arrived - edge) * 1000.0 - DEBOUNCE_MS)
    finally:
        arrivals.close()
        reset_mock_hardware(factory)
    return latencies


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100.0 * (len(ordered) - 1))))]


def main() -> int:
    count = int(env_seconds("BENCH_GPIO_EDGES", 600))
    folder = scratch("gpio")
    with Broker(folder / "broker") as broker:
        base = baseline(broker.port, count)
        commits = durable_commit(folder, count)
        # The agent's path starts from idle (each edge waits out the debounce), and waking idle CPUs,
        # threads and the disk costs far more than back-to-back rounds on some hosts (VMs): the same
        # two parts, paced like the agent, show that floor.
        paced_base = baseline(broker.port, count, DEBOUNCE_MS / 1000.0)
        paced_commits = durable_commit(folder, count, DEBOUNCE_MS / 1000.0)
        edges = agent_edges(broker, folder, count)
    base_p50, base_p99 = statistics.median(base), percentile(base, 99)
    p50, p99 = statistics.median(edges), percentile(edges, 99)
    print(f"edges: {len(edges)}, debounce {DEBOUNCE_MS:.0f} ms (subtracted)")
    print(f"agent    edge -> subscriber beyond debounce: p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {max(edges):.3f} ms")
    print(f"baseline bare paho QoS 1 publish -> subscriber: p50 {base_p50:.3f} ms, p99 {base_p99:.3f} ms")
    print(f"for scale, the durable commit alone (SQLite WAL, synchronous=FULL, same disk): "
          f"p50 {statistics.median(commits):.3f} ms, p99 {percentile(commits, 99):.3f} ms")
    print(f"paced like the agent ({DEBOUNCE_MS:.0f} ms idle between rounds): bare paho p50 "
          f"{statistics.median(paced_base):.3f} ms, p99 {percentile(paced_base, 99):.3f} ms; durable commit "
          f"p50 {statistics.median(paced_commits):.3f} ms, p99 {percentile(paced_commits, 99):.3f} ms")
    print(f"ratio agent/baseline: p50 x{p50 / base_p50:.2f}, p99 x{p99 / base_p99:.2f}")
    ok = p99 <= TARGET_P99_MS
    print(f"target p99 <= {TARGET_P99_MS} ms beyond debounce: {verdict(ok)}")
    floor_p99 = percentile(paced_commits, 99)
    if floor_p99 > TARGET_P99_MS:
        print(f"note: on this disk the durable commit alone, paced like the edges, has p99 {floor_p99:.3f} ms "
              f"> {TARGET_P99_MS} ms: no path that commits each event before publishing it can meet the target here")
    return 0 if ok else 1
