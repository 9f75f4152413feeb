"""Link economy: what a reconnect costs on a metered link."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttSettings
from agent.publisher import tls_context
from tests.gpio_support import agent_in_process


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
        first = subscriber.wait_for("boxtel/test-001/health").json
        # booked as the connection came up: the CONNECT went out (TCP/IP headers and all), CONNACK came in
        assert first["link_sent_bytes_today"] > 52 and first["link_received_bytes_today"] > 52
        today = first["link_sent_bytes_today"] + first["link_received_bytes_today"]
        assert abs(first["link_month_mb"] * 1e6 - today) <= 500  # MB to three decimals
        assert first["link_budget"] == "off" and first["link_budget_step"] == 0
