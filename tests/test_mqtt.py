"""The publisher against a real mosquitto: birth, will, clean offline, reconnect, stale will, ACL
refusals, TLS."""

from __future__ import annotations

import json
import re
import time

import pytest

from agent.publisher import Backoff
from tests.proxy import CUT, PASS, LinkProxy
from tests.support import Subscriber, boxtel, wait_until

STATUS = "boxtel/test-001/status"
HEALTH = "boxtel/test-001/health"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# Health every second, so tests see figures change quickly.
FAST_HEALTH = {"host": {"interval_s": 1.0, "power_check_s": 1.0, "min_interval_s": 0.0, "max_interval_s": 1.0}}


def online(payload):
    return payload["state"] == "online"


def test_birth_health_and_clean_offline(broker, make_config, subscribe, run_agent):
    sub = subscribe()
    agent = run_agent(make_config(broker, FAST_HEALTH))
    birth = sub.wait_for(STATUS, online).json
    assert birth["site"] == "Testville" and birth["session"] >= 1 and birth["version"]
    assert ISO_MS.match(birth["ts"]) and len(birth["boot_id"]) == 36
    assert "seq" not in birth

    health = sub.wait_for(HEALTH, lambda p: p["mqtt_last_error"] is None).json
    assert ISO_MS.match(health["ts"]) and isinstance(health["seq"], int)
    assert health["clock_source"] in ("ntp", "gps", "unsynced")
    assert health["errors_host"] == 0 and health["dropped"] == 0
    later = sub.wait_for(HEALTH, lambda p: p["seq"] > health["seq"]).json
    assert later["seq"] > health["seq"]

    started = time.monotonic()
    assert agent.terminate() == 0
    assert time.monotonic() - started < 5.0
    offline = sub.wait_for(STATUS, lambda p: p["state"] == "offline").json
    assert offline["reason"] == "stopped" and offline["session"] == birth["session"]
    # retained: a dashboard that connects now sees the box offline
    late = subscribe(STATUS)
    assert late.wait_for(STATUS).json["state"] == "offline"
    assert late.on(STATUS)[0].retain


def test_last_will_on_sigkill_carries_the_session(broker, make_config, subscribe, run_agent):
    sub = subscribe(STATUS)
    agent = run_agent(make_config(broker))
    birth = sub.wait_for(STATUS, online).json
    agent.kill()
    will = sub.wait_for(STATUS, lambda p: p["state"] == "offline", timeout=20).json
    assert will["reason"] == "connection lost" and will["session"] == birth["session"]


def test_reconnects_after_broker_restart_with_new_session(broker, make_config, subscribe, run_agent):
    config = make_config(broker, FAST_HEALTH)
    agent = run_agent(config)
    sub = subscribe(STATUS)
    first = sub.wait_for(STATUS, online).json
    sub.close()
    broker.restart()
    sub = Subscriber(broker.port, ["boxtel/#"])
    try:
        second = sub.wait_for(STATUS, lambda p: online(p) and p["session"] > first["session"]).json
        health = sub.wait_for(HEALTH, lambda p: p["reconnects"] >= 1).json
        assert "connection lost" in health["mqtt_last_error"]
    finally:
        sub.close()
    assert second["boot_id"] == first["boot_id"]
    assert agent.alive()


def test_backoff_grows_with_jitter_while_broker_is_down(broker, make_config, run_agent):
    agent = run_agent(make_config(broker, {"mqtt": {"reconnect_min_s": 0.2, "reconnect_max_s": 1.6}}))
    wait_until(lambda: "connected to" in agent.log(), what="first connection")
    broker.stop()
    delays = wait_until(
        lambda: (d := [float(x) for x in re.findall(r"reconnecting in ([\d.]+) s", agent.log())]) and len(d) >= 6 and d,
        timeout=20, what="six reconnect attempts",
    )
    ceilings = [0.2, 0.4, 0.8, 1.6, 1.6, 1.6]
    for delay, ceiling in zip(delays, ceilings, strict=False):
        assert ceiling / 2 - 0.05 <= delay <= ceiling + 0.05, (delays, ceilings)
    assert "Connection refused" in agent.log()


def test_backoff_has_jitter_and_cap():
    backoff = Backoff(1.0, 8.0)
    runs = [[Backoff(1.0, 8.0).next_delay() for _ in range(6)] for _ in range(50)]
    assert len({run[0] for run in runs}) > 40  # jittered: a fleet does not retry in lockstep
    assert all(max(run) <= 8.0 for run in runs)
    delays = [backoff.next_delay() for _ in range(10)]
    assert delays[-1] >= 4.0
    backoff.reset()
    assert backoff.next_delay() <= 1.0


@pytest.mark.parametrize("displacing", [
    lambda birth: json.dumps({"state": "offline", "session": birth["session"] - 1, "reason": "connection lost"}),
    # A forged will with the live session number: still not our birth.
    lambda birth: json.dumps({"state": "offline", "session": birth["session"], "reason": "connection lost"}),
    lambda birth: "[" * 1500 + "]" * 1500,
    lambda birth: "",  # an empty retained message clears the status: the box is unknown until answered
    # A forged "online" from a session yet to come: it would claim the box for whoever sent it.
    lambda birth: json.dumps({**birth, "session": birth["session"] + 1000}),
    lambda birth: json.dumps({**birth, "session": str(birth["session"])}),  # our birth, but a string number
    lambda birth: json.dumps([birth]),  # a JSON array holding our birth is not our birth
    lambda birth: json.dumps({**birth, "pad": "x" * 256_000}),  # 256 kB: refused by size, never parsed
], ids=["stale-will", "forged-will-with-the-live-session", "nested-junk", "cleared", "forged-online-future-session",
        "session-as-a-string", "json-array", "256-kB"])
def test_a_status_other_than_our_birth_is_answered_with_a_fresh_birth(
    broker, make_config, subscribe, run_agent, displacing
):
    sub = subscribe(STATUS)
    agent = run_agent(make_config(broker))
    birth = sub.wait_for(STATUS, online).json
    # A will from an earlier session reaches the broker late and overwrites the retained status.
    count = len(sub.on(STATUS))
    sub.client.publish(STATUS, displacing(birth), qos=1, retain=True)

    def ours(payload) -> bool:  # the agent's own birth, exactly: a forgery may claim "online" too
        return isinstance(payload, dict) and {k: v for k, v in payload.items() if k != "ts"} == \
            {k: v for k, v in birth.items() if k != "ts"}

    sub.wait_for(STATUS, ours, after=count)
    late = subscribe(STATUS)
    assert ours(late.wait_for(STATUS).json)
    assert "Traceback" not in agent.log()


def _own_births(sub: Subscriber, birth: dict) -> list:
    def own(message) -> bool:
        try:
            payload = message.json
        except (ValueError, RecursionError):
            return False
        return (isinstance(payload, dict) and payload.get("state") == "online"
                and payload.get("session") == birth["session"] and payload.get("boot_id") == birth["boot_id"])

    return [m for m in sub.on(STATUS) if own(m)]


def test_5000_forged_statuses_cost_a_birth_per_5_s_and_the_birth_stays(make_broker, make_config, subscribe, run_agent):
    from agent import control

    # mosquitto queues at most 1000 messages per client by default and drops the rest: every forgery
    # should reach the agent here (the worst case for it), on a busy machine too.
    broker = make_broker(extra=["max_queued_messages 20000"])
    config = make_config(broker)
    sub = subscribe(STATUS, target=broker)
    agent = run_agent(config)
    birth = sub.wait_for(STATUS, online).json
    forgeries = [
        # A newline in a value (first, so that the first warning names it): raw, it would forge a log line.
        json.dumps({"state": "offline", "session": "7\nboxtel.core: FORGED all lockers closed"}),
        json.dumps({"state": "offline", "session": birth["session"], "reason": "connection lost"}),
        json.dumps({"state": "offline", "session": birth["session"] - 3}),
        "[" * 1500 + "]" * 1500,
        json.dumps({"state": "offline", "session": 1, "pad": "x" * 5000}),
        json.dumps(["offline"]),
        "\xff\xfe",
    ]
    total = 5000
    started = time.monotonic()
    infos = [sub.client.publish(STATUS, forgeries[n % len(forgeries)], qos=1, retain=True) for n in range(total)]
    for info in infos[-10:]:
        info.wait_for_publish(30)
    # Every forgery is counted; the burst ends with our birth retained again.
    path = control.socket_path(str(config))
    wait_until(lambda: control.request(path, "status")["status"]["foreign_statuses"] == total, timeout=60,
               what="the agent to see every forgery")
    # A republish may be due up to 5 s after the burst: then the last word on the topic is our birth.
    wait_until(lambda: sub.on(STATUS)[-1] in _own_births(sub, birth), timeout=30, what="our birth, last")
    late = Subscriber(broker.port, STATUS)
    try:
        retained = late.wait_for(STATUS).json
        assert online(retained) and retained["session"] == birth["session"], retained
    finally:
        late.close()
    elapsed = time.monotonic() - started
    republished = len(_own_births(sub, birth)) - 1
    assert 1 <= republished <= elapsed / 5 + 2, (republished, elapsed)
    snapshot = control.request(path, "status")["status"]
    assert snapshot["births_republished"] == republished
    log = agent.log()
    assert "Traceback" not in log
    assert not [line for line in log.splitlines() if line.startswith("boxtel.core: FORGED")]
    assert "session 7\\nboxtel.core: FORGED all lockers closed" in log
    warnings = [line for line in log.splitlines() if f"on {STATUS}" in line]
    assert 1 <= len(warnings) <= elapsed / 60 + 2, warnings


def test_status_guard_answers_a_burst_with_one_birth_per_5_s_and_one_warning_per_minute(caplog):
    from agent.publisher import StatusGuard, StatusSeen

    guard = StatusGuard(STATUS)
    own = {"state": "online", "version": "1", "site": "", "boot_id": "b", "session": 4}
    forged = StatusSeen.read(json.dumps({"state": "offline", "session": 4}).encode())
    guard.seen(StatusSeen.read(json.dumps({**own, "ts": "t"}).encode()), own, 0.0)  # our birth came back
    births = []
    with caplog.at_level("WARNING", logger="boxtel.mqtt"):
        for n in range(5000):  # 5000 forgeries over 50 s, each followed by the supervisor's check
            now = n / 100
            guard.seen(forged, own, now)
            if guard.republish_due(now):
                births.append(now)
        assert births == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0]
        assert guard.wait_s(49.99) == pytest.approx(0.01)  # the last forgery is answered too...
        assert guard.republish_due(50.0)
        guard.seen(StatusSeen.read(json.dumps({**own, "ts": "x"}).encode()), own, 50.1)  # ...and its echo
        assert guard.wait_s(50.1) == pytest.approx(9.9)  # only the minute's summary is left to say
        assert not guard.republish_due(60.0)
    assert guard.foreign == 5000 and guard.births_republished == 11
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "4999 more stale or foreign statuses" in lines[1] and "births republished so far: 11" in lines[1]


def test_a_will_delivered_ahead_of_our_birth_is_not_answered():
    """A resumed session hands over the will of the connection that died before our birth's echo: the
    birth, published after it, has already replaced it."""
    from agent.publisher import StatusGuard, StatusSeen

    guard = StatusGuard(STATUS)
    own = {"state": "online", "version": "1", "site": "", "boot_id": "b", "session": 5}
    guard.new_connection()
    guard.seen(StatusSeen.read(json.dumps({"state": "offline", "session": 4}).encode()), own, 0.0)
    assert not guard.republish_due(0.0) and guard.foreign == 0
    guard.seen(StatusSeen.read(json.dumps({**own, "ts": "t"}).encode()), own, 0.1)
    guard.seen(StatusSeen.read(json.dumps({"state": "offline", "session": 4}).encode()), own, 0.2)  # late: stale
    assert guard.republish_due(0.2) and guard.foreign == 1


def acl_allowing(*levels: str) -> str:
    """A mosquitto ACL: test-001 may write these topic levels below boxtel/test-001/, everyone reads."""
    return "\n".join(["user test-001", *(f"topic readwrite boxtel/test-001/{level}" for level in levels),
                      "pattern read #", ""])


NO_HISTORY_ACL = acl_allowing("status", "health", "events")
OPEN_ACL = acl_allowing("#")


@pytest.fixture
def start_with_history(make_config, run_agent):
    """Start an agent whose first health reading is certainly history: its link starts cut and passes
    once that reading waits in the outbox. Returns (agent, config path)."""
    proxies: list[LinkProxy] = []

    def start(broker):
        proxy = LinkProxy(broker.port)
        proxies.append(proxy)
        proxy.set_mode(CUT)
        config = make_config(None, {**FAST_HEALTH, "mqtt": {"port": proxy.port}})
        agent = run_agent(config)

        def queued() -> bool:
            result = boxtel("status", "--json", "-c", str(config))
            return result.returncode == 0 and json.loads(result.stdout).get("outbox_depth", 0) >= 1

        wait_until(queued, what="a health reading kept while offline")
        proxy.set_mode(PASS)
        return agent, config

    yield start
    for proxy in proxies:
        proxy.close()


def test_publish_refused_by_acl_is_a_health_error_not_a_success(make_broker, subscribe, start_with_history):
    # The box may write its status, health and events, but not history: the first health reading
    # (kept while the link was cut) is history and will be refused.
    broker = make_broker(acl=NO_HISTORY_ACL)
    sub = subscribe(target=broker)
    agent, _ = start_with_history(broker)
    health = sub.wait_for(HEALTH, lambda p: p["publish_errors"] >= 1).json
    assert "Not authorized" in health["last_publish_error"] and "0x87" in health["last_publish_error"]
    assert health["outbox_depth"] >= 1  # refused means kept, not deleted
    assert sub.on("boxtel/test-001/history/#") == []
    assert "Not authorized" in agent.log()


def test_refused_publishes_go_again_at_once_on_a_new_connection_and_the_warn_clears(make_broker, start_with_history):
    broker = make_broker(acl=NO_HISTORY_ACL)
    agent, config = start_with_history(broker)
    refused = wait_until(lambda: re.search(r"broker refused seq (\d+).*retry in 30 s", agent.log()),
                         what="a refused history message")
    status = boxtel("status", "-c", str(config))
    assert "WARN  mqtt" in status.stdout and "the broker refused 1 publishes" in status.stdout, status.stdout
    # The broker's ACL is fixed and it restarts: the refused message need not wait out its 30 s.
    broker.acl = OPEN_ACL
    broker.restart()
    sub = Subscriber(broker.port, "boxtel/test-001/history/#")
    try:
        # Within 10 s of the broker's return (the old timer ran 30 s from the refusal, ~28 s from here).
        sub.wait_for("boxtel/test-001/history/#", lambda p: p["seq"] == int(refused.group(1)), timeout=10)
    finally:
        sub.close()
    wait_until(lambda: "refused" not in boxtel("status", "-c", str(config)).stdout, what="the WARN to clear")


def test_a_refused_message_accepted_again_brings_every_other_refused_one_with_it(
    make_broker, make_config, monkeypatch
):
    """The ACL is fixed on a live broker (SIGHUP, no reconnect): the first refused message the broker
    now takes resets the backoff of all others, however long they had to wait."""
    import signal

    from agent import runtime
    from tests.diag_support import agent_in_process

    monkeypatch.setattr(runtime, "_REFUSED_RETRY_MIN_S", 0.2)  # 0.2 s doubling: long waits come quickly
    monkeypatch.setitem(__import__("drivers").REGISTRY, "testpins", "tests.diag_support:PinsDriver")
    broker = make_broker(acl=acl_allowing("status", "health", "history/#"))  # only testpins is refused
    sub = Subscriber(broker.port, "boxtel/test-001/testpins")
    try:
        with agent_in_process(make_config(broker, {"testpins": {"min_interval_s": 0.0}})) as agent:
            wait_until(lambda: agent.publisher.connected, what="the connection")
            ctx = agent.drivers[0].ctx
            ctx.reading({"door": "open"})  # refused again and again: its wait doubles
            early = wait_until(lambda: [(seq, at) for seq, (at, delay) in dict(agent._refused).items()
                                        if delay >= 6.4], timeout=20, what="a long wait for the first")
            seq_early, retry_at = early[0]
            ctx.reading({"door": "closed"})  # refused once: a short wait
            wait_until(lambda: len(agent._refused) == 2, what="the second refusal")
            (broker.workdir / "acl").write_text(OPEN_ACL)
            broker.process.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL, keeping connections
            late = sub.wait_for("boxtel/test-001/testpins", lambda p: p["door"] == "closed", timeout=10)
            first = sub.wait_for("boxtel/test-001/testpins", lambda p: p["seq"] == seq_early, timeout=10)
            assert first.received_mono < retry_at - 1.0, (first.received_mono, retry_at)
            assert abs(first.received_mono - late.received_mono) < 2.0
            wait_until(lambda: not agent._refused, what="nothing refused any more")
            assert agent.publisher.reconnects == 0  # the same connection: it was the acceptance that reset
    finally:
        sub.close()


def test_mqtt_311_warns_that_refusals_are_invisible(broker, make_config, subscribe, run_agent):
    sub = subscribe(STATUS)
    agent = run_agent(make_config(broker, {"mqtt": {"protocol": "3.1.1"}}))
    sub.wait_for(STATUS, online)
    assert "cannot be detected" in agent.log()


# -- TLS ---------------------------------------------------------------------------------------------
@pytest.fixture
def tls_broker(make_broker, certs):
    """TLS on its own port; a plain listener beside it for the test's subscriber."""
    from agent.devbroker import free_port

    plain = free_port()
    broker = make_broker(
        tls={"cafile": str(certs["ca_crt"]), "certfile": str(certs["server_crt"]), "keyfile": str(certs["server_key"])},
        extra=[f"listener {plain} 127.0.0.1"],
    )
    broker.plain_port = plain
    return broker


def tls_config(make_config, broker, **mqtt):
    return make_config(broker, {"mqtt": {"tls": True, "host": "localhost", **mqtt}})


def test_tls_with_the_right_ca_connects(tls_broker, make_config, run_agent, certs):
    sub = Subscriber(tls_broker.plain_port, STATUS)
    try:
        run_agent(tls_config(make_config, tls_broker, ca_file=str(certs["ca_crt"])))
        assert online(sub.wait_for(STATUS).json)
    finally:
        sub.close()


def test_tls_with_a_wrong_ca_is_refused(tls_broker, make_config, run_agent, certs):
    sub = Subscriber(tls_broker.plain_port, STATUS)
    try:
        agent = run_agent(tls_config(make_config, tls_broker, ca_file=str(certs["other_ca_crt"])))
        wait_until(lambda: "TLS certificate not trusted" in agent.log(), what="a TLS verification error")
        assert sub.on(STATUS) == []
        assert agent.alive()  # it keeps retrying; a broker certificate can be fixed without a restart
    finally:
        sub.close()


def test_tls_insecure_connects_and_warns_every_connect(tls_broker, make_config, run_agent, certs):
    sub = Subscriber(tls_broker.plain_port, STATUS)
    try:
        agent = run_agent(tls_config(make_config, tls_broker, ca_file=str(certs["other_ca_crt"]), tls_insecure=True))
        first = sub.wait_for(STATUS, online).json
        tls_broker.restart()
        sub.close()
        sub = Subscriber(tls_broker.plain_port, STATUS)
        sub.wait_for(STATUS, lambda p: online(p) and p["session"] > first["session"])
        assert agent.log().count("TLS certificate verification is OFF") >= 2
    finally:
        sub.close()


def test_client_certificate_authenticates(make_broker, make_config, run_agent, certs, tmp_path):
    from agent.devbroker import free_port

    plain = free_port()
    broker = make_broker(
        tls={"cafile": str(certs["ca_crt"]), "certfile": str(certs["server_crt"]),
             "keyfile": str(certs["server_key"]), "require_certificate": "true"},
        extra=[f"listener {plain} 127.0.0.1"],
    )
    sub = Subscriber(plain, STATUS)
    try:
        run_agent(tls_config(make_config, broker, ca_file=str(certs["ca_crt"]),
                             cert_file=str(certs["client_crt"]), key_file=str(certs["client_key"])))
        assert online(sub.wait_for(STATUS).json)
    finally:
        sub.close()


def test_password_is_sent_and_never_logged(make_broker, make_config, run_agent, tmp_path):
    broker = make_broker(passwords={"test-001": "s3cret-pw", "watcher": "w"})
    secret = tmp_path / "mqtt.password"
    secret.write_text("s3cret-pw\n")
    secret.chmod(0o600)
    sub = Subscriber(broker.port, STATUS, username="watcher", password="w")
    try:
        agent = run_agent(make_config(broker, {"mqtt": {"password_file": str(secret)}}))
        assert online(sub.wait_for(STATUS).json)
        agent.terminate()
        assert "s3cret-pw" not in agent.log()
    finally:
        sub.close()


def test_wrong_password_is_reported(make_broker, make_config, run_agent, tmp_path):
    broker = make_broker(passwords={"test-001": "right"})
    secret = tmp_path / "mqtt.password"
    secret.write_text("wrong\n")
    secret.chmod(0o600)
    agent = run_agent(make_config(broker, {"mqtt": {"password_file": str(secret)}}))
    wait_until(lambda: "broker refused the connection" in agent.log(), what="an authentication refusal")
    assert "wrong" not in agent.log().replace("broker refused", "")
