"""The agent's core: one thread that owns timestamps, sequence numbers, rate limits and the outbox.

Drivers put readings and events on the bus from their own threads; the publisher puts connection
changes and publish results there from paho's thread. The core takes them off one at a time, so the
outbox (SQLite) has a single writer and needs no locks. Between items the core sleeps until its next
deadline -- a held reading, a max-interval re-send, a grouped commit -- so an idle agent stays asleep.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from agent import __version__, statelock
from agent.bus import Bus, Event, Reading
from agent.clock import Clock
from agent.config import Config
from agent.control import ControlServer
from agent.errors import BoxtelError, ConfigError
from agent.linkbudget import HEALTH_SAVING, HISTORY_SAVING, LinkBudget, max_interval_at
from agent.outbox import EVENT, HISTORY, LIVE, Outbox, OutboxError
from agent.publisher import Connected, Delivered, Disconnected, Publisher
from agent.replay import ReplayPacer
from agent.sdnotify import Notifier, Watchdog, watchdog_interval_s
from agent.throttle import INF, StreamSettings, StreamThrottle
from drivers import driver_class
from drivers.base import Driver, DriverContext

log = logging.getLogger("boxtel.core")

HEALTH = "health"
_AGENT_HEALTH_INTERVAL_S = 60.0  # health without a [host] section: agent figures only, looked at this often
_AGENT_HEALTH = StreamSettings(min_interval_s=60.0)  # ... sent at most once a minute, at least hourly
# Health figures of the core that are no reason to send health on their own (they ride along with the
# next send): they change all the time, or something else already told (a reconnect has its birth).
_HEALTH_RIDES_ALONG = ("agent_uptime_s", "outbox_depth", "outbox_oldest_s", "outbox_bytes", "replay_rate",
                       "reconnects", "mqtt_last_error")
_HEALTH_DEADBAND = {"clock_offset_s": 1.0}
_HEALTH_TRIGGERS = ("dropped", "publish_errors")
_STOP_DELIVERY_S = 1.0  # on stop: time given to deliver what is pending before "offline"
_REFUSED_RETRY_MIN_S = 30.0
_REFUSED_RETRY_MAX_S = 3600.0
_DISK_RETRY_S = 10.0  # outbox in memory after a disk failure: try the disk again this often
_LINK_SAMPLE_S = 60.0  # the link meter is read and booked this often


@dataclass(frozen=True)
class _Stop:
    reason: str


class _Tick:
    """The watchdog asks: is the core loop still taking items off the bus?"""


_TICK = _Tick()


@dataclass(frozen=True)
class _CoreCall:
    """A function to run on the core's thread (which alone touches the outbox), for another thread."""

    fn: Callable[[], Any]
    result: Future


class Agent:
    def __init__(self, config: Config, *, clock: Clock | None = None):
        self.config = config
        self.clock = clock or Clock()
        self.bus = Bus()
        self.started_mono = time.monotonic()
        self.base_topic = f"{config.mqtt.topic_prefix}/{config.box.id}"
        # First of all: a second agent on this state dir stops here, before it touches the outbox.
        try:
            self.state_lock = statelock.acquire(config.state_dir)
        except OSError as err:
            # A read-only or failing state dir: the outbox runs in memory and says so; telemetry goes on.
            log.warning("cannot lock the state dir %s (%s): a second agent on it would not be stopped",
                        config.state_dir, err.strerror or err)
            self.state_lock = statelock.StateLock(-1, config.state_dir / statelock.LOCK_FILE)
        try:
            self._build(config)
        except BaseException:
            self.state_lock.release()
            raise

    def _build(self, config: Config) -> None:
        try:
            self.outbox = Outbox(config.state_dir / "outbox.db", max_bytes=int(config.outbox.max_mb * 2**20),
                                 counters=_counters(config))
        except OutboxError as err:
            raise ConfigError(str(err), file=config.file, key="box.state_dir") from None
        self.publisher = Publisher(config, self.clock, self.bus.put)
        self.link = LinkBudget(config.link.budget_mb_month, config.state_dir / "link.json")
        self.publisher.topic_bytes = self._tally_topic
        self._link_at = time.monotonic()
        self._dropping: int | None = None  # the session given up for a missing PUBACK
        self._on_broker: dict[str, dict[str, Any]] = {}  # stream -> values the broker acknowledged, retained
        self._live_state: dict[int, tuple[str, dict[str, Any]]] = {}  # seq -> (stream, values), LIVE in flight
        self._throttle_base: dict[str, tuple[float, float, dict[str, float]]] = {}
        self.publisher.reconnects = int(self.outbox.counters.get((HEALTH, "reconnects"), 0))
        self.simulation = None
        if config.simulate:
            from drivers.simulator import Simulation

            self.simulation = Simulation(config)
        self.drivers: list[Driver] = []
        self.throttles: dict[str, StreamThrottle] = {}
        self._stream_mono: dict[str, float] = {}  # mono of each stream's latest reading
        self._history_mono: dict[str, float] = {}
        self._inflight: dict[tuple[int, int], tuple[int, int, float]] = {}  # (session, mid) -> (seq, prio, mono)
        self.replay = ReplayPacer(config.outbox.replay_rate, config.mqtt.inflight)
        self._disk_retry_at: float | None = None
        self._ready_session: int | None = None  # the session whose current state went out first
        self._refused: dict[int, tuple[float, float]] = {}  # seq -> (retry at, current delay)
        self._flush_at: float | None = None
        self._health_at: float | None = None
        self._stopping = False
        self.publish_errors = 0
        self.last_publish_error: str | None = None
        self.last_progress = time.monotonic()
        self.notifier = Notifier()
        self.watchdog: Watchdog | None = None
        self.control = ControlServer(self, config.diagnostics.socket, config.diagnostics.group)

    # -- lifecycle ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Run until SIGTERM/SIGINT or `request_stop()`; always stops cleanly."""
        self._install_signal_handlers()
        try:
            self.start()
            self._loop()
        finally:
            self.stop()

    def start(self) -> None:
        if self.simulation is not None:
            self.simulation.prepare()
        for entry in self.config.drivers:
            cls = driver_class(entry.section)
            ctx = DriverContext(
                cls.instance_name(entry.config),
                stream=cls.stream_name(entry.config),
                bus=self.bus,
                clock=self.clock,
                state_dir=self.config.state_dir,
                simulate=self.config.simulate,
                settings=self.config.sections,
                counters={field: value for (stream, field), value in self.outbox.counters.items()
                          if stream == cls.stream_name(entry.config)},
            )
            driver = cls(entry.config, ctx)
            settings = entry.config if isinstance(entry.config, StreamSettings) else StreamSettings()
            self.throttles[ctx.stream] = StreamThrottle(settings)
            self.drivers.append(driver)
        if HEALTH not in self.throttles:
            self.throttles[HEALTH] = StreamThrottle(_AGENT_HEALTH)
            self._health_at = time.monotonic()
        health = self.throttles[HEALTH]
        health.deadband = {**dict.fromkeys(_HEALTH_RIDES_ALONG, INF), **_HEALTH_DEADBAND, **health.deadband}
        self._throttle_base = {stream: (t.min_interval_s, t.max_interval_s, dict(t.deadband))
                               for stream, t in self.throttles.items()}
        self.publisher.start()
        for driver in self.drivers:
            try:
                driver.start()
            except BoxtelError:
                raise
            except Exception as err:  # noqa: BLE001 - one broken driver must not stop the others
                log.exception("driver %s failed to start", driver.ctx.name)
                driver.ctx.error("start_failed", f"failed to start: {err}")
        if self.simulation is not None:
            self.simulation.start(self)
        self.control.start()
        self._start_systemd_notify()
        log.info(
            "boxtel %s running as %s with %s%s", __version__, self.config.box.id,
            ", ".join(d.ctx.name for d in self.drivers) or "no drivers",
            " (simulated hardware)" if self.config.simulate else "",
        )

    def request_stop(self, reason: str = "stopped") -> None:
        self.bus.put(_Stop(reason))

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.notifier.send("STOPPING=1", "STATUS=stopping")
        if self.watchdog is not None:
            self.watchdog.stop()
        for driver in self.drivers:
            try:
                driver.stop()
            except Exception:  # noqa: BLE001
                log.exception("driver %s failed to stop cleanly", driver.ctx.name)
        # Simulated hardware goes after the drivers: a receiver unplugged first would make every stop
        # publish fix_lost / gps_disconnected and a retained no-fix position.
        if self.simulation is not None:
            self.simulation.stop()
        self._drain_bus()
        self.control.stop()
        self._deliver_pending(_STOP_DELIVERY_S)
        self.publisher.stop("stopped")
        self._drain_bus()
        self._book_link(time.monotonic())
        self.link.save()
        self.outbox.close()
        self.notifier.close()
        self.state_lock.release()
        log.info("stopped")

    def _start_systemd_notify(self) -> None:
        """READY=1 once drivers and outbox are up; the watchdog when the unit sets WatchdogSec."""
        interval = watchdog_interval_s()
        if interval is not None and self.notifier.enabled:
            checks = [self.publisher.alive, self.control.alive, *(driver.alive for driver in self.drivers)]
            self.watchdog = Watchdog(self.notifier, interval, request_tick=lambda: self.bus.put(_TICK), checks=checks)
            self.watchdog.start()
        self.notifier.send("READY=1", f"STATUS={self.status_line()}")

    def status_line(self) -> str:
        """One line for `systemctl status`: link, outbox, clock, alarms."""
        link = "online" if self.publisher.connected else f"offline ({self.publisher.last_error or 'connecting'})"
        alarms = sorted(a for d in self.drivers for a in d.ctx.active_alarms())
        return (
            f"{link}; outbox {self.outbox.depth} pending{'' if self.outbox.durable else ' IN MEMORY'}; "
            f"clock {self.clock.source()}; "
            f"alarms: {', '.join(alarms) or 'none'}"
        )

    # -- the core loop -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            item = self.bus.get(timeout=self._sleep_s())
            self.last_progress = time.monotonic()
            while item is not None:
                if isinstance(item, _Stop):
                    log.info("stopping (%s)", item.reason)
                    return
                self._handle(item)
                item = self.bus.get_nowait()
            self._run_timers()

    def _handle(self, item: Any) -> None:
        if isinstance(item, Reading):
            self._on_reading(item)
        elif isinstance(item, Event):
            self._on_event(item)
        elif isinstance(item, Delivered):
            self._on_delivered(item)
        elif isinstance(item, Connected):
            self._ready_session = item.session
            self._book_link(time.monotonic())  # what the connect cost shows in the first health
            self._on_connected(item.resumed)
        elif isinstance(item, Disconnected):
            self._on_disconnected(item)
        elif isinstance(item, _Tick) and self.watchdog is not None:
            self.watchdog.tick_answered(self.status_line())
        elif isinstance(item, _CoreCall):
            _run_call(item)

    def _run_timers(self) -> None:
        now = time.monotonic()
        for stream, throttle in self.throttles.items():
            if throttle.next_due() <= now:
                values = throttle.due(now)
                if values is not None:
                    # A held change keeps its own time; a max-interval re-send is a fresh report.
                    self._accept_reading(stream, values, now)
        if self._health_at is not None and now >= self._health_at:
            self._health_at = now + _AGENT_HEALTH_INTERVAL_S
            self._on_reading(Reading(HEALTH, {}, now))
        if self._flush_at is not None and now >= self._flush_at:
            self._commit()
        if now >= self._link_at:
            self._link_at = now + _LINK_SAMPLE_S
            self._book_link(now)
        if (oldest := self._oldest_unacked()) is not None and now - oldest >= self.config.mqtt.ack_timeout_s \
                and self._dropping != self.publisher.session:
            # A half-open link keeps quiet until keep-alive (minutes on a metered link) notices; an event
            # waiting for its PUBACK must not wait that long: give the link up and reconnect now.
            self._dropping = self.publisher.session
            self.publisher.drop_link(f"no PUBACK for {now - oldest:.0f} s")
        if not self.outbox.durable:
            if self._disk_retry_at is None:
                self._disk_retry_at = now + _DISK_RETRY_S
            elif now >= self._disk_retry_at:
                self._disk_retry_at = None if self.outbox.retry_disk() else now + _DISK_RETRY_S
        self._fill_window()

    def _sleep_s(self) -> float:
        deadlines = [t.next_due() for t in self.throttles.values()]
        now = time.monotonic()
        # Only retries still ahead: a due one is taken by the next _fill_window (or waits for a
        # connection), and a deadline in the past would spin the core until then.
        deadlines += [at for at, _ in self._refused.values() if at > now]
        if self._flush_at is not None:
            deadlines.append(self._flush_at)
        if self._health_at is not None:
            deadlines.append(self._health_at)
        if self._disk_retry_at is not None:
            deadlines.append(self._disk_retry_at)
        deadlines.append(self._link_at)
        if (oldest := self._oldest_unacked()) is not None and self._dropping != self.publisher.session:
            deadlines.append(oldest + self.config.mqtt.ack_timeout_s)
        if self.publisher.connected and (replay_at := self.replay.next_at()) is not None:
            deadlines.append(replay_at)
        soonest = min(deadlines, default=float("inf"))
        return max(0.0, min(soonest - now, 3600.0))

    # -- readings and events -----------------------------------------------------------------------
    def _on_reading(self, reading: Reading) -> None:
        throttle = self.throttles.get(reading.stream)
        if throttle is None:
            log.error("reading for unknown stream %r dropped", reading.stream)
            return
        self._stream_mono[reading.stream] = reading.mono
        offered = reading.values
        if reading.stream == HEALTH:
            offered = {**offered, **self._health_offer(throttle)}
        values = throttle.offer(offered, reading.mono, reading.force)
        if values is not None:
            self._accept_reading(reading.stream, values, reading.mono)

    def _accept_reading(self, stream: str, values: dict[str, Any], mono: float) -> None:
        if self.publisher.connected:
            prio = LIVE
        else:
            # Offline: keep one reading per stream per history interval; the latest is still known
            # (the throttle has it) and becomes the retained state on reconnect.
            last = self._history_mono.get(stream)
            saving = HISTORY_SAVING if self.link.step >= 1 else 1.0
            if last is not None and mono - last < self.config.outbox.history_interval_s * saving:
                return
            self._history_mono[stream] = mono
            prio = HISTORY
        payload = dict(values)
        if stream == HEALTH:
            payload.update(self.health_fields())
        payload["ts"] = self.clock.iso_at(mono)
        seq = self.outbox.accept(prio, stream, payload)
        if prio == LIVE:
            self._live_state[seq] = (stream, values)
        self.control.feed("reading", stream, payload, seq)
        self._schedule_flush()

    def _on_event(self, event: Event) -> None:
        payload = {
            "kind": event.kind,
            "source": event.source,
            "severity": event.severity,
            **event.details,
            "ts": self.clock.iso_at(event.mono),
        }
        # Committed (fsync) before it can be published; then straight to paho, and only then the
        # outbox's upkeep (trim, figures) and the diagnostics feed -- they add latency, not safety.
        seq = self.outbox.accept(EVENT, "events", payload, upkeep=False)
        self._flush_at = None
        self._fill_window()
        self.outbox.upkeep()
        self.control.feed("event", "events", payload, seq)

    def _health_offer(self, throttle: StreamThrottle) -> dict[str, Any]:
        """The core's and drivers' health figures, judged with the host's: a trouble count going up
        (dropped, errors_*) or a state word changing is a reason to send; a driver's other numbers
        (sentence counters, ages) ride along with the next send."""
        fields = self.health_fields()
        for key, value in fields.items():
            if key not in throttle.deadband and isinstance(value, int | float) and not isinstance(value, bool) \
                    and not key.startswith("errors_") and key not in _HEALTH_TRIGGERS:
                throttle.deadband[key] = INF
        return fields

    # -- the link and its budget --------------------------------------------------------------------
    def _tally_topic(self, topic: str, size: int) -> None:
        prefix = self.base_topic + "/"
        name = topic[len(prefix):] if topic.startswith(prefix) else topic.split("/", 1)[0]
        self.link.tally(name, size, time.monotonic())

    def _book_link(self, now: float) -> None:
        step = self.link.update(self.publisher.meter.totals(), now, self.clock.now(),
                                synced=self.clock.source() != "unsynced")
        if step is None:
            return
        self._apply_budget_step(step)
        figures = {"step": step, "month_bytes": self.link.month_b,
                   "projected_mb": self.link.fields()["link_month_projected_mb"],
                   "budget_mb": self.config.link.budget_mb_month}
        if step:
            log.warning("data budget: %d bytes used this month, on course for %s MB of %s MB; saving, step %d",
                        figures["month_bytes"], figures["projected_mb"], figures["budget_mb"], step)
        self._on_event(Event("link_budget", "link", "warning" if step else "info", figures, now))

    def _apply_budget_step(self, step: int) -> None:
        """Each step keeps the ones before it (agent/linkbudget.py); step 1 acts in `_accept_reading`."""
        for stream, throttle in self.throttles.items():
            min_s, max_s, deadband = self._throttle_base[stream]
            max_s = max_interval_at(step, max_s, health=stream == HEALTH)
            if stream == HEALTH and step >= 2:
                min_s *= HEALTH_SAVING
            elif step >= 3 and stream == "gps":  # on movement only: a new position or fix, nothing else
                deadband = {**deadband, **{k: INF for k in deadband if k not in ("lat", "lon")}}
            throttle.min_interval_s, throttle.max_interval_s = min_s, max_s
            throttle.deadband = {**throttle.deadband, **deadband} if stream == HEALTH else dict(deadband)

    def _oldest_unacked(self) -> float | None:
        return min((at for _, _, at in self._inflight.values()), default=None)

    def _schedule_flush(self) -> None:
        if self._flush_at is None:
            self._flush_at = time.monotonic() + self.config.outbox.flush_interval_s

    def _commit(self) -> None:
        self.outbox.commit()
        self._flush_at = None

    # -- delivery ----------------------------------------------------------------------------------
    def _fill_window(self) -> None:
        # Not before the core has taken Connected: the current state goes ahead of queued history.
        if not self.publisher.connected or self._ready_session != self.publisher.session:
            return
        window = self.config.mqtt.inflight
        if self.outbox.unsaved_acks and len(self._inflight) + self.outbox.unsaved_acks >= window:
            # Acknowledged but not yet recorded counts against the window: after a crash, at most one
            # window of messages is sent twice.
            self._commit()
        room = window - len(self._inflight) - self.outbox.unsaved_acks
        if room <= 0:
            return
        now = time.monotonic()
        exclude = {seq for seq, _, _ in self._inflight.values()}
        exclude.update(seq for seq, (at, _) in self._refused.items() if at > now)
        history_inflight = sum(1 for _, prio, _ in self._inflight.values() if prio == HISTORY)
        for message in self.outbox.take(room, exclude, self.replay.allowance(now, history_inflight)):
            handle = self.publisher.publish(message.topic(self.base_topic), message.payload, retain=message.retain)
            if handle is None:
                return
            self._inflight[handle] = (message.seq, message.prio, now)
            if message.prio == HISTORY:
                self.replay.sent()

    def _on_delivered(self, item: Delivered) -> None:
        sent = self._inflight.pop((item.session, item.mid), None)
        if sent is None:
            return  # birth/offline status, or a result from a connection already given up
        seq, prio, _ = sent
        state = self._live_state.pop(seq, None)
        if item.error is None:
            if state is not None:
                self._on_broker[state[0]] = state[1]  # the broker holds this as the stream's retained state
            if self._refused.pop(seq, None) is not None:
                self._retry_refused_now()  # the broker takes what it refused: the cause is gone (ACL fixed)
            # Deletions ride with the next commit (no disk write of their own, sparing the SD card);
            # they count against the in-flight window until then, bounding duplicates after a crash.
            self.outbox.delivered(seq)
            if prio == HISTORY:
                self.replay.acknowledged(time.monotonic())
        else:
            # Refused (ACL, quota, ...): an error, never a success. Keep it and retry later.
            self.publish_errors += 1
            self.last_publish_error = f"broker refused seq {seq}: {item.error}"
            _, delay = self._refused.get(seq, (0.0, _REFUSED_RETRY_MIN_S / 2))
            delay = min(delay * 2, _REFUSED_RETRY_MAX_S)
            self._refused[seq] = (time.monotonic() + delay, delay)
            log.error("%s; kept in the outbox, retry in %.0f s", self.last_publish_error, delay)

    def _retry_refused_now(self) -> None:
        """Every refused message is retried at once, its backoff from the start (30 s if refused again)."""
        self._refused = {seq: (0.0, _REFUSED_RETRY_MIN_S / 2) for seq in self._refused}

    def _on_connected(self, resumed: bool = False) -> None:
        # A new connection may be to a fixed broker (ACL, quota): what it refused goes again now.
        self._retry_refused_now()
        # The current state of every stream goes first, retained, before events and history. A broker
        # that kept our session kept its retained topics too: then only what it has not acknowledged
        # (changed while offline, or lost in flight) goes again; otherwise all of it.
        now = time.monotonic()
        if not resumed:
            self._on_broker.clear()
        for stream, throttle in self.throttles.items():
            if stream in self._on_broker and throttle.latest is not None \
                    and not throttle.differs(self._on_broker[stream], throttle.latest):
                continue
            values = throttle.resend(now)
            if values is not None:
                self._accept_reading(stream, values, self._stream_mono.get(stream, now))
        self._commit()
        self._fill_window()

    def _on_disconnected(self, item: Disconnected) -> None:
        self._inflight = {key: sent for key, sent in self._inflight.items() if key[0] != item.session}
        self._live_state.clear()  # demoted to history: none of it reaches the retained topics now
        self.outbox.demote_live()
        self._flush_at = None

    def _deliver_pending(self, budget_s: float) -> None:
        self._commit()
        deadline = time.monotonic() + budget_s
        while self.publisher.connected and self.outbox.depth:
            self._fill_window()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            item = self.bus.get(timeout=min(remaining, 0.1))
            if item is not None and not isinstance(item, _Stop):
                self._handle(item)
        self._commit()

    def _drain_bus(self) -> None:
        while (item := self.bus.get_nowait()) is not None:
            if not isinstance(item, _Stop):
                self._handle(item)
        self._commit()

    # -- health ------------------------------------------------------------------------------------
    def health_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "agent_version": __version__,
            "agent_uptime_s": round(time.monotonic() - self.started_mono),
            **self.outbox_fields(),
            "reconnects": self.publisher.reconnects,
            "mqtt_takeovers": self.publisher.takeovers,
            "publish_errors": self.publish_errors,
            "last_publish_error": self.last_publish_error,
            "mqtt_last_error": self.publisher.last_error,
            **self.clock.snapshot(),
            **self.link.fields(),
        }
        for driver in self.drivers:
            fields[f"errors_{driver.ctx.name}"] = driver.ctx.error_total()
            fields.update(driver.health())
        return fields

    def outbox_fields(self) -> dict[str, Any]:
        """The outbox's health figures (safe to read from any thread)."""
        now = time.monotonic()
        oldest = self.outbox.oldest_age_s(now)
        return {
            "outbox_depth": self.outbox.depth,
            "outbox_oldest_s": None if oldest is None else round(oldest, 1),
            "outbox_bytes": self.outbox.bytes,
            "outbox_error": self.outbox.error,
            "dropped": self.outbox.dropped,
            "replay_rate": round(self.replay.rate(now), 1),
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything a technician needs to see, for local diagnostics."""
        return {
            "box": self.config.box.id,
            "site": self.config.box.site,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_mono),
            "simulate": self.config.simulate,
            **self.publisher.snapshot(),
            "publish_errors": self.publish_errors,
            "last_publish_error": self.last_publish_error,
            "refused_pending": len(self._refused),  # refused and not yet delivered: status warns of these
            **self.outbox_fields(),
            "last_seq": self.outbox.last_seq,
            **self.clock.snapshot(),
            "drivers": {driver.ctx.name: driver.status() for driver in self.drivers},
            "alarms": [
                {"source": driver.ctx.name, "alarm": alarm, "severity": severity}
                for driver in self.drivers
                for alarm, severity in sorted(driver.ctx.active_alarms().items())
            ],
            "mqtt_broker": f"{self.config.mqtt.host}:{self.config.mqtt.effective_port}",
            "state_dir": str(self.config.state_dir),
            "link_topics_last_hour_b": self.link.last_hour(time.monotonic()),
            "health": self.health_fields(),
        }

    def call_in_core(
        self, fn: Callable[[], Any], timeout_s: float, cancelled: threading.Event | None = None
    ) -> Any:
        """Run `fn` on the core's thread and return its result; None if the core does not get to it
        within `timeout_s` (or `cancelled` is set first)."""
        call = _CoreCall(fn, Future())
        self.bus.put(call)
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                return call.result.result(timeout=min(remaining, 0.2))
            except TimeoutError:
                if cancelled is not None and cancelled.is_set():
                    break
        call.result.cancel()
        return None

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda sig, frame: self.request_stop(signal.Signals(sig).name))


def _counters(config: Config) -> dict[str, tuple[str, ...]]:
    """Per stream, the fields that only grow: the drivers' `counters`, and the agent's reconnects in health
    (`dropped` is the outbox's own, durable already)."""
    counters: dict[str, tuple[str, ...]] = {HEALTH: ("reconnects",)}
    for entry in config.drivers:
        cls = driver_class(entry.section)
        if cls.counters:
            stream = cls.stream_name(entry.config)
            counters[stream] = (*counters.get(stream, ()), *cls.counters)
    return counters


def _run_call(call: _CoreCall) -> None:
    if not call.result.set_running_or_notify_cancel():
        return
    try:
        call.result.set_result(call.fn())
    except Exception as err:  # noqa: BLE001 - the caller gets the error; the core runs on
        log.exception("diagnostics request failed on the core")
        call.result.set_exception(err)
