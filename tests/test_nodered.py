"""integrations/node-red/flow.json in a real Node-RED (npm `node-red` 4.1, installed once into a cache
folder): a real agent's alarm comes out; with a scripted box, each alarm once, QoS 1 redeliveries
dropped, a box whose seq started again (new SD card) not silenced, and an alarm raised while Node-RED
was down arriving when it is back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.devbroker import free_port
from tests.support import ROOT, wait_until

FLOW = ROOT / "integrations" / "node-red" / "flow.json"
NODE_RED = "node-red@4.1"
CACHE = Path(os.environ.get("BOXTEL_TEST_CACHE", Path.home() / ".cache" / "boxtel-tests")) / "node-red"


@pytest.fixture(scope="session")
def node_red_js() -> Path:
    """red.js of Node-RED 4.1 from the cache, installed there with npm the first time (about 20 s)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the Node-RED flow is not run (apt-get install nodejs npm)")
    red = CACHE / "node_modules" / "node-red" / "red.js"
    if not red.exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed: cannot install Node-RED to run the flow")
        CACHE.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--omit=dev", "--prefix", str(CACHE),
                                 NODE_RED], capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not red.exists():
            pytest.skip(f"could not install {NODE_RED} with npm: {result.stderr.strip()[-300:]}")
    return red


class NodeRed:
    """One Node-RED process running the shipped flow against `broker_port`; stopped by its pid."""

    def __init__(self, red: Path, user_dir: Path, broker_port: int):
        flow = json.loads(FLOW.read_text())
        for node in flow:
            if node["type"] == "mqtt-broker":  # the test broker instead of the fleet's
                node.update(broker="127.0.0.1", port=str(broker_port), usetls=False)
        user_dir.mkdir(exist_ok=True)
        (user_dir / "flows.json").write_text(json.dumps(flow))
        self.red, self.user_dir, self.log_path = red, user_dir, user_dir / "node-red.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["node", str(self.red), "--userDir", str(self.user_dir), "--port", str(free_port()), "flows.json"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: "Connected to broker" in self.log()[offset:] or self.process.poll() is not None, 60,
                   "Node-RED connected to the broker")
        assert self.process.poll() is None, self.log()[-2000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alarms(self) -> list[str]:
        return [line.split("[debug:alarms] ", 1)[1].strip() for line in self.log().splitlines()
                if "[debug:alarms] " in line]


@pytest.fixture
def node_red(node_red_js: Path, broker, tmp_path: Path) -> Iterator[NodeRed]:
    instance = NodeRed(node_red_js, tmp_path / "node-red", broker.port)
    try:
        yield instance
    finally:
        instance.stop()


class Box:
    """A box as the broker sees it: births on `status`, events with `seq` on `events`, QoS 1."""

    def __init__(self, port: int, box: str = "pib-017"):
        self.base = f"boxtel/{box}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=box, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def birth(self, session: int) -> None:
        self._send("status", {"state": "online", "ts": "2026-11-26T11:38:00.000Z", "version": "0.1.0",
                              "site": "Bor", "session": session}, retain=True)

    def event(self, seq: int, kind: str, alarm: str | None = None) -> None:
        payload = {"kind": kind, "source": "locker/armory-2", "severity": "alarm" if kind == "alarm_raised" else "info",
                   "ts": f"2026-11-26T11:38:{seq:02d}.000Z", "seq": seq}
        self._send("events", payload | ({"alarm": alarm} if alarm else {}))

    def _send(self, stream: str, payload: dict, retain: bool = False) -> None:
        self.client.publish(f"{self.base}/{stream}", json.dumps(payload), qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_flow_reports_each_alarm_once_across_a_seq_reset_and_a_node_red_restart(node_red: NodeRed, broker):
    node_red.start()
    box = Box(broker.port)
    try:
        box.birth(session=3)
        box.event(10, "alarm_raised", "door_opened_while_armed")
        box.event(10, "alarm_raised", "door_opened_while_armed")  # a QoS 1 redelivery
        box.event(11, "door_closed")
        box.event(12, "alarm_cleared", "door_opened_while_armed")
        wait_until(lambda: any("seq 12" in a for a in node_red.alarms()), 20, "the cleared alarm")
        assert [a.split(" at ")[0] for a in node_red.alarms()] == [
            "pib-017: ALARM door_opened_while_armed (locker/armory-2, alarm)",
            "pib-017: cleared door_opened_while_armed (locker/armory-2, info)"]

        # a new SD card: the session and the seq start again; seq 10 is a new alarm, not a duplicate
        box.birth(session=1)
        box.event(10, "alarm_raised", "door_open_too_long")
        wait_until(lambda: any("door_open_too_long" in a for a in node_red.alarms()), 20, "the alarm after the reset")

        # Node-RED restarts; what the box raises meanwhile waits in its persistent session on the broker
        node_red.stop()
        box.event(11, "alarm_raised", "door_switch_fault")
        node_red.start()
        wait_until(lambda: any("door_switch_fault" in a for a in node_red.alarms()), 20,
                   "the alarm raised while Node-RED was down")
        assert len(node_red.alarms()) == 4, node_red.alarms()
    finally:
        box.close()


def test_the_flow_reports_a_real_agents_alarm(node_red: NodeRed, broker, make_config, run_agent):
    # the simulated tank reads below 99 %: tank_low is raised as soon as the agent runs
    config = make_config(broker, {"simulate": True, "water": {
        "tank": {"channel": 1, "interval_s": 0.5, "smoothing": 1}, "tank_low_pct": 99.0, "tank_low_clear_pct": 99.5,
        "tank_high_pct": 100.0, "tank_high_clear_pct": 99.8}})
    node_red.start()
    agent = run_agent(config)
    wait_until(lambda: any("ALARM tank_low (water, " in a for a in node_red.alarms()), 30,
               "the agent's tank_low through Node-RED")
    assert all(a.startswith("test-001: ") for a in node_red.alarms()) and agent.alive()
