"""Generator, Modbus source: the real pymodbus client against a real pymodbus server (TCP on loopback,
RTU over a pty pair) serving the DSE GenComm and ComAp maps of a simulated genset."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.bus import Bus, Event, Reading
from agent.clock import Clock
from agent.errors import ConfigError
from agent.schema import build
from drivers.base import DriverContext
from drivers.generator import GeneratorDriver
from drivers.generator.modbus_adapter import RegisterServer
from drivers.generator.modbus_sim import REGISTERS, Genset, PtyPair, play
from tests.support import ROOT

FUEL = {"tank_litres": 400.0, "fuel_hold_s": 60.0, "fuel_settle_s": 120.0, "fuel_drop_min_l": 20.0,
        "refuel_min_l": 20.0, "fuel_rate_window_s": 600.0}


class Controller:
    """A simulated controller on a real server, and a Modbus generator driver polling it."""

    def __init__(self, kind: str, transport: str, tmp_path: Path, size: int = REGISTERS, **extra: Any):
        self.genset = Genset(kind)
        self.pty = None
        table: dict[str, Any] = {"source": "modbus", "controller": kind, "transport": transport, "unit": 7,
                                 "timeout_s": 0.3, "poll_s": 5.0, **extra}
        if transport == "tcp":
            self.server = RegisterServer(self.genset.register, size=size, unit=7, tcp=("127.0.0.1", 0))
            self.server.start()
            table.update(host="127.0.0.1", port=self.server.port)
        else:
            self.pty = PtyPair(tmp_path)
            self.server = RegisterServer(self.genset.register, size=size, unit=7, device=self.pty.server_path,
                                         baud=19200, parity="N")
            self.server.start()
            table.update(device=self.pty.client_path, baud=19200, parity="N")
        self.config = build(GeneratorDriver.Config, table, where="generator", base_dir=tmp_path, file="test.toml")
        self.tmp_path = tmp_path
        self.now = 1000.0
        self.restart(stop=False)

    def restart(self, stop: bool = True) -> Controller:
        """A new driver on the same state dir, as after the agent restarted."""
        if stop:
            self.driver.stop()
        self.bus = Bus()
        self.ctx = DriverContext("generator", bus=self.bus, clock=Clock(lambda: False), state_dir=self.tmp_path,
                                 simulate=False)
        self.driver = GeneratorDriver(self.config, self.ctx)
        self.items: list[Any] = []
        return self

    def open(self) -> Controller:
        self.driver.open()
        return self

    def poll(self, seconds: float = 5.0) -> dict[str, Any]:
        self.now += seconds
        self.driver.poll(self.now)
        return self.state()

    def drain(self) -> list[Any]:
        while (item := self.bus.get_nowait()) is not None:
            self.items.append(item)
        return self.items

    def state(self) -> dict[str, Any]:
        return [i for i in self.drain() if isinstance(i, Reading)][-1].values

    def events(self, kind: str | None = None) -> list[Event]:
        return [i for i in self.drain() if isinstance(i, Event) and (kind is None or i.kind == kind)]

    def alarms(self, kind: str = "alarm_raised") -> list[tuple[str, str]]:
        return [(e.details["alarm"], e.severity) for e in self.events(kind)]

    def close(self) -> None:
        self.driver.stop()
        self.server.stop()
        if self.pty is not None:
            self.pty.close()


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Any]:
    made: list[Controller] = []

    def make(kind: str = "dse", transport: str = "tcp", **extra: Any) -> Controller:
        made.append(Controller(kind, transport, tmp_path, **extra))
        return made[-1]

    yield make
    for c in made:
        c.close()


BOTH = pytest.mark.parametrize("kind,transport", [("dse", "tcp"), ("dse", "rtu"), ("comap", "tcp"), ("comap", "rtu")])


@BOTH
def test_every_field_is_read_from_the_controller(controller, kind, transport):
    c = controller(kind, transport).open()
    g = c.genset
    g.rpm, g.fuel_pct, g.battery_v, g.load_kw, g.state, g.run_s = 1500, 63, 27.4, 12.0, "loaded", 3600 * 1520.4
    g.oil_kpa, g.coolant_c = 380, -5
    state = c.poll()
    assert state["running"] is True and state["rpm"] == 1500 and state["fuel_pct"] == 63
    assert state["battery_v"] == 27.4 and state["load_kw"] == 12.0
    assert state["run_hours"] == pytest.approx(1520.4, abs=0.01)
    assert state["fault"] is False and state["faults"] == []
    assert state["engine_state"] == ("running" if kind == "dse" else "loaded")
    if kind == "dse":  # GenComm has them on page 4; the ComAp map used here does not
        assert state["oil_kpa"] == 380 and state["coolant_c"] == -5
    else:
        assert state["oil_kpa"] is None and state["coolant_c"] is None
    g.rpm, g.load_kw, g.state = 0, 0.0, "ready"
    state = c.poll()
    assert state["running"] is False and state["engine_state"] in ("stopped", "ready")
    assert [e.kind for e in c.events()] == ["generator_started", "generator_stopped"] or \
        [e.kind for e in c.events()] == ["generator_stopped"]
    assert c.server.writes == 0 and c.server.reads > 0  # read-only: the server saw no write request


@BOTH
def test_controller_alarms_raise_and_clear_with_its_severity_and_names(controller, kind, transport):
    c = controller(kind, transport).open()
    c.poll()
    oil, battery = ("low_oil_pressure", "battery_low_voltage") if kind == "dse" else ("oil_press", "batt_volt")
    c.genset.alarms = {"low_oil_pressure" if kind == "dse" else "Oil Press": "alarm",
                       "battery_low_voltage" if kind == "dse" else "Batt Volt": "warning"}
    state = c.poll()
    assert sorted(c.alarms()) == sorted([(f"generator_fault:{oil}", "alarm"), (f"generator_fault:{battery}", "warning")])
    assert state["fault"] is True and state["faults"] == sorted([oil, battery])
    assert sorted(state["alarms"]) == sorted([f"generator_fault:{oil}", f"generator_fault:{battery}"])
    c.genset.alarms = {"battery_low_voltage" if kind == "dse" else "Batt Volt": "warning"}
    c.poll()
    assert [a for a, _ in c.alarms("alarm_cleared")] == [f"generator_fault:{oil}"]
    c.genset.alarms = {}
    assert c.poll()["faults"] == []
    assert sorted(a for a, _ in c.alarms("alarm_cleared")) == sorted([f"generator_fault:{oil}",
                                                                     f"generator_fault:{battery}"])


def test_electrical_trip_is_an_alarm_and_fail_to_start_has_its_own_name(controller):
    c = controller("dse").open()
    c.genset.alarms = {"earth_fault_trip": "trip", "fail_to_start": "alarm"}
    c.poll()
    assert sorted(c.alarms()) == [("fail_to_start", "alarm"), ("generator_fault:earth_fault_trip", "alarm")]
    assert c.state()["faults"] == ["earth_fault_trip", "fail_to_start"]
    c.genset.alarms = {}
    c.poll()
    assert sorted(a for a, _ in c.alarms("alarm_cleared")) == ["fail_to_start", "generator_fault:earth_fault_trip"]


@pytest.mark.parametrize("kind", ["dse", "comap"])
def test_the_controllers_fuel_level_raises_and_clears_fuel_low_with_hysteresis(controller, kind):
    c = controller(kind, fuel_low_pct=20.0, fuel_low_clear_pct=25.0).open()
    for pct in (30, 19, 22, 19, 24, 26, 21):
        c.genset.fuel_pct = pct
        c.poll()
    assert c.alarms() == [("fuel_low", "warning")] and c.alarms("alarm_cleared") == [("fuel_low", "info")]


def test_a_start_that_never_runs_raises_fail_to_start(controller):
    c = controller("comap", fail_to_start_s=30.0).open()
    c.genset.state, c.genset.rpm = "cranking", 180
    c.poll(5.0)
    c.poll(20.0)
    assert c.alarms() == []
    c.poll(15.0)  # 35 s of starting without running
    assert c.alarms() == [("fail_to_start", "alarm")]
    c.genset.state, c.genset.rpm = "running", 1500
    c.poll()
    assert c.alarms("alarm_cleared") == [("fail_to_start", "info")]


def test_alarms_across_a_restart_are_raised_once_and_cleared_when_gone(controller):
    c = controller("dse").open()
    c.genset.alarms = {"low_oil_pressure": "alarm", "battery_low_voltage": "warning"}
    c.genset.rpm = 1500
    c.poll()
    assert len(c.alarms()) == 2
    c.genset.alarms = {"low_oil_pressure": "alarm"}  # the battery recovered while the agent was down
    c.genset.rpm = 0  # and the set stopped
    c.restart().open()
    state = c.poll()
    assert c.alarms() == [] and c.alarms("alarm_cleared") == [("generator_fault:battery_low_voltage", "info")]
    assert state["alarms"] == ["generator_fault:low_oil_pressure"]
    assert [(e.kind, e.details) for e in c.events() if e.kind.startswith("generator_")] == \
        [("generator_stopped", {"at_start": True, "run_s": None})]


def test_a_controller_absent_at_start_is_lost_after_lost_after_polls(controller):
    c = controller("comap", lost_after=2).open()
    c.server.silent = True
    c.poll()
    assert c.alarms() == []
    c.poll()
    assert c.alarms() == [("controller_lost", "alarm")]
    assert c.state()["running"] is None and c.state()["faults"] is None


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
def test_a_controller_that_vanishes_is_lost_with_null_readings_and_backoff_then_recovers(controller, transport):
    c = controller("dse", transport, lost_after=3, backoff_max_s=40.0).open()
    c.genset.rpm, c.genset.fuel_pct = 1500, 70
    c.genset.alarms = {"low_oil_pressure": "alarm"}
    assert c.poll()["rpm"] == 1500
    c.server.silent = True
    state = c.poll()
    assert state["rpm"] is None and state["fuel_pct"] is None and state["running"] is None  # never stale
    assert c.alarms() == [("generator_fault:low_oil_pressure", "alarm")]  # nothing new yet
    assert c.driver.next_poll_s() == 5.0
    c.poll()
    c.poll()
    assert ("controller_lost", "alarm") in c.alarms()
    assert c.driver.status()["link"] == "lost"  # `boxtel status` marks the generator FAIL
    delays = [c.driver.next_poll_s()]
    for _ in range(4):
        c.poll()
        delays.append(c.driver.next_poll_s())
    assert delays == [10.0, 20.0, 40.0, 40.0, 40.0]  # doubling, capped at backoff_max_s
    assert c.driver.health()["generator_modbus_timeout"] == 7
    # the controller's shutdown stays raised while it is silent: a cut cable disarms nothing
    assert "generator_fault:low_oil_pressure" in c.state()["alarms"]
    assert c.alarms("alarm_cleared") == []
    c.server.silent = False
    state = c.poll()
    assert state["rpm"] == 1500 and state["fuel_pct"] == 70
    assert c.alarms("alarm_cleared") == [("controller_lost", "info")]
    assert c.driver.next_poll_s() == 5.0 and c.driver.status()["link"] == "connected"
    assert c.server.writes == 0


def test_a_garbled_rtu_reply_is_counted_as_a_crc_error(controller):
    c = controller("dse", "rtu", lost_after=3).open()
    c.pty.garble = True
    assert c.poll()["rpm"] is None
    assert c.driver.health()["generator_modbus_crc"] == 1
    assert c.poll()["rpm"] == 0  # the next reply is clean
    for _ in range(4):  # a noisy pair: every reply garbled
        c.pty.garble = True
        c.poll()
    assert c.driver.health()["generator_modbus_crc"] == 5 and ("controller_lost", "alarm") in c.alarms()
    assert c.poll()["rpm"] == 0 and c.alarms("alarm_cleared") == [("controller_lost", "info")]


def test_a_read_the_controller_refuses_is_counted_as_an_exception(controller):
    c = controller("dse", size=1100).open()  # a controller without pages 6 to 8
    state = c.poll()
    assert state["rpm"] is None and c.driver.health()["generator_modbus_exception"] == 1
    assert "refused the read" in c.ctx.last_error


HOSTILE = sorted((ROOT / "tests" / "data" / "modbus").glob("*.json"))


@pytest.mark.parametrize("case", HOSTILE, ids=lambda p: p.stem)
def test_hostile_replies_become_null_never_a_number(controller, case):
    """Each case (tests/data/modbus/<what it pins>.json): registers forced to a hostile value, the fields
    expected, and whether the reply counts as a bad value. Adding a case is adding a file."""
    data = json.loads(case.read_text())
    c = controller(data["controller"]).open()
    for key, value in data["genset"].items():
        setattr(c.genset, key, value)
    c.genset.raw.update({int(k): v for k, v in data["registers"].items()})
    state = c.poll()
    for name, expected in data["expect"].items():
        assert state[name] == expected, f"{case.stem}: {name}"
    assert c.driver.health()["generator_modbus_bad_value"] == data["bad_values"], case.stem
    assert not any(ord(ch) < 0x20 for ch in c.ctx.last_error or ""), "a reply reached a log line raw"
    if "running" not in data["expect"]:
        assert state["running"] is True


# -- fuel: the scenario against the real server --------------------------------------------------------
@pytest.mark.parametrize("kind,transport", [("dse", "tcp"), ("comap", "rtu")])
def test_the_theft_scenario_raises_fuel_drop_exactly_once(controller, kind, transport):
    """The simulator's cycle at 1 s a poll, each scenario second standing for 10 real ones: a start,
    consumption, a refuel, a stop, 80 L gone while stopped, a run, a low-oil shutdown."""
    c = controller(kind, transport, **FUEL).open()
    rng = random.Random(4)
    for t in range(0, 120):
        play(c.genset, float(t), rng.uniform(-0.4, 0.4))
        c.poll(10.0)
    drops = [e for e in c.events("alarm_raised") if e.details["alarm"] == "fuel_drop_while_stopped"]
    assert len(drops) == 1
    assert drops[0].severity == "alarm" and 70 <= drops[0].details["litres"] <= 90
    assert drops[0].details["window_s"] >= 60
    refuels = c.events("refuelled")
    assert len(refuels) == 1 and 140 <= refuels[0].details["litres"] <= 180
    cleared = [e for e in c.events("alarm_cleared") if e.details["alarm"] == "fuel_drop_while_stopped"]
    assert len(cleared) == 1 and cleared[0].details["reason"] == "generator started"
    assert ("generator_fault:" + ("low_oil_pressure" if kind == "dse" else "oil_press"), "alarm") in c.alarms()


def test_consumption_and_noise_raise_nothing_and_give_litres_per_hour(controller):
    c = controller("dse", **FUEL).open()
    rng = random.Random(9)
    g = c.genset
    fuel = 90.0
    g.rpm = 1500
    for _ in range(360):  # an hour running at 4 % (16 L) an hour, the sender jittering by ±1.5 %
        fuel -= 4.0 / 360
        g.fuel_pct = fuel + rng.uniform(-1.5, 1.5)
        state = c.poll(10.0)
    assert state["fuel_lph"] == pytest.approx(16.0, abs=3.0)
    assert state["hours_to_empty"] == pytest.approx(state["fuel_l"] / state["fuel_lph"], abs=0.2)
    g.rpm = 0
    for _ in range(8 * 60):  # a night stopped, a poll a minute: noise only
        g.fuel_pct = fuel + rng.uniform(-1.5, 1.5)
        state = c.poll(60.0)
    assert state["fuel_lph"] == 0.0 and state["hours_to_empty"] is None
    assert [e for e in c.events() if e.kind not in ("generator_started", "generator_stopped")] == []


# -- config and footprint --------------------------------------------------------------------------
# Configs the Modbus source refuses: tests/data/config_refused/generator_*.toml (walked by test_config).


def test_a_box_without_modbus_never_imports_pymodbus():
    code = ("import sys, agent.runtime, agent.cli, drivers.generator, drivers.generator.gpio_source, "
            "drivers.generator.simulator; assert 'pymodbus' not in sys.modules, 'pymodbus imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_the_agent_polls_a_simulated_controller(tmp_path, make_config, broker, subscribe):
    from tests.gpio_support import agent_in_process

    path = make_config(broker, extra={"simulate": True, "generator": {
        "source": "modbus", "controller": "dse", "transport": "rtu", "device": "unused", "poll_s": 1.0, "timeout_s": 0.5,
        "tank_litres": 400.0}})
    sub = subscribe("boxtel/+/generator")
    with agent_in_process(path):
        state = sub.wait_for("boxtel/+/generator", lambda p: p["rpm"] is not None and p["fuel_l"] is not None).json
    assert state["battery_v"] > 20 and isinstance(state["run_hours"], float)


MODBUS_ALARMS = ["fuel_drop_while_stopped", "generator_fault:low_oil_pressure", "generator_fault:battery_low_voltage"]


@pytest.mark.slow
def test_the_modbus_demo_scenario_shows_every_event_and_alarm_once(make_config, broker, subscribe, monkeypatch):
    """config/simulate-modbus.toml's generator, its scenario played four times faster."""
    import tomllib

    from drivers.generator.modbus_sim import ControllerSimulator
    from tests.gpio_support import agent_in_process
    from tests.support import wait_until

    speed = 4.0
    monkeypatch.setattr(ControllerSimulator, "speed", speed)
    section = tomllib.loads((ROOT / "config" / "simulate-modbus.toml").read_text())["generator"]
    section.update(poll_s=0.5, timeout_s=0.25, fuel_filter_samples=1, fuel_hold_s=section["fuel_hold_s"] / speed,
                   fuel_settle_s=section["fuel_settle_s"] / speed)
    path = make_config(broker, extra={"simulate": True, "generator": section})
    sub = subscribe("boxtel/test-001/events")
    with agent_in_process(path) as agent:
        def events() -> list[dict]:
            return [m.json for m in sub.on("boxtel/test-001/events") if m.json["source"] == "generator"]

        def all_seen() -> bool:
            seen = events()
            cleared = {e["alarm"] for e in seen if e["kind"] == "alarm_cleared"}
            return set(MODBUS_ALARMS) <= cleared and any(e["kind"] == "refuelled" for e in seen)

        wait_until(all_seen, 60, "the scenario's alarms raised and cleared, and a refuel")
        server = agent.simulation.parts[0].server
        assert server.writes == 0 and server.reads > 0
    seen = events()
    raised = [e["alarm"] for e in seen if e["kind"] == "alarm_raised"]
    assert sorted(raised) == sorted(MODBUS_ALARMS)  # each once; no fail_to_start, no controller_lost
    severities = {e["alarm"]: e["severity"] for e in seen if e["kind"] == "alarm_raised"}
    assert severities == {"fuel_drop_while_stopped": "alarm", "generator_fault:low_oil_pressure": "alarm",
                          "generator_fault:battery_low_voltage": "warning"}
    assert {"generator_started", "generator_stopped"} <= {e["kind"] for e in seen}


def test_the_quiet_scenario_is_a_parked_box_whose_set_runs_and_nothing_happens(make_config, broker, subscribe,
                                                                               monkeypatch):
    """`[simulation] scenario = "quiet"` with the controller (bench/wire's parked box): the demo scenario
    played as fast would have started, refuelled and syphoned within these polls."""
    import tomllib

    from drivers.generator.modbus_sim import ControllerSimulator
    from tests.gpio_support import agent_in_process
    from tests.support import wait_until

    monkeypatch.setattr(ControllerSimulator, "speed", 4.0)
    section = tomllib.loads((ROOT / "config" / "simulate-modbus.toml").read_text())["generator"]
    section.update(poll_s=0.5, timeout_s=0.25, fuel_filter_samples=1)
    path = make_config(broker, extra={"simulate": True, "simulation": {"scenario": "quiet"}, "generator": section})
    sub = subscribe("boxtel/test-001/#")
    with agent_in_process(path) as agent:
        server = agent.simulation.parts[0].server
        wait_until(lambda: server.reads >= 2 * 40, 30, "40 polls (20 s, 80 s of the demo at this speed)")
        states = [m.json for m in sub.on("boxtel/test-001/generator") if m.json["running"] is not None]
    # (a state before the first poll has every reading null)
    assert states and all(s["running"] and s["fuel_pct"] == 70.0 for s in states)
    assert not [m.json for m in sub.on("boxtel/test-001/events") if m.json["source"] == "generator"]


def test_a_serial_port_claimed_by_the_gps_and_the_controller_is_refused(tmp_path, make_config):
    from agent import config as config_module

    port = tmp_path / "ttyUSB0"
    port.touch()
    path = make_config(extra={"gps": {"port": str(port)},
                              "generator": {"source": "modbus", "controller": "dse", "device": str(port)}})
    with pytest.raises(ConfigError, match=r"generator.device: serial port .*ttyUSB0 is already used by gps.port"):
        config_module.load(path)


def test_an_rs485_adapter_that_is_unplugged_counts_connect_errors_and_is_lost(tmp_path):
    config = build(GeneratorDriver.Config, {"source": "modbus", "controller": "dse", "device": str(tmp_path / "gone"),
                                            "lost_after": 2}, where="generator", base_dir=tmp_path, file="t.toml")
    bus = Bus()
    ctx = DriverContext("generator", bus=bus, clock=Clock(lambda: False), state_dir=tmp_path, simulate=False)
    driver = GeneratorDriver(config, ctx)
    driver.open()
    driver.poll(10.0)
    driver.poll(20.0)
    raised = [i.details["alarm"] for i in iter(bus.get_nowait, None) if isinstance(i, Event) and i.kind == "alarm_raised"]
    assert raised == ["controller_lost"]
    assert driver.health()["generator_modbus_connect"] == 2 and "gone" in ctx.last_error
    driver.stop()
