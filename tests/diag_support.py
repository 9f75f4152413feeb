"""Helpers for the diagnostics tests: test-only drivers and an agent running in the test's own process
(so a test can register a driver, drive its gpiozero MockFactory pins and reach its context)."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import load
from agent.runtime import Agent
from agent.schema import setting
from agent.throttle import StreamSettings
from drivers.base import Driver
from tests.support import wait_until


@dataclass(kw_only=True)
class PinsConfig(StreamSettings):
    pin: int = setting(17, doc="the door switch's pin")


class PinsDriver(Driver):
    """A door switch on one gpiozero MockFactory pin: enough for `pins()` to have a real row."""

    section = "testpins"
    Config = PinsConfig

    def start(self) -> None:
        from gpiozero.pins.mock import MockFactory

        self.factory = MockFactory()
        self.pin = self.factory.pin(self.config.pin)
        self.pin.function = "input"
        self.pin.pull = "up"

    def stop(self) -> None:
        self.factory.close()

    def pins(self) -> list[dict[str, Any]]:
        raw = int(self.pin.state)
        return [{"input": "testpins door", "pin": self.config.pin, "raw": raw,
                 "state": "open" if raw else "closed", "edges_per_s": 0.0}]


@dataclass(kw_only=True)
class FakeGpsConfig(StreamSettings):
    port: str = setting(doc="serial port")
    baud: Any = setting(9600, doc="baud")


class FakeGps(Driver):
    """Stands in for the GPS driver where a test needs "the agent holds the port" and nothing else."""

    section = "gps"
    Config = FakeGpsConfig
    link = "connected"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {**super().status(), "port": self.config.port, "baud": self.config.baud, "link": self.link,
                "last_sentence_age_s": 0.4, "sentences_ok": 42, "fix": "3d"}


@contextlib.contextmanager
def agent_in_process(config_path: Path) -> Iterator[Agent]:
    """Run an Agent on a thread of this process until the block ends; waits for its control socket."""
    made: list[Agent] = []

    def run() -> None:  # built on its own thread: the outbox's SQLite connection belongs to it
        made.append(Agent(load(config_path)))
        made[0].run()

    thread = threading.Thread(target=run, name="test-agent", daemon=True)
    thread.start()
    try:
        wait_until(lambda: made and is_socket(made[0].config.diagnostics.socket), what="the control socket")
        yield made[0]
    finally:
        if made:
            made[0].request_stop("test over")
        thread.join(timeout=15)
        assert not thread.is_alive(), "the agent did not stop"


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
