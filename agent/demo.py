"""`make demo`: a private broker, the agent on simulated hardware, and a live view for people.

One line per message: states and events as `boxtel watch` shows them, health summarised, anything with
an active alarm marked `!!` (red on a terminal), Home Assistant's discovery configs left out. `--raw`
(`make demo RAW=1`): every MQTT message as it is, topic and JSON payload. An argument names another
simulation config (`make demo DEMO=config/simulate-modbus.toml`: the generator's controller over
Modbus). Runs until Ctrl-C, then stops the agent and the broker it started (by their pids).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.commands.watch import format_line
from agent.devbroker import Broker, port_in_use

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "simulate.toml"
WORKDIR = ROOT / ".demo"


# What a person watching the demo wants from `health` (the full payload has some 30 fields).
HEALTH_SUMMARY = ("cpu_pct", "memory_pct", "temperature_c", "disk_free_mb", "undervoltage", "outbox_depth",
                  "dropped", "clock_source", "alarms")
_ALARM_COLOUR, _RESET = "\x1b[31;1m", "\x1b[0m"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description="the agent on simulated hardware, live")
    parser.add_argument("config", nargs="?", default=str(CONFIG), help="simulation config (default: %(default)s)")
    parser.add_argument("--raw", action="store_true", help="every MQTT message as it is (topic, JSON payload)")
    args = parser.parse_args(argv)
    config = Path(args.config).resolve()
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
    viewer = _viewer(port, raw=args.raw)
    try:
        with open(agent_log, "ab") as log:
            agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(config)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        print(f"demo: mosquitto on 127.0.0.1:{port}, agent pid {agent.pid} (log: {agent_log})")
        print(try_these(port, config))
        print("demo: live messages on boxtel/#" + ("" if args.raw else " (make demo RAW=1: raw MQTT)")
              + " -- Ctrl-C to stop\n")
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


def try_these(port: int, config_path: Path = CONFIG) -> str:
    """The commands to point at the running demo, from another terminal in the repository."""
    config = config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path
    return "\n".join([
        "demo: try, in another terminal here:",
        f"  .venv/bin/boxtel status -c {config}       # what the agent sees, OK / WARN / FAIL",
        f"  .venv/bin/boxtel watch -c {config}        # every reading and event it accepts",
        f"  .venv/bin/boxtel pins -c {config}         # the simulated GPIO inputs",
        f"  .venv/bin/boxtel doctor -c {config}       # the self-test",
        f"  .venv/bin/boxtel fleet --broker mqtt://127.0.0.1:{port}   # the fleet console",
        f"  mosquitto_sub -h 127.0.0.1 -p {port} -t 'boxtel/#' -v     # the raw MQTT",
    ])


def live_line(topic: str, payload: bytes, retained: bool, *, colour: bool = False,
              width: int | None = None) -> str | None:
    """One MQTT message as one line for a person, or None for one not worth a line (discovery)."""
    parts = topic.split("/", 2)
    if len(parts) < 3 or parts[0] != "boxtel":
        return None
    box, stream = parts[1], parts[2]
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    alarm = isinstance(data, dict) and bool(data.get("alarms") or data.get("severity") == "alarm")
    if not payload:
        line = f"{box} {stream} cleared (the box no longer has it)"
    elif not isinstance(data, dict):
        line = f"{box} {stream} {payload[:80].decode(errors='replace')!r}"
    elif stream == "status":
        line = (f"{str(data.get('ts', ''))[11:]} {box} {str(data.get('state')).upper()} session {data.get('session')}"
                + (f" ({data['reason']})" if data.get("reason") else f", version {data.get('version')}"))
    else:
        if stream == "health":
            data = {key: data[key] for key in ("ts", "seq", *HEALTH_SUMMARY) if key in data}
        kind = "event" if stream == "events" else "reading"
        line = format_line({"type": kind, "stream": stream, "seq": data.pop("seq", None), "payload": data},
                           colour=colour and not alarm)  # an alarm's whole line is red instead
    if retained:
        line += " (retained)"
    if alarm:  # the names first: they must survive a line cut to the terminal's width
        names = data.get("alarms") or [data.get("alarm")]
        line = f"!! {','.join(map(str, names))}: {line}"
    if width is not None and len(line) > width:
        line = line[: max(width - 1, 0)] + "…"
    if alarm and colour:
        line = f"{_ALARM_COLOUR}{line}{_RESET}"
    return line


def _viewer(port: int, *, raw: bool) -> mqtt.Client:
    """A subscriber printing every message under boxtel/# as it arrives."""
    terminal = sys.stdout.isatty()

    def on_message(client, userdata, message):
        if raw:
            retained = " (retained)" if message.retain else ""
            print(f"{time.strftime('%H:%M:%S')}  {message.topic}{retained}  "
                  f"{message.payload.decode(errors='replace')}", flush=True)
            return
        width = shutil.get_terminal_size().columns if terminal else None
        line = live_line(message.topic, message.payload, message.retain, colour=terminal, width=width)
        if line is not None:
            print(line, flush=True)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="boxtel-demo-viewer", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe("boxtel/#", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


if __name__ == "__main__":
    raise SystemExit(main())
