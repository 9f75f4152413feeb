"""Link economy: what a reconnect costs on a metered link."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttSettings
from agent.publisher import tls_context
from agent.topicalias import TopicAliases
from tests.gpio_support import agent_in_process
from tests.proxy import BLACKHOLE, CUT, PASS, LinkProxy
from tests.support import wait_until


def _connect_once(context, port: int) -> bool:
    """One MQTT connect over TLS with the agent's context, remembering the session as the agent does
    (in on_connect); returns whether the TLS session was resumed."""
    connected = threading.Event()
    resumed: list[bool] = []

    def on_connect(client, userdata, flags, reason_code, properties):
        resumed.append(client.socket().session_reused)
        context.remember(client.socket())
        connected.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-001", protocol=mqtt.MQTTv5)
    client.tls_set_context(context)
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(10), "no CONNACK over TLS"
    finally:
        client.disconnect()
        client.loop_stop()
    return resumed[0]


def test_reconnect_resumes_the_tls_session(make_broker, certs):
    broker = make_broker(tls={"cafile": str(certs["ca_crt"]), "certfile": str(certs["server_crt"]),
                              "keyfile": str(certs["server_key"])})
    context = tls_context(MqttSettings(tls=True, ca_file=str(certs["ca_crt"])), file="agent.toml")

    assert _connect_once(context, broker.port) is False  # nothing to resume yet: a full handshake
    assert _connect_once(context, broker.port) is True
    assert _connect_once(context, broker.port) is True


def test_a_broker_that_forgot_the_session_gets_a_full_verified_handshake(make_broker, certs):
    tls = {"cafile": str(certs["ca_crt"]), "certfile": str(certs["server_crt"]), "keyfile": str(certs["server_key"])}
    broker = make_broker(tls=tls)
    context = tls_context(MqttSettings(tls=True, ca_file=str(certs["ca_crt"])), file="agent.toml")
    assert _connect_once(context, broker.port) is False
    broker.restart()  # new ticket keys: the saved ticket is worthless now

    assert _connect_once(context, broker.port) is False
    assert _connect_once(context, broker.port) is True


# -- the monthly data budget ---------------------------------------------------------------------------
DOOR = 23
STATUS = "boxtel/test-001/status"
LOCKER = "boxtel/test-001/locker"


def test_a_tiny_budget_saves_in_steps_and_says_so_but_an_alarm_still_goes_at_once(
        make_config, broker, subscribe, mock_pins):
    from drivers.gpio_sim import wire_pin

    config = make_config(broker, extra={"gpio": {"pin_factory": "mock"}, "link": {"budget_mb_month": 0.0001},
                                        "locker": [{"name": "armory-1", "door": {"pin": DOOR}, "always_armed": True}]})
    wire_pin(mock_pins, DOOR, high=False)
    subscriber = subscribe("boxtel/test-001/#")
    with agent_in_process(config):
        # 100 bytes a month: the connect alone spends it, so every saving step is taken at once
        warning = subscriber.wait_for("boxtel/test-001/events", lambda p: p["kind"] == "link_budget").json
        assert warning["severity"] == "warning" and warning["step"] == 3 and warning["budget_mb"] == 0.0001
        assert warning["month_bytes"] > 100
        mock_pins.pin(DOOR).drive_high()
        opened = time.monotonic()
        alarm = subscriber.wait_for("boxtel/test-001/events", lambda p: p["kind"] == "alarm_raised").json
        assert alarm["alarm"] == "door_opened_while_armed" and alarm["severity"] == "alarm"
        assert time.monotonic() - opened < 2.0  # at once, not at some saving interval
        state = subscriber.wait_for("boxtel/test-001/locker/armory-1", lambda p: p["door"] == "open").json
        assert "door_opened_while_armed" in state["alarms"]


def test_link_figures_count_the_bytes_on_the_wire(make_config, broker, subscribe):
    config = make_config(broker, extra={"host": {"interval_s": 1.0, "power_check_s": 1.0, "min_interval_s": 0.0,
                                                 "max_interval_s": 1.0}})
    subscriber = subscribe("boxtel/test-001/health")
    with agent_in_process(config):
        # booked as the connection came up (a health accepted a moment before may still show 0): the
        # CONNECT went out, TCP/IP headers and all, and the CONNACK came in
        live = wait_until(lambda: [m for m in subscriber.on("boxtel/test-001/health")
                                   if not m.retain and m.json["link_sent_bytes_today"]], 15,
                          "health from this agent with the connect booked")
        first = live[0].json
        assert first["link_sent_bytes_today"] > 52 and first["link_received_bytes_today"] > 52
        today = first["link_sent_bytes_today"] + first["link_received_bytes_today"]
        assert abs(first["link_month_mb"] * 1e6 - today) <= 500  # MB to three decimals
        assert first["link_budget"] == "off" and first["link_budget_step"] == 0


# -- a reconnect resends only what the broker may have lost -------------------------------------------
def test_a_resumed_session_resends_only_the_state_that_changed_while_offline(
        make_config, broker, subscribe, mock_pins):
    from drivers.gpio_sim import wire_pin

    proxy = LinkProxy(broker.port)
    config = make_config(broker, extra={"gpio": {"pin_factory": "mock"}, "mqtt": {"port": proxy.port},
                                        "locker": [{"name": "armory-1", "door": {"pin": 23}},
                                                   {"name": "armory-2", "door": {"pin": 24}}]})
    wire_pin(mock_pins, 23, high=False)
    wire_pin(mock_pins, 24, high=False)
    sub = subscribe("boxtel/test-001/#")
    try:
        with agent_in_process(config) as agent:
            birth = sub.wait_for(STATUS, lambda p: p["state"] == "online").json
            for name in ("armory-1", "armory-2"):
                sub.wait_for(f"{LOCKER}/{name}", lambda p: p["door"] == "closed")
            wait_until(lambda: agent.outbox.depth == 0, 10, "the first state acknowledged")
            proxy.set_mode(CUT)
            wait_until(lambda: not agent.publisher.connected, 15, "the link loss noticed")
            mock_pins.pin(23).drive_high()  # armory-1 opened while offline; armory-2 stays closed
            wait_until(lambda: agent.outbox.depth > 0, 10, "the door event kept in the outbox")
            before = {name: len(sub.on(f"{LOCKER}/{name}")) for name in ("armory-1", "armory-2")}
            proxy.set_mode(PASS)
            sub.wait_for(STATUS, lambda p: p["state"] == "online" and p["session"] > birth["session"], timeout=20)
            sub.wait_for("boxtel/test-001/events", lambda p: p["kind"] == "door_opened")
            sub.wait_for(f"{LOCKER}/armory-1", lambda p: p["door"] == "open")
            wait_until(lambda: agent.outbox.depth == 0, 10, "everything acknowledged")
            assert len(sub.on(f"{LOCKER}/armory-2")) == before["armory-2"]  # the broker kept it: not resent
            assert agent.publisher.statuses.births_republished == 0  # the old connection's will came ahead of our birth
            retained = subscribe(f"{LOCKER}/+")
            assert retained.wait_for(f"{LOCKER}/armory-2").json["door"] == "closed"
    finally:
        proxy.close()


def test_the_status_is_read_again_after_the_broker_closed_the_link_but_not_after_it_went_silent(
        make_broker, make_config, mock_pins):
    """Issue 13's clone check (the retained status at a reconnect) costs ~0.6 kB. A takeover on a broker
    without reason 0x8E closes the connection; a flapping link goes silent. Only the first reads again."""
    from drivers.gpio_sim import wire_pin
    from tests.support import Subscriber

    broker = make_broker(extra=["log_type subscribe"])
    proxy = LinkProxy(broker.port)
    config = make_config(broker, extra={"gpio": {"pin_factory": "mock"},
                                        "mqtt": {"port": proxy.port, "keepalive_s": 600, "ack_timeout_s": 2.0},
                                        "locker": [{"name": "armory-1", "door": {"pin": 23}}]})
    wire_pin(mock_pins, 23, high=False)
    sub = Subscriber(broker.port, "boxtel/test-001/#")
    forger = Subscriber(broker.port, "nothing/#")

    def status_reads() -> int:  # mosquitto logs "<time>: <client id> <qos> <topic>" for each SUBSCRIBE
        return sum(line.endswith(f" test-001 0 {STATUS}") for line in broker.log_path.read_text().splitlines())

    def next_birth(after: int) -> int:
        return sub.wait_for(STATUS, lambda p: p["state"] == "online" and p["session"] > after, timeout=20).json["session"]

    try:
        with agent_in_process(config) as agent:
            session = next_birth(0)
            assert status_reads() == 1  # a new session: subscribed, and the status read
            proxy.set_mode(BLACKHOLE)  # the link goes silent; the door's event waits for its PUBACK
            mock_pins.pin(23).drive_high()
            wait_until(lambda: not agent.publisher.connected, 15, "the silent link given up")
            proxy.set_mode(PASS)
            session = next_birth(session)
            sub.wait_for("boxtel/test-001/events", lambda p: p["kind"] == "door_opened")
            assert status_reads() == 1  # the resumed session's subscription, not read again
            # ... and it still guards the birth: a status put over it is answered with the birth again
            forger.client.publish(STATUS, b'{"state":"offline"}', qos=1, retain=True).wait_for_publish(5)
            wait_until(lambda: agent.publisher.statuses.births_republished == 1, 10, "the birth republished")

            proxy.set_mode(CUT)  # the far end closes the link: what a takeover looks like without 0x8E
            proxy.set_mode(PASS)
            next_birth(session)
            assert status_reads() == 2
    finally:
        sub.close()
        forger.close()
        proxy.close()


def test_topic_aliases_name_each_topic_once_per_connection():
    aliases = TopicAliases(2)
    first, properties = aliases.publish_args("boxtel/pib-017/gps")
    assert first == "boxtel/pib-017/gps" and properties.TopicAlias == 1  # the broker learns the mapping
    again, properties = aliases.publish_args("boxtel/pib-017/gps")
    assert again == "" and properties.TopicAlias == 1
    assert aliases.publish_args("boxtel/pib-017/health")[1].TopicAlias == 2
    assert aliases.publish_args("boxtel/pib-017/water") == ("boxtel/pib-017/water", None)  # beyond the maximum
    assert TopicAliases(0).publish_args("boxtel/pib-017/gps") == ("boxtel/pib-017/gps", None)


def test_an_event_on_a_half_open_link_does_not_wait_for_keepalive(make_config, broker, subscribe, mock_pins):
    from drivers.gpio_sim import wire_pin

    proxy = LinkProxy(broker.port)
    config = make_config(broker, extra={"gpio": {"pin_factory": "mock"},
                                        "mqtt": {"port": proxy.port, "keepalive_s": 600, "ack_timeout_s": 2.0},
                                        "locker": [{"name": "armory-1", "door": {"pin": 23}}]})
    wire_pin(mock_pins, 23, high=False)
    sub = subscribe("boxtel/test-001/#")
    try:
        with agent_in_process(config) as agent:
            sub.wait_for(f"{LOCKER}/armory-1", lambda p: p["door"] == "closed")
            proxy.set_mode(BLACKHOLE)
            mock_pins.pin(23).drive_high()
            wait_until(lambda: not agent.publisher.connected, 15, "the dead link given up for a missing PUBACK")
            assert "no PUBACK" in (agent.publisher.last_error or "")
            proxy.set_mode(PASS)
            sub.wait_for("boxtel/test-001/events", lambda p: p["kind"] == "door_opened", timeout=20)
    finally:
        proxy.close()


def _paced_b(ratio: float, hours: float) -> int:
    """Bytes used `hours` into a 31-day month that project to `ratio` times a 10 MB budget."""
    left_s = 31 * 86400 - 3600.0 * hours
    return int(ratio * 10e6 / (1 + left_s / (3600.0 * hours))) + 1


def test_budget_steps_follow_the_projection_and_are_given_back_only_well_below_the_mark(tmp_path):
    from datetime import UTC, datetime

    from agent.linkbudget import LinkBudget

    start = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    budget = LinkBudget(10.0, tmp_path / "link.json")

    def at(hours: float, ratio: float) -> int | None:
        return budget.update((_paced_b(ratio, hours), 0), 3600.0 * hours, start + 3600.0 * hours, synced=True)

    assert budget.update((0, 0), 0.0, start, synced=True) is None  # nothing seen yet: no projection
    assert at(0.5, 0.5) is None and budget.projected_mb is None  # half an hour is too little to project from
    assert at(1, 1.1) == 1 and budget.fields()["link_budget"] == "saving" and budget.projected_mb > 10.0
    assert at(2, 1.3) == 2
    assert at(3, 1.6) == 3
    assert at(4, 1.4) is None  # below the mark, but not 10 % below it: the step stays
    assert at(5, 1.3) == 2  # 1.25 < 1.3 < 0.9 x 1.5
    assert at(6, 1.1) == 1
    assert at(12, 0.95) is None and budget.step == 1  # below 1, not below 0.9: still saving
    assert at(24, 0.85) == 0 and budget.fields()["link_budget"] == "ok"
    used = budget.month_b
    # The month's figures survive a restart; a clock that is not synchronised never starts a new month
    budget.save()
    again = LinkBudget(10.0, tmp_path / "link.json")
    assert again.month_b == used and again.month == "2026-12"
    again.update((1000, 0), 1.0, datetime(1970, 1, 1, tzinfo=UTC).timestamp(), synced=False)
    assert again.month == "2026-12" and again.month_b == used + 1000
    again.update((2000, 0), 2.0, datetime(2027, 1, 1, 0, 5, tzinfo=UTC).timestamp(), synced=True)
    assert again.month == "2027-01" and again.month_b == 1000 and again.day_sent_b == 1000


def test_a_budget_already_spent_takes_every_step_at_once(tmp_path):
    from agent.linkbudget import STEPS, LinkBudget

    budget = LinkBudget(0.001, tmp_path / "link.json")
    assert budget.update((600, 600), 1.0, 1.8e9, synced=True) == STEPS  # 1200 bytes of a 1000-byte month
