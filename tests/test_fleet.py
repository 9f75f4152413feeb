"""`boxtel fleet`: the model's accounting, and the console against a real mosquitto fed by simulate-fleet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.devbroker import free_port
from agent.errors import UsageError
from agent.fleet.broker import BrokerTarget, parse_broker_url
from agent.fleet.model import FleetModel
from agent.fleet.sim import FleetSim
from tests.support import ROOT, boxtel, wait_until


# -- the model -----------------------------------------------------------------------------------------
def feed(model: FleetModel, box: str, stream: str, now: float = 0.0, retained: bool = False, **payload: Any) -> None:
    model.ingest(f"boxtel/{box}/{stream}", json.dumps(payload), retained, now=now, wall=1_700_000_000.0 + now)


def test_a_gap_is_pending_then_lost_after_the_settle_window():
    model = FleetModel(settle_s=5.0)
    for seq in (1, 2, 5):
        feed(model, "b1", "gps", now=0.0, seq=seq)
    view = model.boxes["b1"]
    assert len(view.seq.pending) == 2 and view.seq_lost == 0
    model.settle(now=4.9)
    assert view.seq_lost == 0
    model.settle(now=5.0)
    assert view.seq_lost == 2 and not view.seq.pending


def test_out_of_order_and_replayed_seqs_fill_gaps_and_late_ones_are_no_longer_lost():
    model = FleetModel(settle_s=1.0)
    for seq in (10, 13, 12):  # QoS 1 redelivery after a reconnect arrives out of order
        feed(model, "b1", "health", now=0.0, seq=seq)
    model.settle(now=2.0)
    view = model.boxes["b1"]
    assert view.seq_lost == 1  # 11
    feed(model, "b1", "history/gps", now=3.0, seq=11)
    assert view.seq_lost == 0 and view.seq.late == 1


def test_duplicates_are_counted_and_not_losses():
    model = FleetModel()
    for seq in (1, 2, 2, 3, 1):
        feed(model, "b1", "events", seq=seq, kind="door_opened")
    assert model.boxes["b1"].seq.duplicates == 2
    assert model.boxes["b1"].row()["seq_pending"] == 0


def test_retained_messages_and_history_from_before_the_console_take_no_part_in_the_accounting():
    model = FleetModel(settle_s=0.0)
    feed(model, "b1", "gps", retained=True, seq=100, fix="3d", lat=1.0, lon=2.0)
    feed(model, "b1", "health", retained=True, seq=40)
    assert model.boxes["b1"].row()["gps"]["lat"] == 1.0
    feed(model, "b1", "gps", seq=120, fix="3d", lat=1.5, lon=2.0)
    feed(model, "b1", "history/gps", seq=101)  # replay of what was buffered before we subscribed
    model.settle(now=10.0)
    row = model.boxes["b1"].row()
    assert row["seq_lost"] == 0 and row["seq_duplicates"] == 0
    assert row["gps"]["lat"] == 1.5  # history never overwrites the current state


def test_gaps_the_box_reports_as_dropped_are_not_counted_lost():
    model = FleetModel(settle_s=0.0)
    feed(model, "b1", "health", seq=1, dropped=7)
    feed(model, "b1", "gps", seq=5)  # 2, 3, 4 missing
    feed(model, "b1", "health", seq=6, dropped=9)  # the box admits two of them
    model.settle(now=1.0)
    row = model.boxes["b1"].row()
    assert (row["seq_lost"], row["seq_dropped"]) == (1, 2)


def test_the_table_shows_outbox_depth_and_what_the_box_dropped():
    from agent.fleet.console import _COLUMNS, _cells

    model = FleetModel()
    feed(model, "b1", "health", seq=1, outbox_depth=40, dropped=0, clock_source="gps")
    cells = dict(zip(_COLUMNS, _cells(model.boxes["b1"], 1_700_000_001.0), strict=True))
    assert (cells["OUTBOX"], cells["CLOCK"]) == ("40", "gps")
    feed(model, "b1", "health", seq=2, outbox_depth=1200, dropped=3)
    cells = dict(zip(_COLUMNS, _cells(model.boxes["b1"], 1_700_000_001.0), strict=True))
    assert cells["OUTBOX"] == "1200 (3 dropped)"


def test_a_stale_will_does_not_turn_a_box_offline_but_a_current_one_does():
    model = FleetModel()
    feed(model, "b1", "status", state="online", session=7, site="Bor")
    feed(model, "b1", "status", state="offline", session=6, reason="connection lost")
    assert model.boxes["b1"].state == "online" and model.boxes["b1"].stale_wills == 1
    feed(model, "b1", "status", state="offline", session=7, reason="connection lost")
    assert model.boxes["b1"].row()["state"] == "offline"
    assert model.boxes["b1"].row()["reason"] == "connection lost"


def test_a_birth_with_a_lower_session_restarts_the_seq_accounting():
    model = FleetModel(settle_s=0.0)
    feed(model, "b1", "status", state="online", session=50)
    feed(model, "b1", "gps", seq=9000)
    feed(model, "b1", "status", state="online", session=1)  # state dir wiped: seq starts again
    feed(model, "b1", "gps", seq=1)
    feed(model, "b1", "gps", seq=2)
    model.settle(now=1.0)
    row = model.boxes["b1"].row()
    assert row["seq_resets"] == 1 and row["seq_duplicates"] == 0 and row["seq_lost"] == 0


def test_alarms_are_the_union_of_every_state_topic_and_boxes_with_alarms_come_first():
    model = FleetModel()
    for box in ("a1", "b1", "c1"):
        feed(model, box, "status", state="online", session=1)
    feed(model, "c1", "generator", alarms=["fuel_low"], running=True)
    feed(model, "c1", "locker/armory-1", alarms=["door_open_too_long"], door="open")
    feed(model, "b1", "status", state="offline", session=1)
    assert [v.box for v in model.sorted_views()] == ["c1", "b1", "a1"]
    assert model.boxes["c1"].row()["alarms"] == ["door_open_too_long", "fuel_low"]
    feed(model, "c1", "generator", alarms=[], running=True)
    assert model.boxes["c1"].row()["alarms"] == ["door_open_too_long"]
    assert model.boxes["c1"].row()["doors"] == {"armory-1": {"door": "open"}}


def test_a_state_the_box_takes_back_leaves_the_view():
    model = FleetModel()
    feed(model, "c1", "locker/armory-1", alarms=["door_open_too_long"], door="open")
    feed(model, "c1", "locker/armory-2", alarms=[], door="closed")
    feed(model, "c1", "generator", alarms=["fuel_low"], running=True)
    model.ingest("boxtel/c1/locker/armory-1", b"")  # a locker removed from the config: its retained state cleared
    model.ingest("boxtel/c1/generator", b"")
    row = model.boxes["c1"].row()
    assert row["doors"] == {"armory-2": {"door": "closed"}} and row["generator"] is None and row["alarms"] == []
    assert model.boxes["c1"].bad_payloads == 0


def test_garbage_and_foreign_topics_are_ignored():
    model = FleetModel()
    assert model.ingest("boxtel/b1/gps", b"\xff not json") is None
    assert model.ingest("boxtel/b1/gps", b"[1, 2]") is None
    assert model.ingest("other/b1/gps", b"{}") is None
    assert model.ingest("boxtelx/b1/gps", b"{}") is None
    assert model.boxes["b1"].bad_payloads == 2


@pytest.mark.parametrize("url, expected", [
    ("mqtt://broker.example:1884", ("broker.example", 1884, False)),
    ("mqtts://10.0.0.5", ("10.0.0.5", 8883, True)),
    ("mqtt://[::1]:1883", ("::1", 1883, False)),
])
def test_broker_urls(url, expected):
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize("url", ["http://x:1", "mqtt://", "mqtt://h:99999", "mqtt://u:p@h:1", "h:1883", "mqtt://h/x"])
def test_bad_broker_urls_are_usage_errors(url):
    with pytest.raises(UsageError):
        parse_broker_url(url)


# -- the console against a real broker -----------------------------------------------------------------
class FleetProcess:
    """`boxtel fleet --json` as a real process; a thread collects its lines."""

    def __init__(self, *args: str):
        self.rows: list[dict] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "fleet", "--json", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=ROOT, text=True, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.rows.append(json.loads(line))

    def latest(self, box: str) -> dict | None:
        return next((row for row in reversed(list(self.rows)) if row["box"] == box), None)

    def wait_row(self, box: str, where: Callable[[dict], bool], what: str, timeout: float = 15.0) -> dict:
        def found() -> dict | None:
            row = self.latest(box)
            return row if row is not None and where(row) else None

        return wait_until(found, timeout, f"{what}; last row of {box}: {self.latest(box)}")

    def close(self) -> int:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        code = self.process.wait(timeout=10)
        self._reader.join(5)
        return code


@pytest.fixture
def start_sim(broker) -> Iterator[Callable[..., FleetSim]]:
    sims: list[FleetSim] = []

    def start(boxes: int = 5, **options: Any) -> FleetSim:
        sim = FleetSim(BrokerTarget("127.0.0.1", broker.port, False), boxes, **options)
        sims.append(sim)
        sim.start()
        assert sim.wait_connected(15), sim.error
        return sim

    yield start
    for sim in sims:
        sim.stop()


@pytest.fixture
def console(broker) -> Iterator[Callable[..., FleetProcess]]:
    consoles: list[FleetProcess] = []

    def start(*args: str) -> FleetProcess:
        fleet = FleetProcess("--broker", f"mqtt://127.0.0.1:{broker.port}", *args)
        consoles.append(fleet)
        return fleet

    yield start
    for fleet in consoles:
        if fleet.process.poll() is None:
            fleet.process.kill()
            fleet.process.wait()


def test_console_follows_births_wills_gaps_and_alarms(start_sim, console):
    sim = start_sim(5, rate=20.0, scenarios=False)
    fleet = console("--settle", "0.5", "--refresh", "0.2")
    for box in sim.by_id:
        fleet.wait_row(box, lambda r: r["state"] == "online" and r["seq_received"] > 0, f"{box} online")

    sim.raise_alarm("sim-0003", "locker/armory-1", "door_open_too_long")
    row = fleet.wait_row("sim-0003", lambda r: "door_open_too_long" in r["alarms"], "the alarm")
    assert row["doors"]["armory-1"]["door"] == "closed"

    sim.skip_seq("sim-0002", 3)
    fleet.wait_row("sim-0002", lambda r: r["seq_lost"] == 3, "3 lost seqs")

    sim.drop("sim-0004")  # the connection dies without a DISCONNECT: the broker publishes the will
    row = fleet.wait_row("sim-0004", lambda r: r["state"] == "offline", "the will")
    assert row["reason"] == "connection lost"
    received_before = row["seq_received"]
    box = sim.by_id["sim-0004"]
    sim.rejoin("sim-0004")  # the birth, the current state, then what was buffered, on history/
    wait_until(lambda: box.replayed > 0, what="the replay")
    row = fleet.wait_row(
        "sim-0004",
        lambda r: r["state"] == "online" and r["seq_pending"] == 0
        and r["seq_received"] >= received_before + box.replayed,
        "the rejoin and its replay",
    )
    assert row["seq_lost"] == 0  # the replay filled the gap the live state opened

    assert fleet.close() == 0
    assert all(r["seq_lost"] == 0 for r in fleet.rows if r["box"] not in ("sim-0002",))
    assert fleet.latest("sim-0001")["seq_duplicates"] == 0


def test_console_table_puts_boxes_with_alarms_first(broker, start_sim):
    sim = start_sim(4, rate=5.0, scenarios=False)
    sim.raise_alarm("sim-0004", "generator", "fuel_low")
    wait_until(lambda: "fuel_low" in sim.by_id["sim-0004"].alarms.get("generator", ()), what="the alarm raised")
    result = boxtel("fleet", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--for", "1.5")
    assert result.returncode == 0, result.stderr
    table = result.stdout.strip().split("\n\n")[-1].splitlines()
    assert "boxes 4" in table[0] and table[1].startswith("BOX")
    assert table[2].startswith("sim-0004") and "fuel_low" in table[2]
    assert [line.split()[0] for line in table[3:6]] == ["sim-0001", "sim-0002", "sim-0003"]


def test_console_json_lines_each_name_their_box(broker, start_sim):
    start_sim(3, rate=10.0, scenarios=False)
    result = boxtel("fleet", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--json", "--for", "1")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {row["box"] for row in rows} == {"sim-0001", "sim-0002", "sim-0003"}
    assert all({"state", "since", "site", "gps", "alarms", "outbox_depth", "seq_lost"} <= row.keys() for row in rows)


def test_bad_url_is_a_usage_error_and_no_broker_is_unavailable():
    result = boxtel("fleet", "--broker", "http://example:1883", "--for", "0")
    assert result.returncode == 64 and "mqtt://HOST:PORT" in result.stderr
    result = boxtel("fleet", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--for", "0")
    assert result.returncode == 69, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot connect" in result.stderr


def test_password_file_readable_by_others_is_refused(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    result = boxtel("fleet", "--broker", "mqtt://127.0.0.1:1", "--username", "ops", "--password-file", str(secret))
    assert result.returncode == 78
    assert "0644" in result.stderr and "hunter2" not in result.stderr


def test_console_rides_out_a_broker_restart_without_counting_its_own_outage_as_losses(broker, start_sim, console):
    start_sim(2, rate=20.0, scenarios=False)
    fleet = console("--settle", "0.5", "--refresh", "0.2")
    before = fleet.wait_row("sim-0001", lambda r: r["seq_received"] > 5, "live messages")
    broker.restart()  # same port: boxes and console reconnect on their own
    row = fleet.wait_row("sim-0001", lambda r: r["seq_last"] > before["seq_last"] + 20, "messages after the restart",
                         timeout=30)
    assert row["state"] == "online" and row["seq_lost"] == 0
    assert fleet.close() == 0
    assert "seq lost 0" in fleet.process.stderr.read()


def test_without_broker_the_console_takes_the_broker_from_the_config(broker, start_sim, make_config):
    start_sim(2, rate=5.0, scenarios=False)
    config = make_config(broker)
    result = boxtel("fleet", "-c", str(config), "--json", "--for", "1")
    assert result.returncode == 0, result.stderr
    assert {json.loads(line)["box"] for line in result.stdout.splitlines()} == {"sim-0001", "sim-0002"}
    result = boxtel("fleet", "-c", str(config.with_name("missing.toml")), "--for", "0")
    assert result.returncode == 78 and "missing.toml" in result.stderr


def test_console_and_simulator_over_tls_and_an_untrusted_broker_is_refused(make_broker, certs):
    broker = make_broker(tls={"cafile": str(certs["ca_crt"]), "certfile": str(certs["server_crt"]),
                              "keyfile": str(certs["server_key"])})
    sim = FleetSim(BrokerTarget("localhost", broker.port, True, ca_file=str(certs["ca_crt"])), 2, rate=5.0,
                   scenarios=False)
    sim.start()
    try:
        assert sim.wait_connected(15), sim.error
        url = f"mqtts://localhost:{broker.port}"
        result = boxtel("fleet", "--broker", url, "--ca", str(certs["ca_crt"]), "--json", "--for", "1")
        assert result.returncode == 0, result.stderr
        assert {json.loads(line)["box"] for line in result.stdout.splitlines()} == {"sim-0001", "sim-0002"}
        result = boxtel("fleet", "--broker", url, "--ca", str(certs["other_ca_crt"]), "--for", "0")
        assert result.returncode == 69 and "not trusted" in result.stderr
    finally:
        sim.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(["state", "session", "since", "site", "seq", "alarms", "lat", "lon", "fix",
                               "running", "fuel_pct", "tank_pct", "tank_level", "door", "dropped",
                               "outbox_depth", "clock_source", "kind", "ts", "reason", "version"])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["status", "gps", "generator", "water", "locker/a", "health", "events", "history/gps", "x/y/z"]),
    st.dictionaries(field_names, json_values, max_size=6),
    st.booleans(),
), max_size=12))
def test_any_json_from_the_broker_never_breaks_the_model_or_its_views(messages):
    from agent.fleet.console import _cells

    model = FleetModel(settle_s=0.0)
    for now, (stream, payload, retained) in enumerate(messages):
        model.ingest(f"boxtel/b1/{stream}", json.dumps(payload), retained, now=float(now), wall=1.7e9 + now)
    model.settle(now=100.0)
    for view in model.sorted_views():
        json.dumps(view.row())
        assert all(isinstance(cell, str) for cell in _cells(view, 1.7e9 + 200))


def test_console_logs_in_with_its_own_credentials_and_a_refusal_is_unavailable(make_broker, tmp_path):
    broker = make_broker(passwords={"fleet-console": "s3cret-pw"})
    url = f"mqtt://127.0.0.1:{broker.port}"
    result = boxtel("fleet", "--broker", url, "--for", "0")
    assert result.returncode == 69 and "refused" in result.stderr, result.stderr
    secret = tmp_path / "console.password"
    secret.write_text("s3cret-pw\n")
    secret.chmod(0o600)
    result = boxtel("fleet", "--broker", url, "--username", "fleet-console", "--password-file", str(secret),
                    "--json", "--for", "0.5")
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_the_buffered_client_runs_on_the_paho_minor_its_private_overrides_were_checked_against():
    """BufferedClient overrides paho's private `_sock_recv(bufsize)` / `_sock_send(buf)`. Another paho
    minor may change them silently: this fails until the overrides are re-checked and PAHO_TESTED and
    setup.cfg's pin move together."""
    import inspect
    import re
    from importlib.metadata import version

    import paho.mqtt.client as mqtt

    from agent.fleet.broker import PAHO_TESTED, BufferedClient

    assert version("paho-mqtt").startswith(PAHO_TESTED + "."), (version("paho-mqtt"), PAHO_TESTED)
    pin = re.search(r"^\s*paho-mqtt ~= (\d+\.\d+)\.\d+$", (ROOT / "setup.cfg").read_text(), re.M)
    assert pin and pin.group(1) == PAHO_TESTED
    for name, parameters in (("_sock_recv", ["self", "bufsize"]), ("_sock_send", ["self", "buf"])):
        assert list(inspect.signature(getattr(mqtt.Client, name)).parameters) == parameters
        assert name in BufferedClient.__dict__


def test_the_box_daemon_does_not_load_the_central_side():
    """The CLI imports every command's module, `boxtel run` on a box too: the console and the simulator
    load only when their command runs (RSS on the box, bench/footprint.py)."""
    code = ("import sys, agent.cli; agent.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m in ('agent.fleet.console', 'agent.fleet.sim')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
