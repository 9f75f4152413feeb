"""`boxtel pins`: rows from every driver's pins(), read through the control socket. Until the GPIO
drivers exist, a test-only driver on gpiozero MockFactory pins supplies them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import drivers
from agent.commands.pins import render
from tests.diag_support import agent_in_process
from tests.support import ROOT, boxtel, wait_until

SIMULATED = {"simulate": True, "host": {"interval_s": 1.0, "power_check_s": 1.0}}


@pytest.fixture
def pins_driver(monkeypatch):
    monkeypatch.setitem(drivers.REGISTRY, "testpins", "tests.diag_support:PinsDriver")


def test_pins_once_shows_the_live_level_of_each_input(broker, make_config, pins_driver):
    config = make_config(broker, {"testpins": {"pin": 22}})
    with agent_in_process(config) as agent:
        first = boxtel("pins", "--once", "-c", str(config))
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [
            "INPUT          PIN  RAW  STATE  EDGES/S",
            "testpins door  22   1    open   0.0",
        ]
        agent.drivers[0].pin.drive_low()  # the switch closes
        second = boxtel("pins", "--once", "-c", str(config))
        assert second.stdout.splitlines()[1] == "testpins door  22   0    closed  0.0"


def test_pins_refreshes_until_ctrl_c(broker, make_config, pins_driver):
    config = make_config(broker, {"testpins": {"pin": 5}})
    with agent_in_process(config) as agent:
        live = subprocess.Popen([sys.executable, "-m", "agent", "pins", "--interval", "0.05", "-c", str(config)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            lines: list[str] = []
            wait_until(lambda: lines.append(live.stdout.readline()) or "testpins door" in lines[-1],
                       what="a first table")
            agent.drivers[0].pin.drive_low()
            wait_until(lambda: lines.append(live.stdout.readline()) or "closed" in lines[-1],
                       what="a table showing the closed switch")
            live.send_signal(signal.SIGINT)
            assert live.wait(timeout=10) == 0
            assert "Traceback" not in live.stderr.read()
        finally:
            if live.poll() is None:
                os.kill(live.pid, signal.SIGKILL)
                live.wait()


def test_pins_with_no_gpio_inputs_says_so(broker, make_config, run_agent):
    from agent import control
    from tests.diag_support import is_socket

    config = make_config(broker, SIMULATED)
    run_agent(config)
    wait_until(lambda: is_socket(control.socket_path(str(config))), what="the control socket")
    done = boxtel("pins", "--once", "-c", str(config))
    assert done.returncode == 0
    assert done.stdout.startswith("no GPIO inputs in the running agent")


def test_pins_without_an_agent_exits_69(make_config):
    done = boxtel("pins", "-c", str(make_config()))
    assert done.returncode == 69
    assert "no boxtel agent is running" in done.stderr


def test_a_row_with_unknown_values_shows_dashes():
    table = render([{"input": "water tank_low", "pin": 6, "raw": None, "state": "unknown", "edges_per_s": None}])
    assert table.splitlines()[1] == "water tank_low  6    -    unknown  -"
