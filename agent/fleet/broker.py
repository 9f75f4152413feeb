"""The broker a fleet-side command talks to: `--broker mqtt://host:port` or `mqtts://host:port`.

Shared by `boxtel fleet` and `boxtel simulate-fleet`. Without `--broker`, the host, port, TLS and CA of
the config's `[mqtt]` section are used when a config file exists, else mqtt://127.0.0.1:1883. A box's
credentials are never borrowed: the broker binds them to that box (and its ACL would hide the rest of
the fleet anyway), so a console logs in with `--username` / `--password-file` of its own.
"""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from agent.config import DEFAULT_PATH
from agent.errors import ConfigError, UsageError
from agent.secretfile import read_secret

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_READ_AHEAD_BYTES = 1 << 16
# The paho minor version BufferedClient's overrides of private methods were checked against (setup.cfg
# pins it; tests/test_fleet.py fails on another).
PAHO_TESTED = "2.2"


@dataclass
class BrokerTarget:
    host: str
    port: int
    tls: bool
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log or a traceback
    prefix: str = "boxtel"
    _tls_context: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def configure(self, client: mqtt.Client) -> None:
        """Credentials and TLS on a paho client (TLS always verifies: no insecure mode here)."""
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            if self._tls_context is None:  # one for all clients: simulate-fleet makes thousands
                try:
                    self._tls_context = ssl.create_default_context(cafile=self.ca_file)
                except (ssl.SSLError, OSError) as err:
                    raise ConfigError(f"cannot load CA file {self.ca_file}: {err}", key="--ca") from None
            client.tls_set_context(self._tls_context)


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """`mqtt://host[:port]` or `mqtts://host[:port]` -> (host, port, tls); UsageError (64) otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise UsageError(f"--broker {url!r}: {err}") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise UsageError(f"--broker {url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(
            f"--broker {url!r}: only scheme, host and port belong in the URL "
            "(credentials go in --username / --password-file)"
        )
    return parts.hostname, port or _DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts"


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", metavar="URL",
                        help="mqtt://HOST:PORT or mqtts://HOST:PORT (default: the config's [mqtt], "
                             "else mqtt://127.0.0.1:1883)")
    parser.add_argument("--ca", metavar="FILE", help="CA bundle for mqtts (default: the system's CAs)")
    parser.add_argument("--username", metavar="NAME", help="MQTT username")
    parser.add_argument("--password-file", metavar="FILE",
                        help="file holding the MQTT password (mode 0600, owned by you)")
    parser.add_argument("--prefix", metavar="TOPIC", help="topic prefix (default: the config's, else boxtel)")


def broker_target(args: argparse.Namespace) -> BrokerTarget:
    """Resolve the broker from the command line, then the config, then the defaults."""
    target = BrokerTarget("127.0.0.1", 1883, False)
    config_path = getattr(args, "config", DEFAULT_PATH)
    explicit_config = config_path != DEFAULT_PATH
    if args.broker is None and (explicit_config or os.path.exists(config_path)):
        from agent.config import load

        mqtt_settings = load(config_path).mqtt
        target = BrokerTarget(
            mqtt_settings.host, mqtt_settings.effective_port, mqtt_settings.tls,
            ca_file=mqtt_settings.ca_file or None, prefix=mqtt_settings.topic_prefix,
        )
    elif args.broker is not None:
        host, port, tls = parse_broker_url(args.broker)
        target = BrokerTarget(host, port, tls)
    if args.ca:
        if not os.path.isfile(args.ca):
            raise UsageError(f"--ca {args.ca}: no such file")
        target.ca_file = args.ca
    if args.username is not None:
        target.username = args.username
    if args.password_file:
        if args.username is None:
            raise UsageError("--password-file needs --username")
        target.password = read_secret(args.password_file, file="", key="--password-file")
    if args.prefix is not None:
        if not args.prefix or any(c in args.prefix for c in "+#") or args.prefix.strip("/") != args.prefix:
            raise UsageError(f"--prefix {args.prefix!r}: a topic without wildcards or leading/trailing '/'")
        target.prefix = args.prefix
    return target


class BufferedClient(mqtt.Client):
    """A paho client with buffered socket I/O, for an external network loop at thousands of messages a
    second. paho reads each packet with three to five recv() calls (type, every length byte, body) and
    writes each PUBACK with its own send(); those system calls are a large share of a consumer's time
    (bench/fleet.py). Here reads come from a 64 KiB read-ahead, and writes collect until the loop calls
    `flush_writes()` once per round. The loop must drain `read_ahead` before waiting in select() (paho's
    own loop would sleep on a socket whose data already sits here), and flush at the end of each round.

    paho 2.x offers no public hook for its socket I/O, so this overrides its private `_sock_recv` and
    `_sock_send`: paho is pinned to the minor version they were checked against (PAHO_TESTED).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._ahead = b""
        self._ahead_pos = 0
        self._behind = bytearray()
        self.write_behind = True

    @property
    def read_ahead(self) -> int:
        """Bytes already read from the socket and not yet parsed by paho."""
        return len(self._ahead) - self._ahead_pos

    @property
    def write_pending(self) -> int:
        return len(self._behind)

    def flush_writes(self) -> None:
        """Hand the collected writes to the socket; what it cannot take now stays for the next round."""
        if self._behind and self._sock is not None:
            try:
                sent = super()._sock_send(bytes(self._behind))
            except (BlockingIOError, ConnectionError):
                return  # the read side notices a dead connection
            del self._behind[:sent]

    def reconnect(self) -> mqtt.MQTTErrorCode:
        # Bytes of a dead connection must not reach the new one.
        self._ahead, self._ahead_pos = b"", 0
        self._behind.clear()
        return super().reconnect()

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._ahead_pos >= len(self._ahead):
            self._ahead = super()._sock_recv(_READ_AHEAD_BYTES)  # b"" at EOF; raises when nothing is there
            self._ahead_pos = 0
        start = self._ahead_pos
        self._ahead_pos = min(start + bufsize, len(self._ahead))
        return self._ahead[start:self._ahead_pos]

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if not self.write_behind:
            return super()._sock_send(buf)
        self._behind += buf
        return len(buf)
