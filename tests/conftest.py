"""Shared fixtures: real mosquitto brokers, config files, subscribers, agent processes, certificates."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.devbroker import Broker
from tests.support import AgentProcess, Pty, Subscriber, deep_merge, toml_dumps


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Start a mosquitto of your own (ACL, passwords, TLS); every one is stopped by its pid."""
    brokers: list[Broker] = []

    def make(**options: Any) -> Broker:
        broker = Broker(tmp_path / f"broker{len(brokers)}", **options).start()
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    """A plain loopback mosquitto on a free port, anonymous, no ACL."""
    return make_broker()


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Write an agent config for `broker` (fast reconnects, a private state dir); `extra` is merged in,
    a None value removes a key."""
    count = [0]

    def make(broker: Broker | None = None, extra: dict[str, Any] | None = None, name: str | None = None) -> Path:
        count[0] += 1
        base: dict[str, Any] = {
            "box": {"id": "test-001", "site": "Testville", "state_dir": str(tmp_path / "state")},
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port if broker else 1,
                "keepalive_s": 5,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 2.0,
            },
            "diagnostics": {"socket": str(tmp_path / "control.sock")},
        }
        path = tmp_path / (name or f"agent{count[0]}.toml")
        path.write_text(toml_dumps(deep_merge(base, extra or {})))
        return path

    return make


@pytest.fixture
def subscribe(broker: Broker) -> Iterator[Callable[..., Subscriber]]:
    subscribers: list[Subscriber] = []

    def make(topics: str | list[str] = "boxtel/#", target: Broker | None = None, **options: Any) -> Subscriber:
        subscriber = Subscriber((target or broker).port, topics, **options)
        subscribers.append(subscriber)
        return subscriber

    yield make
    for subscriber in subscribers:
        subscriber.close()


@pytest.fixture
def run_agent() -> Iterator[Callable[..., AgentProcess]]:
    """Start `boxtel run` as a real process; whatever is left running is killed by its pid."""
    agents: list[AgentProcess] = []

    def start(config: Path, *extra: str, **options: Any) -> AgentProcess:
        agent = AgentProcess(config, *extra, **options)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.close()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a broker certificate for 127.0.0.1/localhost, a client certificate, and an unrelated CA."""
    folder = tmp_path_factory.mktemp("certs")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", f"/CN=boxtel test {ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn, ext in (("server", "localhost", ["-extfile", "server.ext"]), ("client", "test-001", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "30", "-out", f"{name}.crt", *ext)
    for key in folder.glob("*.key"):
        key.chmod(0o600)
    return {p.stem.replace("-", "_") + "_" + p.suffix[1:]: p for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def make_pty(tmp_path: Path) -> Iterator[Callable[..., Pty]]:
    """A pseudo-terminal for a serial driver, behind a symlink the config points at; closed at the end."""
    ptys: list[Pty] = []

    def make(name: str = "gps0") -> Pty:
        pty = Pty(tmp_path / name)
        ptys.append(pty)
        return pty

    yield make
    for pty in ptys:
        pty.close()


@pytest.fixture
def mock_pins() -> Iterator[Any]:
    """gpiozero's MockFactory -- the one GPIO drivers get with gpio.pin_factory = "mock" -- with fresh pins."""
    from drivers.gpio import pin_factory
    from drivers.gpio_sim import reset_mock_hardware
    from tests.gpio_support import close_rigs

    factory = pin_factory("mock")
    reset_mock_hardware(factory)
    yield factory
    close_rigs()
    reset_mock_hardware(factory)
