"""A test driver that produces steady traffic, and `boxtel run` with it registered.

`python -m tests.loadgen run -c CONFIG` is the real `boxtel run` (agent.cli) with one extra driver,
`[load]`: readings on stream `load` (`n` counts up, so every one is a change) and `load_tick` events
(`k` counts up), each at its configured rate. Outbox tests use it for a known load.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.schema import setting
from agent.throttle import StreamSettings
from drivers.base import Driver
from tests.support import ROOT, AgentProcess

DRIVER = "tests.loadgen:LoadDriver"


@dataclass(kw_only=True)
class LoadConfig(StreamSettings):
    readings_per_s: float = setting(10.0, min=0.0, doc="readings per second on stream load")
    events_per_s: float = setting(1.0, min=0.0, doc="load_tick events per second")
    min_interval_s: float = setting(0.0, min=0.0, max=3600.0, doc="every reading passes the throttle")


class LoadDriver(Driver):
    section = "load"
    Config = LoadConfig

    def __init__(self, config: LoadConfig, ctx):
        super().__init__(config, ctx)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.readings = 0
        self.events = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        start = time.monotonic()
        reading_every = 1 / self.config.readings_per_s if self.config.readings_per_s else float("inf")
        event_every = 1 / self.config.events_per_s if self.config.events_per_s else float("inf")
        while not self._stop.is_set():
            now = time.monotonic()
            if self.readings * reading_every <= now - start:
                self.readings += 1
                self.ctx.reading({"n": self.readings, "pid": os.getpid()})
            if self.events * event_every <= now - start:
                self.events += 1
                self.ctx.event("load_tick", k=self.events, pid=os.getpid())
            self.ctx.progress()
            due = min(self.readings * reading_every, self.events * event_every) + start
            self._stop.wait(max(0.0, min(due - time.monotonic(), 1.0)))


class LoadAgent(AgentProcess):
    """`boxtel run` with the [load] driver, as a real process; `fsize_limit` caps the size of any file
    it writes (RLIMIT_FSIZE: a disk that is full for this process); `user` runs it as that uid/gid."""

    def __init__(self, config: Path, *extra: str, fsize_limit: int | None = None, user: int | None = None,
                 log_path: Path | None = None):
        self.config = config
        self.log_path = log_path or config.with_suffix(".log")
        self._log = open(self.log_path, "ab")

        def limit() -> None:
            if fsize_limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))
            if user is not None:
                os.setgid(user)
                os.setuid(user)

        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.loadgen", "run", "-c", str(config), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            preexec_fn=limit if fsize_limit is not None or user is not None else None,
        )
        self.pid = self.process.pid


def register() -> None:
    from drivers import REGISTRY

    REGISTRY.setdefault("load", DRIVER)


def load_config(extra: dict[str, Any] | None = None, **load: Any) -> dict[str, Any]:
    """A config fragment with the [load] driver."""
    return {"load": {"readings_per_s": 10.0, "events_per_s": 1.0, **load}, **(extra or {})}


if __name__ == "__main__":
    register()
    from agent.cli import main

    raise SystemExit(main(sys.argv[1:]))
