"""Link economy: what a reconnect costs on a metered link."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttSettings
from agent.publisher import tls_context


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
