"""The real Debian gpsd and chrony for the tests, each private to a temp dir and stopped by its pid.

chronyd runs only as `chronyd -x` (never touches the clock) with its own config: no NTP sources, no
command port, its command socket and the SOCK refclock's socket in the temp dir. gpsd runs in the
foreground on one pty, on a free loopback port (never -G), with its own shared-memory key.
`make daemons` installs both without starting their services.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.devbroker import free_port
from tests.support import wait_until


def _binary(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                      None)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make daemons` (make test does)")
    return path


def _stop(process: subprocess.Popen, timeout: float = 5.0) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)


@dataclass
class Source:
    """One line of `chronyc sources` (and `sourcestats`) about a source."""

    mode: str  # '#' a refclock
    state: str  # '*' selected, '+' combined, '?' unusable, ...
    name: str
    reach: int
    samples: int


class Chrony:
    """`chronyd -x -d` with a private config whose only source is `refclock SOCK <dir>/gps.sock refid GPS`."""

    def __init__(self, folder: Path, refclock_options: str = "poll 0 delay 0.2 filter 2", extra: str = ""):
        # `chronyd -x` disables a command socket in a folder others may enter: 0700, and run as root
        # (-u root, -x still) so the folder stays its own.
        self.folder = folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
        self.refclock_socket = folder / "gps.sock"
        self.command_socket = folder / "command.sock"
        self.log_path = folder / "chrony.log"
        self.config = folder / "chrony.conf"
        self.config.write_text(
            f"refclock SOCK {self.refclock_socket} refid GPS {refclock_options}\n"
            "cmdport 0\n"
            "port 0\n"
            f"bindcmdaddress {self.command_socket}\n"
            f"pidfile {folder / 'chrony.pid'}\n"
            f"driftfile {folder / 'chrony.drift'}\n"
            f"{extra}"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> Chrony:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [_binary("chronyd"), "-x", "-d", "-u", "root", "-f", str(self.config)],  # -x: never the clock
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(lambda: self.command_socket.exists() and self.refclock_socket.exists() or self._died(), 15,
                   "chronyd -x to open its sockets")
        assert self.process.poll() is None, f"chronyd -x exited: {self.log()}"
        return self

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def chronyc(self, *command: str) -> str:
        done = subprocess.run([_binary("chronyc"), "-n", "-c", "-h", str(self.command_socket), *command],
                              capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, f"chronyc {' '.join(command)}: {done.stderr}"
        return done.stdout

    def source(self, name: str = "GPS") -> Source | None:
        """The source as `chronyc -c sources` and `sourcestats` show it, None if chrony lists none."""
        row = next((line.split(",") for line in self.chronyc("sources").splitlines()
                    if line.split(",")[2:3] == [name]), None)
        if row is None:
            return None
        stats = next((line.split(",") for line in self.chronyc("sourcestats").splitlines()
                      if line.split(",")[:1] == [name]), None)
        return Source(mode=row[0], state=row[1], name=row[2], reach=int(row[5], 8),
                      samples=int(stats[1]) if stats else 0)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self._log.close()
            self.process = None


class Gpsd:
    """`gpsd -N -n` reading one device (a pty), answering on a free loopback port."""

    def __init__(self, folder: Path, device: Path, port: int | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.port = port or free_port()
        self.control_socket = folder / "gpsd.sock"
        self.log_path = folder / "gpsd.log"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Gpsd:
        import socket

        self._log = open(self.log_path, "ab")
        # No -G: loopback only. Its own SHM key, so gpsds of parallel tests do not share their export.
        env = {**os.environ, "GPSD_SHM_KEY": hex(0x47500000 + random.randrange(0xFFFF))}
        self.process = subprocess.Popen(
            [_binary("gpsd"), "-N", "-n", "-b", "-S", str(self.port), "-F", str(self.control_socket),
             str(self.device)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )

        def listening() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"gpsd exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(listening, 15, f"gpsd to listen on {self.address}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self._log.close()
            self.process = None


def wait_reachable(chrony: Chrony, min_samples: int = 2, timeout: float = 30.0) -> Source:
    def reached() -> Source | None:
        source = chrony.source()
        return source if source and source.reach and source.samples >= min_samples else None

    return wait_until(reached, timeout, f"chrony to reach the GPS refclock; log: {chrony.log()[-400:]}")
