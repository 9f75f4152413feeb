"""`make demo`: a private broker, the agent on simulated hardware, and the live messages.

Runs until Ctrl-C, then stops the agent and the broker it started (by their pids). An argument names
another simulation config (`make demo DEMO=config/simulate-modbus.toml`: the generator's controller
over Modbus).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.devbroker import Broker, port_in_use

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "simulate.toml"
WORKDIR = ROOT / ".demo"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config = Path(args[0]).resolve() if args else CONFIG
    settings = tomllib.loads(config.read_text())
    port = settings["mqtt"]["port"]
    if port_in_use(port):
        print(f"demo: port {port} on 127.0.0.1 is in use (another demo still running?); "
              f"stop it or change mqtt.port in {config}", file=sys.stderr)
        return 69
    WORKDIR.mkdir(exist_ok=True)
    broker = Broker(WORKDIR / "broker", port).start()
    agent_log = WORKDIR / "agent.log"
    agent = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    viewer = _viewer(port)
    try:
        with open(agent_log, "ab") as log:
            agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(config)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        print(f"demo: mosquitto on 127.0.0.1:{port}, agent pid {agent.pid} (log: {agent_log})")
        print("demo: live messages on boxtel/# -- Ctrl-C to stop\n")
        while not stop.is_set() and agent.poll() is None:
            stop.wait(0.5)
        if agent.poll() is not None:
            print(f"demo: the agent stopped (exit {agent.returncode})", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
        viewer.disconnect()
        viewer.loop_stop()
        broker.stop()
        print("\ndemo: stopped the agent and the broker")
    if agent is not None and agent.returncode not in (0, -signal.SIGTERM):
        print(f"demo: the agent exited with {agent.returncode}; see {agent_log}", file=sys.stderr)
        return 1
    return 0


def _viewer(port: int) -> mqtt.Client:
    """A subscriber printing every message under boxtel/# as it arrives."""

    def on_message(client, userdata, message):
        stamp = time.strftime("%H:%M:%S")
        retained = " (retained)" if message.retain else ""
        print(f"{stamp}  {message.topic}{retained}  {message.payload.decode(errors='replace')}", flush=True)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="boxtel-demo-viewer", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe("boxtel/#", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


if __name__ == "__main__":
    raise SystemExit(main())
