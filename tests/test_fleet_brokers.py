"""Growing past one broker (docs/mqtt.md): what this repository tests of bridges and shared subscriptions."""

from __future__ import annotations

from agent.fleet.broker import BrokerTarget
from agent.fleet.sim import FleetSim
from tests.support import wait_until


def start_sim(port: int, boxes: int, rate: float) -> FleetSim:
    sim = FleetSim(BrokerTarget("127.0.0.1", port, False), boxes, rate=rate, scenarios=False)
    sim.start()
    assert sim.wait_connected(15), sim.error
    return sim


def test_a_bridge_carries_births_states_and_wills_to_the_central_broker(make_broker, subscribe):
    central = make_broker()
    edge = make_broker(extra=[
        "connection central",
        f"address 127.0.0.1:{central.port}",
        "bridge_protocol_version mqttv50",
        "remote_clientid bridge-edge",
        "cleansession true",
        "topic boxtel/# out 1",
    ])
    sub = subscribe("boxtel/#", target=central)
    wait_until(lambda: "bridge-edge" in central.log_path.read_text(), what="the bridge to connect")
    sim = start_sim(edge.port, 3, 5.0)
    try:
        for box in sim.by_id:
            sub.wait_for(f"boxtel/{box}/status", lambda p: p["state"] == "online")
            sub.wait_for(f"boxtel/{box}/gps", lambda p: "seq" in p)
        sim.drop("sim-0002")  # the box's link dies: the edge broker publishes its will, the bridge carries it
        will = sub.wait_for("boxtel/sim-0002/status", lambda p: p["state"] == "offline")
        assert will.json["reason"] == "connection lost"
    finally:
        sim.stop()


def test_a_shared_subscription_splits_the_live_stream_between_its_members(broker, subscribe):
    sim = start_sim(broker.port, 4, 20.0)
    try:
        wait_until(lambda: sim.stats()["sent"] > 40, what="retained states on the broker")
        group = [subscribe("$share/consumers/boxtel/+/#", client_id=f"consumer-{i}") for i in range(2)]
        wait_until(lambda: all(sum(not m.retain for m in member.on("boxtel/#")) >= 20 for member in group),
                   what="both members fed")
    finally:
        sim.stop()
    # Retained messages on subscribing differ by broker (mosquitto 2.0 sends each member a copy, the
    # MQTT 5 spec says none): docs/mqtt.md tells consumers not to rely on either.
    live = [{(m.topic, m.raw) for m in member.on("boxtel/#") if not m.retain} for member in group]
    assert not live[0] & live[1], "a live message went to both members of the group"
