"""The MQTT publisher: one connection to the broker, kept up, with birth, will and session.

Threads: paho's network thread (one per connection, `loop_start()`), and our supervisor thread that
connects, waits for the connection to end and reconnects with exponential backoff and jitter (paho's
own reconnect has no jitter, so a hundred boxes behind one cell tower would retry in lockstep).

Two boxes with one box id (a cloned SD card, a copied config) take the connection from each other.
The one taken over does not fight: it reports it and waits a long, growing delay before it tries again
(its outbox keeps everything meanwhile). MQTT 5 brokers say so (DISCONNECT reason 0x8E); one that just
closes the socket (mosquitto before 2.0.15) is recognised by the status it leaves on our topic: at a
reconnect, the retained status belongs to another agent instance (`instance` in the status payload).

Every connection gets a fresh paho client: paho resends its in-memory queue on reconnect, but the
outbox is the store, so nothing of a dead connection may be sent twice behind its back.

paho callbacks only hand work over and return (STYLE: the network loop is someone else's thread):
publish results go to the core as `Delivered`, connection changes as `Connected`/`Disconnected`. Each
callback is wrapped so an exception is logged and never kills paho's thread.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__, statefile, untrusted
from agent.clock import Clock
from agent.config import Config, MqttSettings
from agent.errors import ConfigError
from agent.homeassistant import Announcer
from agent.linkmeter import LinkMeter
from agent.tlssession import client_context
from agent.tlswords import describe, pem_problem
from agent.topicalias import TopicAliases

log = logging.getLogger("boxtel.mqtt")

_CONNECT_TIMEOUT_S = 10.0
_STABLE_CONNECTION_S = 30.0  # a connection that lasted this long resets the backoff
_OFFLINE_ACK_WAIT_S = 2.0  # on stop: how long to wait for the broker to take our clean "offline"
# MQTT 5: the broker keeps our session this long after a link loss. A reconnect that finds it
# ("session present") knows the broker kept its state, retained topics included, and resends only what
# changed; after a longer outage, or a broker that lost it, everything goes out again.
SESSION_EXPIRY_S = 7 * 86400
_SAVE_ANNOUNCED = "save announced"  # a work item: write down what was announced, off paho's thread
_STATUS_MAX_BYTES = 1024  # a status is ~200 bytes; anything bigger on our status topic is not one
_BIRTH_REPUBLISH_S = 5.0  # at most one birth republished per this, however many statuses displace it
_STATUS_WARN_S = 60.0  # one warning per minute about them; the rest are counted
# Taken over by another client with our box id: wait 60-120 s, doubling up to 15-30 min while it goes on;
# a connection that then holds for an hour means the other box is gone.
_TAKEOVER_MIN_S = 120.0
_TAKEOVER_MAX_S = 1800.0
_TAKEOVER_FORGET_S = 3600.0
_SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason codes
_KEEPALIVE_TIMEOUT = 0x8D


def takeover_problem(box_id: str) -> str:
    return f"another client with box id {box_id} took over the connection: two boxes share this id?"


@dataclass(frozen=True)
class Connected:
    session: int
    resumed: bool = False  # the broker still had our MQTT session (MQTT 5 "session present")


@dataclass(frozen=True)
class Disconnected:
    session: int
    reason: str
    code: int | None = None  # the MQTT 5 reason code


@dataclass(frozen=True)
class Delivered:
    """The broker answered a publish. `error` is None on success, else the refusal."""

    session: int
    mid: int
    error: str | None


@dataclass(frozen=True)
class StatusSeen:
    """A message on the box's own status topic, as paho's thread hands it over: its fields, or None
    when it is not a small flat JSON object (then only its size is kept, never its bytes)."""

    fields: dict[str, Any] | None
    size: int
    retained: bool = False  # it was there before we subscribed (and published our birth)

    @classmethod
    def read(cls, payload: bytes, retained: bool = False) -> StatusSeen:
        try:
            return cls(untrusted.flat_object(payload, max_bytes=_STATUS_MAX_BYTES), len(payload), retained)
        except ValueError:
            return cls(None, len(payload), retained)

    def describe(self) -> str:
        if self.fields is None:
            return f"not a small flat JSON object ({self.size} bytes)"
        return (f"state {untrusted.printable(self.fields.get('state'))}, "
                f"session {untrusted.printable(self.fields.get('session'))}")


class StatusGuard:
    """Keeps the agent's current birth the retained status on its status topic.

    Anything else seen there -- a stale will arriving late, a forged will (even one carrying the live
    session), junk, an empty payload clearing it -- has displaced the birth, which is republished: at
    most once per `_BIRTH_REPUBLISH_S`, and once more after a burst if the burst ended on something
    else, so 5 000 forged wills cost two births, not 5 000. Warned about once per minute, the rest
    counted (`foreign_statuses`, `births_republished`).
    """

    def __init__(self, topic: str):
        self.topic = topic
        self.foreign = 0
        self.births_republished = 0
        self._displaced: StatusSeen | None = None  # the latest thing seen in our birth's place
        self._republish_at = 0.0  # monotonic: not before
        self._warn_at = 0.0
        self._unwarned = 0
        self._birth_back = False  # the broker has sent this connection's birth back to us

    def seen(self, status: StatusSeen, own: dict[str, Any], now: float) -> None:
        fields = status.fields
        if fields is not None and {k: v for k, v in fields.items() if k != "ts"} == own:
            self._displaced = None  # our birth (as published, bar its time) is what the broker keeps
            self._birth_back = True
            return
        if not self._birth_back:
            # Ahead of our birth's echo: published before it, so our birth has replaced it already. A
            # resumed MQTT session delivers the will of the connection that died just so.
            return
        self.foreign += 1
        self._displaced = status
        if now >= self._warn_at:
            more = f" ({self._unwarned} more since the last warning)" if self._unwarned else ""
            log.warning("the retained status on %s was replaced (%s)%s: republishing our birth (session %s), "
                        "at most once per %.0f s", self.topic, status.describe(), more, own.get("session"),
                        _BIRTH_REPUBLISH_S)
            self._warn_at, self._unwarned = now + _STATUS_WARN_S, 0
        else:
            self._unwarned += 1

    def republish_due(self, now: float, *, live: bool = True) -> bool:
        """True when the birth should go out now (the caller publishes it). Not `live` (stopping, the
        connection ending): nothing is due, and nothing stays pending to wake the caller for."""
        if self._unwarned and now >= self._warn_at:
            log.warning("%d more stale or foreign statuses on %s in the last minute; births republished so "
                        "far: %d (at most one per %.0f s)", self._unwarned, self.topic, self.births_republished,
                        _BIRTH_REPUBLISH_S)
            self._warn_at, self._unwarned = now + _STATUS_WARN_S, 0
        if not live:
            self._displaced = None
            return False
        if self._displaced is None or now < self._republish_at:
            return False
        self._displaced = None
        self._republish_at = now + _BIRTH_REPUBLISH_S
        self.births_republished += 1
        return True

    def wait_s(self, now: float) -> float | None:
        """How long the supervisor may wait for its next item before `republish_due()` has work."""
        deadlines = []
        if self._displaced is not None:
            deadlines.append(self._republish_at)
        if self._unwarned:
            deadlines.append(self._warn_at)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def new_connection(self) -> None:
        self._displaced = None  # a fresh birth goes out with every connection
        self._birth_back = False


def tls_context(settings: MqttSettings, *, file: str) -> ssl.SSLContext:
    """Build the TLS context, naming the key that holds a bad CA, certificate or key file."""
    pems = [("mqtt.ca_file", settings.ca_file), ("mqtt.cert_file", settings.cert_file),
            ("mqtt.key_file", settings.key_file if settings.cert_file else "")]
    for key, path in pems:
        problem = path and pem_problem(path, private_key=key == "mqtt.key_file")  # before OpenSSL's "PEM lib"
        if problem:
            raise ConfigError(problem, file=file, key=key)
    try:
        context = client_context(settings.ca_file or None)
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(f"cannot load CA file {settings.ca_file}: {err}", file=file, key="mqtt.ca_file") from None
    if settings.cert_file:
        try:
            context.load_cert_chain(settings.cert_file, settings.key_file, password=_no_passphrase)
        except (ssl.SSLError, OSError, ValueError) as err:
            if "KEY_VALUES_MISMATCH" in str(err):
                raise ConfigError(f"{settings.key_file} is not the private key of {settings.cert_file}",
                                  file=file, key="mqtt.key_file") from None
            raise ConfigError(
                f"cannot load client certificate {settings.cert_file} with key {settings.key_file}: {err}",
                file=file,
                key="mqtt.cert_file",
            ) from None
    if settings.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class Backoff:
    """Exponential backoff with "equal jitter": half the delay fixed, half random."""

    def __init__(self, min_s: float, max_s: float):
        self.min_s = min_s
        self.max_s = max_s
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.min_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


class Publisher:
    def __init__(self, config: Config, clock: Clock, notify: Callable[[Any], None]):
        self.config = config
        self.settings = config.mqtt
        self.clock = clock
        self._notify = notify
        self.base_topic = f"{self.settings.topic_prefix}/{config.box.id}"
        self.status_topic = f"{self.base_topic}/status"
        self._password = config.mqtt_password()
        self._tls = tls_context(self.settings, file=config.file) if self.settings.tls else None
        self._session_file = config.state_dir / "session.json"
        self._boot_id = read_boot_id()
        self._work: queue.SimpleQueue = queue.SimpleQueue()  # wake-ups for the supervisor
        # Discovery configs and state topics announced, retained: sent when they changed, taken back when gone.
        self.announcer = Announcer(config, __version__, request_save=lambda: self._work.put(_SAVE_ANNOUNCED))
        self._backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        self._takeover_backoff = Backoff(_TAKEOVER_MIN_S, _TAKEOVER_MAX_S)
        # Tells this process's statuses from those of another agent using the same box id.
        self.instance = os.urandom(4).hex()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._client_lock = threading.Lock()
        self.session = int(statefile.load(self._session_file).get("session", 0))
        self.connected = False
        self.connected_since: float | None = None  # monotonic
        self.connects = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.statuses = StatusGuard(self.status_topic)
        self.takeovers = 0
        self.last_takeover_mono: float | None = None
        self._taken_over = False  # the connection that just ended was taken over
        self._rival_seen = False  # a status of another instance was on our topic at a reconnect
        self._broker_leaving = False  # the broker sent us our own will: it is shutting down
        self._last_loss_counted = False  # the last connection loss was counted as a takeover
        # Read the retained status again at the next connect, even with the session resumed (see
        # _on_connect). Not after a link that went silent: a takeover closes a connection, never silences it.
        self._reread_status = False
        self._silence_noticed = False  # drop_link() ended the connection: a PUBACK never came
        self.last_error: str | None = None
        self.last_error_mono: float | None = None
        self.last_progress = time.monotonic()
        self.meter = LinkMeter()
        self._aliases = TopicAliases(0)
        self.topic_bytes: Callable[[str, int], None] = lambda topic, size: None  # the core's per-topic tally

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.protocol == "3.1.1":
            log.warning(
                "MQTT 3.1.1: a publish the broker refuses (ACL) is acknowledged like a success and "
                "cannot be detected; use protocol = \"5\""
            )
        self._thread = threading.Thread(target=self._supervise, name="mqtt-supervisor", daemon=True)
        self._thread.start()

    def stop(self, reason: str = "stopped", timeout_s: float = 3.0) -> None:
        """Publish a clean `offline` (waiting briefly for the broker to take it), then disconnect."""
        self._stopping.set()
        with self._client_lock:
            client, connected = self._client, self.connected
        if client is not None and connected:
            info = client.publish(self.status_topic, self._status_payload("offline", reason), qos=1, retain=True)
            try:
                info.wait_for_publish(_OFFLINE_ACK_WAIT_S)
            except (RuntimeError, ValueError) as err:
                log.warning("could not publish offline status: %s", err)
            client.disconnect()
        self._work.put("stop")
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self.announcer.save()  # acknowledgements that came in after the last save

    # -- called by the core ------------------------------------------------------------------------
    def publish(self, topic: str, payload: str, *, retain: bool) -> tuple[int, int] | None:
        """Hand one QoS 1 message to paho; returns (session, mid), or None when not connected."""
        with self._client_lock:
            client, session, connected = self._client, self.session, self.connected
        if client is None or not connected:
            return None
        name, properties = self._aliases.publish_args(topic)
        info = client.publish(name, payload, qos=1, retain=retain, properties=properties)
        self.topic_bytes(topic, len(payload) + len(name))
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return session, info.mid

    def drop_link(self, reason: str) -> None:
        """Treat the connection as dead (a publish waited too long for its PUBACK): close it and
        reconnect, without waiting for keep-alive to notice."""
        with self._client_lock:
            client, connected = self._client, self.connected
            self.connected = False  # nothing more for this connection; on_disconnect keeps our reason
        if client is not None and connected:
            self._record_error(f"connection lost: {reason}")
            self._silence_noticed = True
            client.disconnect()

    def alive(self) -> str | None:
        """For the systemd watchdog: None while the supervisor and, when connected, paho's thread run."""
        if self._thread is None or not self._thread.is_alive():
            return "the MQTT supervisor thread is not running"
        with self._client_lock:
            client, connected = self._client, self.connected
        # paho keeps its network thread in `_thread` from loop_start() to loop_stop().
        network = getattr(client, "_thread", None)
        if connected and (network is None or not network.is_alive()):
            return "paho's network thread is not running"
        return None

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "mqtt_connected": self.connected,
            "mqtt_connected_s": None if self.connected_since is None else round(now - self.connected_since),
            "mqtt_session": self.session,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "births_republished": self.statuses.births_republished,
            "foreign_statuses": self.statuses.foreign,
            "mqtt_last_error": self.last_error,
            "mqtt_takeovers": self.takeovers,
            "mqtt_takeover_ago_s": None if self.last_takeover_mono is None else round(now - self.last_takeover_mono),
            "mqtt_takeover_problem": takeover_problem(self.config.box.id) if self.takeovers else None,
        }

    # -- the supervisor thread ---------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self.last_progress = time.monotonic()
            started = time.monotonic()
            client = self._connect()
            if client is not None:
                self._wait_for_disconnect(client)
                lasted = time.monotonic() - started
                if lasted >= _STABLE_CONNECTION_S:
                    self._backoff.reset()
                if lasted >= _TAKEOVER_FORGET_S:
                    self._takeover_backoff.reset()
                    self._rival_seen = False
            if self._stopping.is_set():
                break
            if self._taken_over:
                self._taken_over = False
                delay = self._takeover_backoff.next_delay()
                log.warning("%s (%d times); not fighting over it: reconnecting in %.0f s, the outbox keeps "
                            "everything meanwhile", takeover_problem(self.config.box.id), self.takeovers, delay)
            else:
                delay = self._backoff.next_delay()
                log.info("reconnecting in %.1f s", delay)
            self._sleep(delay)

    def _connect(self) -> mqtt.Client | None:
        self.session += 1
        try:
            statefile.save(self._session_file, {"session": self.session})
        except OSError as err:
            # A full or read-only state dir must not stop publishing (the outbox reports it in health).
            log.warning("cannot save the session counter %s: %s", self._session_file, err.strerror or err)
        client = self._new_client(self.session)
        if self.settings.tls_insecure:
            log.warning("TLS certificate verification is OFF (mqtt.tls_insecure = true): the broker is not authenticated")
        try:
            client.connect(
                self.settings.host,
                self.settings.effective_port,
                keepalive=self.settings.keepalive_s,
                **({"clean_start": False, "properties": _session_properties()} if self._v5 else {}),
            )
        except (OSError, ssl.SSLError, ValueError) as err:
            self._record_error(f"cannot connect to {self.settings.host}:{self.settings.effective_port}: "
                               f"{describe(err, tls=self._tls is not None)}")
            self.connect_failures += 1
            return None
        with self._client_lock:
            self._client = client
        client.loop_start()
        return client

    def _wait_for_disconnect(self, client: mqtt.Client) -> None:
        self.statuses.new_connection()
        while True:
            try:
                item = self._work.get(timeout=self.statuses.wait_s(time.monotonic()))
            except queue.Empty:
                item = None
            self.last_progress = time.monotonic()
            if item == "stop":
                break
            if isinstance(item, Disconnected) and item.session == self.session:
                if not self._stopping.is_set():
                    self._classify_loss(item)
                break
            if isinstance(item, StatusSeen) and item.retained:
                self._check_rival(item)
            elif item is None or isinstance(item, StatusSeen):  # None: a republish or warning is due
                self._check_status(client, item)
            elif item == _SAVE_ANNOUNCED:
                self.announcer.save()
        client.loop_stop()

    def _classify_loss(self, item: Disconnected) -> None:
        """Was the connection taken over by another client with our box id?"""
        # A broker that just closes the socket: another box with our id was seen at a recent reconnect.
        suspect = self._rival_seen and not self._broker_leaving and item.code != _KEEPALIVE_TIMEOUT
        self._last_loss_counted = item.code == _SESSION_TAKEN_OVER or suspect
        if self._last_loss_counted:
            self._took_over()

    def _took_over(self, *, wait: bool = True) -> None:
        self.takeovers += 1
        self.last_takeover_mono = time.monotonic()
        self._taken_over = wait
        if wait:  # the supervisor logs it, with the wait
            self.last_error, self.last_error_mono = takeover_problem(self.config.box.id), self.last_takeover_mono
        else:
            self._record_error(takeover_problem(self.config.box.id))

    def _check_rival(self, status: StatusSeen) -> None:
        """The status that was on our topic before our birth (we subscribe first). Another instance's,
        after a reconnect of ours: another client with our box id held the connection meanwhile (a broker
        without reason 0x8E closed ours without saying why). At our first connect it is our predecessor's."""
        other = (status.fields or {}).get("instance")
        if isinstance(other, str) and other != self.instance and self.connects > 1:
            if not self._last_loss_counted:
                self._took_over(wait=False)  # the loss before this connection, recognised now
            self._rival_seen = True

    def _check_status(self, client: mqtt.Client, status: StatusSeen | None) -> None:
        """Something other than our birth is on our status topic: publish the birth again (rate limited)."""
        now = time.monotonic()
        if status is not None and status.fields is not None and \
                status.fields == {**self._status_fields("offline", "connection lost"), "ts": status.fields.get("ts")}:
            self._broker_leaving = True  # our own will, sent to us: brokers send them all as they shut down
        live = self.connected and not self._stopping.is_set()  # else: our own clean "offline", or the end
        if status is not None and live:
            self.statuses.seen(status, self._status_fields("online"), now)
        if self.statuses.republish_due(now, live=live):
            client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)

    def _sleep(self, delay: float) -> None:
        deadline = time.monotonic() + delay
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                if self._work.get(timeout=remaining) == "stop":
                    return
            except queue.Empty:
                return

    # -- paho client and its callbacks (paho's thread: hand over, never block) ---------------------
    @property
    def _v5(self) -> bool:
        return self.settings.protocol == "5"

    def _new_client(self, session: int) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.config.box.id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
            **({} if self._v5 else {"clean_session": True}),
        )
        client.connect_timeout = _CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(self.settings.inflight + 2)  # + birth and offline status
        client.username_pw_set(self.config.username, self._password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
            if self.settings.tls_insecure:
                client.tls_insecure_set(True)
        will_props = None
        if self._v5:
            will_props = Properties(PacketTypes.WILLMESSAGE)
            will_props.ContentType = "application/json"
        client.will_set(
            self.status_topic,
            self._status_payload("offline", "connection lost", session=session),
            qos=1,
            retain=True,
            properties=will_props,
        )
        client.on_connect = self._guard(functools.partial(self._on_connect, session))
        client.on_disconnect = self._guard(functools.partial(self._on_disconnect, session))
        client.on_publish = self._guard(functools.partial(self._on_publish, session))
        client.on_message = self._guard(self._on_message)
        client.on_socket_open = self._guard(lambda client, userdata, sock: self.meter.opened(sock))
        client.on_socket_close = self._guard(lambda client, userdata, sock: self.meter.closed(sock))
        return client

    def _guard(self, callback: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception:  # noqa: BLE001 - an exception here would kill paho's network thread
                log.exception("error in MQTT callback %s", getattr(callback, "__name__", callback))
                self._record_error("internal error in MQTT callback (see log)")

        return guarded

    def _on_connect(self, session: int, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._record_error(f"broker refused the connection: {reason_code}")
            self.connect_failures += 1
            return
        if self._tls is not None:
            self._tls.remember(client.socket())  # the next reconnect resumes this TLS session
        resumed = bool(getattr(flags, "session_present", False)) and self._v5
        maximum = getattr(properties, "TopicAliasMaximum", 0) if self._v5 and properties is not None else 0
        self._aliases = TopicAliases(maximum)  # before `connected`: the core publishes through it
        self._broker_leaving = False
        # Subscribed before the birth: the retained status the broker returns is the one from before it
        # (another instance's, if one took our id over meanwhile). A resumed session holds the
        # subscription already, and the read (~0.6 kB) is repeated only after the broker's side ended the
        # connection: on a broker that does not send reason 0x8E that is all a takeover looks like, and
        # reading the status is the only way to see the rival. A link that went silent (keep-alive or a
        # missing PUBACK noticed here: the common flap on a cellular or satellite link) needs no read.
        # QoS 0: a check while connected, not a record -- no PUBACK for our birth's echo, and no copy of
        # the dead connection's will kept for us.
        if not resumed or self._reread_status:
            client.subscribe(self.status_topic, qos=0)
        # The birth is queued before `connected` lets the core publish: nothing of a session may reach
        # the broker ahead of its birth.
        client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
        self.announcer.connected(client)
        with self._client_lock:
            self.connected = True
        self.connected_since = time.monotonic()
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        log.info("connected to %s:%d (session %d)", self.settings.host, self.settings.effective_port, session)
        if not resumed:  # a resumed session still holds this subscription
            self.announcer.subscribe(client)
        self._notify(Connected(session, resumed))

    def _on_disconnect(self, session: int, client, userdata, flags, reason_code, properties) -> None:
        with self._client_lock:
            was_connected = self.connected
            self.connected = False
        self.connected_since = None
        reason = str(reason_code)
        code = getattr(reason_code, "value", None)
        if was_connected or self._silence_noticed:
            self._reread_status = not (self._silence_noticed or code == _KEEPALIVE_TIMEOUT)
        self._silence_noticed = False
        if was_connected and not self._stopping.is_set():
            self._record_error(f"connection lost: {reason}")
        self._work.put(Disconnected(session, reason, code))
        self._notify(Disconnected(session, reason, code))

    def _on_publish(self, session: int, client, userdata, mid, reason_code, properties) -> None:
        error = f"{reason_code} (0x{reason_code.value:02x})" if reason_code.is_failure else None
        if self.announcer.acknowledged(mid, error):
            if error:
                self._record_error(f"broker refused Home Assistant discovery: {error} (see docs/mqtt.md for the ACL)")
            return
        self._notify(Delivered(session, mid, error))

    def _on_message(self, client, userdata, message) -> None:
        if self.announcer.message(client, message):  # Home Assistant's birth
            return
        self._work.put(StatusSeen.read(message.payload, retained=bool(message.retain)))  # else our status topic

    # -- helpers -----------------------------------------------------------------------------------
    def _status_payload(self, state: str, reason: str | None = None, *, session: int | None = None) -> str:
        # "state" stays the first key, "ts" the second, as ever.
        payload = {"state": state, "ts": self.clock.iso_now(), **self._status_fields(state, reason, session=session)}
        return json.dumps(payload, separators=(",", ":"))

    def _status_fields(self, state: str, reason: str | None = None, *, session: int | None = None) -> dict[str, Any]:
        """A status but its time: what `StatusGuard` recognises as our own."""
        payload = {
            "state": state,
            "version": __version__,
            "site": self.config.box.site,
            "boot_id": self._boot_id,
            "session": self.session if session is None else session,
            "instance": self.instance,
        }
        if reason:
            payload["reason"] = reason
        return payload

    def _record_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s", message)
        self.last_error = message
        self.last_error_mono = time.monotonic()


def _session_properties() -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = SESSION_EXPIRY_S
    return properties


def _no_passphrase() -> str:
    """OpenSSL would otherwise ask for an encrypted key's passphrase on the terminal (or hang a daemon)."""
    raise ValueError("the private key is protected by a passphrase")
