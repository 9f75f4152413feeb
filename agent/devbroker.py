"""A private mosquitto on loopback, for `make demo`, the tests and the benchmarks.

Each broker gets its own folder and config file (listener, ACL, passwords, TLS) and is stopped by
its pid. Not used by the agent itself.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

_START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class BrokerError(RuntimeError):
    pass


class Broker:
    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        acl: str | None = None,
        passwords: dict[str, str] | None = None,
        tls: dict[str, str] | None = None,
        extra: list[str] | None = None,
        persistence: bool = False,
    ):
        """`acl`: ACL file text; `passwords`: user -> password (anonymous refused when given);
        `tls`: {"cafile", "certfile", "keyfile"} and optionally "require_certificate": "true";
        `persistence`: retained messages and sessions kept across a restart (in the workdir), as a
        production broker keeps them."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.acl = acl
        self.passwords = passwords
        self.tls = tls
        self.extra = extra or []
        self.persistence = persistence
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def ports(self) -> list[int]:
        """Every TCP port this broker listens on (the main one and any `listener` lines in `extra`)."""
        extra = [int(line.split()[1]) for line in self.extra if line.startswith("listener ")]
        return [self.port, *extra]

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(binary):
            raise BrokerError("mosquitto is not installed (apt-get install -y mosquitto mosquitto-clients)")
        conf = self._write_config()
        with open(self.log_path, "ab") as log:
            # Own session: a Ctrl-C meant for the caller must not kill the broker before the agent's goodbye.
            self.process = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"mosquitto exited at start: {self.log_path.read_text()[-2000:]}")
            if all(port_in_use(port) for port in self.ports):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {_START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            *(["persistence true", f"persistence_location {self.workdir}/"] if self.persistence
              else ["persistence false"]),
            f"user {getpass.getuser()}",  # as root mosquitto would switch to "mosquitto" and lose our files
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.passwords is not None:
            password_file = self.workdir / "passwords"
            password_file.write_text("")
            os.chmod(password_file, 0o600)
            for user, password in self.passwords.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(password_file), user, password], check=True, capture_output=True
                )
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl_file = self.workdir / "acl"
            acl_file.write_text(self.acl)
            lines.append(f"acl_file {acl_file}")
        if self.tls:
            lines += [
                f"cafile {self.tls['cafile']}",
                f"certfile {self.tls['certfile']}",
                f"keyfile {self.tls['keyfile']}",
            ]
            if self.tls.get("require_certificate") == "true":
                lines += ["require_certificate true", "use_identity_as_username true"]
        lines += self.extra
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf
