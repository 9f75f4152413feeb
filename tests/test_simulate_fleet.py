"""`boxtel simulate-fleet`: many boxes in one process, each speaking the real MQTT contract."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict

from agent.fleet.broker import BrokerTarget
from agent.fleet.sim import FleetSim
from tests.support import ROOT, boxtel, wait_until

GPS_FIELDS = {"lat", "lon", "alt_m", "speed_mps", "course_deg", "fix", "sats", "sats_seen", "hdop", "pdop",
              "home_distance_m", "alarms", "ts", "seq"}
GENERATOR_FIELDS = {"running", "fuel_pct", "run_hours", "fault", "faults", "alarms", "ts", "seq"}
WATER_FIELDS = {"tank_pct", "flow_lpm", "total_l", "pump", "leak", "alarms", "ts", "seq"}
LOCKER_FIELDS = {"door", "since", "armed", "switch_fault", "alarms", "ts", "seq"}
HEALTH_FIELDS = {"outbox_depth", "outbox_oldest_s", "outbox_bytes", "dropped", "replay_rate", "reconnects",
                 "clock_source", "clock_offset_s", "alarms", "ts", "seq"}


def simulate(port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "simulate-fleet", "--broker", f"mqtt://127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True, start_new_session=True,
    )


def test_every_box_is_born_publishes_the_agreed_fields_and_says_goodbye(broker, subscribe):
    sub = subscribe("boxtel/#")
    process = simulate(broker.port, "--boxes", "20", "--rate", "10", "--for", "2")
    try:
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    births = {m.topic.split("/")[1]: m.json for m in sub.on("boxtel/+/status") if m.json["state"] == "online"}
    assert sorted(births) == [f"sim-{i:04d}" for i in range(1, 21)]
    assert all(b["session"] == 1 and b["site"] and b["version"] for b in births.values())
    goodbyes = sub.wait_for("boxtel/sim-0020/status", lambda p: p["state"] == "offline")
    assert goodbyes.json["reason"] == "stopped"

    for stream, fields in (("gps", GPS_FIELDS), ("generator", GENERATOR_FIELDS), ("water", WATER_FIELDS),
                           ("locker/armory-1", LOCKER_FIELDS), ("health", HEALTH_FIELDS)):
        messages = sub.on(f"boxtel/+/{stream}")
        assert messages, stream
        assert all(fields <= m.json.keys() for m in messages), (stream, messages[0])
    seqs = defaultdict(list)
    for message in sub.on("boxtel/+/#"):
        if "seq" in message.json:
            seqs[message.topic.split("/")[1]].append(message.json["seq"])
    for box, numbers in seqs.items():
        assert len(numbers) == len(set(numbers)), f"{box} reused a seq"
        assert numbers == sorted(numbers), f"{box} published out of order without an outage"


def test_a_killed_simulator_leaves_a_will_for_every_box(broker, subscribe):
    sub = subscribe("boxtel/+/status")
    process = simulate(broker.port, "--boxes", "10", "--rate", "1")
    try:
        wait_until(lambda: len({m.topic for m in sub.on("boxtel/+/status")}) == 10, what="10 births")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        for i in range(1, 11):
            will = sub.wait_for(f"boxtel/sim-{i:04d}/status", lambda p: p["state"] == "offline")
            assert will.json["reason"] == "connection lost" and will.json["session"] == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_scenarios_raise_alarms_and_events_with_the_agreed_names(broker, subscribe):
    sub = subscribe("boxtel/#")
    sim = FleetSim(BrokerTarget("127.0.0.1", broker.port, False), 100, rate=2.0, seed=7)
    sim.start()
    try:
        assert sim.wait_connected(20), sim.error
        sub.wait_for("boxtel/+/generator", lambda p: "fuel_low" in p["alarms"])
        sub.wait_for("boxtel/+/events", lambda p: p["kind"] == "door_opened")
        sub.wait_for("boxtel/+/events", lambda p: p["kind"] == "alarm_raised" and p["severity"] == "alarm")
    finally:
        sim.stop()
    kinds = {m.json["kind"] for m in sub.on("boxtel/+/events")}
    assert kinds <= {"alarm_raised", "alarm_cleared", "door_opened", "door_closed", "generator_started",
                     "generator_stopped"}
    alarms = {a for m in sub.on("boxtel/+/+") if m.topic.split("/")[2] != "events" for a in m.json.get("alarms", [])}
    assert alarms <= {"fuel_low", "generator_fault:low_oil", "tank_low", "leak_detected", "container_moved",
                      "door_open_too_long", "door_opened_while_armed"}


def test_bad_arguments_are_usage_errors(broker):
    assert boxtel("simulate-fleet", "--boxes", "0").returncode == 64
    result = boxtel("simulate-fleet", "--boxes", "2", "--id-prefix", "a/b", "--broker", f"mqtt://127.0.0.1:{broker.port}")
    assert result.returncode == 64 and "--id-prefix" in result.stderr
