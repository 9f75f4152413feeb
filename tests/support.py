"""Test helpers: a TOML writer for configs, a subscriber that waits on conditions, the agent as a
real process stopped by its pid. Fixtures that use them live in conftest.py."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT_S = 15.0


def wait_until(condition: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT_S, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# -- config files ------------------------------------------------------------------------------------
def toml_dumps(data: dict[str, Any]) -> str:
    """Enough TOML for our configs: scalars, lists, inline tables, tables and arrays of tables."""
    lines: list[str] = []
    _emit_table(lines, [], data)
    return "\n".join(lines) + "\n"


def _emit_table(lines: list[str], path: list[str], table: dict[str, Any]) -> None:
    for key, value in table.items():
        if not isinstance(value, dict) and not _is_table_array(value):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in table.items():
        if isinstance(value, dict):
            lines.append(f"\n[{'.'.join([*path, key])}]")
            _emit_table(lines, [*path, key], value)
        elif _is_table_array(value):
            for item in value:
                lines.append(f"\n[[{'.'.join([*path, key])}]]")
                _emit_table(lines, [*path, key], item)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- MQTT --------------------------------------------------------------------------------------------
class Message:
    def __init__(self, topic: str, payload: bytes, retain: bool):
        self.topic = topic
        self.raw = payload
        self.retain = retain
        self.received_mono = time.monotonic()

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    def __repr__(self) -> str:
        return f"<{self.topic}{' retained' if self.retain else ''} {self.raw[:120]!r}>"


class Subscriber:
    """A real MQTT client that records every message it gets and waits on conditions."""

    def __init__(self, port: int, topics: str | list[str] = "#", *, client_id: str | None = None,
                 session_expiry_s: int = 0, **connect: Any):
        """`session_expiry_s`: a persistent session (with `client_id`), as a dashboard keeps: the broker
        queues what comes while it is away, across a broker restart with persistence."""
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._topics = [topics] if isinstance(topics, str) else topics
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"test-sub-{os.getpid()}-{id(self)}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        if "username" in connect:
            self.client.username_pw_set(connect.pop("username"), connect.pop("password", None))
        if "ca_certs" in connect:  # TLS, verified against this CA
            self.client.tls_set(ca_certs=connect.pop("ca_certs"), certfile=connect.pop("certfile", None),
                                keyfile=connect.pop("keyfile", None))
        host = connect.pop("host", "127.0.0.1")
        if session_expiry_s:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = session_expiry_s
            self.client.connect(host, port, clean_start=False, properties=properties)
            self.client.reconnect_delay_set(0.1, 0.5)  # back quickly after a broker restart
        else:
            self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("test subscriber could not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        for topic in self._topics:
            client.subscribe(topic, qos=1)

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.messages.append(Message(message.topic, message.payload, message.retain))

    def on(self, topic: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if mqtt.topic_matches_sub(topic, m.topic)]

    def wait_for(self, topic: str, where: Callable[[dict], bool] = lambda p: True,
                 timeout: float = DEFAULT_TIMEOUT_S, after: int = 0) -> Message:
        """The first message on `topic` (a filter) whose JSON payload satisfies `where`."""

        def find() -> Message | None:
            for message in self.on(topic)[after:]:
                try:
                    if where(message.json):
                        return message
                except (ValueError, KeyError, TypeError, RecursionError):  # hostile payloads, in some tests
                    continue
            return None

        return wait_until(find, timeout, f"a message on {topic}; got {self.on(topic)[-5:]}")

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the agent as a process --------------------------------------------------------------------------
def boxtel(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run the `boxtel` command line as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs
    )


class AgentProcess:
    def __init__(self, config: Path, *extra: str, log_path: Path | None = None, env: dict | None = None):
        self.config = config
        self.log_path = log_path or config.with_suffix(".log")
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(config), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.pid = self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def close(self) -> None:
        if self.alive():
            self.kill()
        self._log.close()


# -- serial ports ------------------------------------------------------------------------------------
class Pty:
    """A pseudo-terminal standing in for a receiver's serial port: the driver opens `path` (a symlink to
    the slave, as udev makes /dev/gps0) with pyserial; the test writes to the master, as a receiver would.
    `unplug()` closes the master and removes the link, as pulling a USB receiver does."""

    def __init__(self, path: Path):
        import tty

        self.path = path
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.slave_name = os.ttyname(self.slave)
        path.unlink(missing_ok=True)
        path.symlink_to(self.slave_name)

    def write(self, data: bytes | str, patience_s: float = 0.2) -> None:
        """Write whole, waiting up to `patience_s` for the reader to make room; after that the rest is
        lost, as from a receiver nobody reads (before the port is opened, after it is gone)."""
        import select

        if isinstance(data, str):
            data = data.encode("ascii")
        deadline = time.monotonic() + patience_s
        while data and time.monotonic() < deadline:
            try:
                data = data[os.write(self.master, data):]
            except BlockingIOError:
                select.select([], [self.master], [], max(0.0, deadline - time.monotonic()))
            except OSError:
                return

    def baud(self) -> int:
        """The rate the port was set to (by pyserial, in the driver)."""
        import termios

        speed = termios.tcgetattr(self.slave)[5]
        return next(rate for rate in (4800, 9600, 19200, 38400, 57600, 115200)
                    if getattr(termios, f"B{rate}") == speed)

    def unplug(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self.master = self.slave = -1
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()
