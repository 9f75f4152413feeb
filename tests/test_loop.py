"""Supervised door loops on gpiozero's MCP3008/MCP3208 (MockFactory pins): bands, settling, tamper,
the paper-clip attack, the shared sampler thread; the arm switch and the box's tamper switch."""

from __future__ import annotations

import itertools

import pytest

from drivers.gpio_sim import mock_adc
from drivers.locker import LockerDriver
from drivers.loop import LoopSampler
from drivers.tamper import BoxTamperDriver
from tests.gpio_support import Rig
from tests.support import boxtel

DOUBLE = {"chip": "MCP3008", "channel": 2, "eol": "double", "r_eol_ohm": 4700, "r_alarm_ohm": 4700,
          "r_pullup_ohm": 4700}
SINGLE = {"chip": "MCP3008", "channel": 2, "eol": "single", "r_eol_ohm": 2200, "r_pullup_ohm": 4700}
ARM = 6


def divider(loop_ohm: float, pullup_ohm: float, top: int) -> int:
    """What the ADC reads: full scale x R_loop / (R_loop + R_pullup)."""
    return min(top, round((top + 1) * loop_ohm / (loop_ohm + pullup_ohm)))


class Loop:
    """A locker on a supervised loop, its ADC level set by the test, sampled at times the test picks."""

    def __init__(self, tmp_path, mock_pins, door=DOUBLE, raw=None, **extra):
        self.rig = Rig(LockerDriver, {"name": "armory-3", "door": {**door}, **extra}, tmp_path, mock_pins)
        self.config = self.rig.config.door
        self.level = [divider(self.config.r_eol_ohm, self.config.r_pullup_ohm, self.config.top) if raw is None
                      else raw]
        mock_adc(mock_pins, self.config).levels[self.config.channel] = lambda: self.level[0]
        self.t = 1000.0
        self.seen = 0

    def open(self) -> Loop:
        self.rig.driver.open_pins()
        return self

    def hold(self, raw: int, seconds: float = 0.2) -> None:
        """The loop reads `raw` for `seconds`, sampled at 20 Hz; then the driver handles what settled."""
        self.level[0] = raw
        for _ in range(round(seconds * 20)):
            self.t += 0.05
            self.rig.driver.loop.sample(self.t)
        self.rig.driver.step(self.t, tick=False)

    def reads(self, state: str) -> int:
        low, high = self.config.plan.expected[self.config.plan.states.index(state)]
        return (low + high) // 2

    def new(self, kind: str | None = None) -> list:
        """Events since the last call (of `kind`, if given)."""
        events = self.rig.events()[self.seen:]
        self.seen += len(events)
        return [e for e in events if kind is None or e.kind == kind]

    def kinds(self) -> list[str]:
        """Events since the last call: their kind, or the alarm an alarm_raised/alarm_cleared names."""
        return [e.details.get("alarm", e.kind) if e.kind.startswith("alarm_") else e.kind for e in self.new()]


# -- bands ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chip", ["MCP3008", "MCP3208"])
@pytest.mark.parametrize(("door", "resistors"), [
    (DOUBLE, (4700, 4700, 4700)), (DOUBLE, (1000, 2200, 1000)), (DOUBLE, (2200, 2200, 10000)),
    (SINGLE, (2200, None, 4700)), (SINGLE, (10000, None, 10000)),
])
def test_every_resistor_within_5_percent_reads_its_state(tmp_path, mock_pins, chip, door, resistors):
    r_eol, r_alarm, r_pullup = resistors
    table = {**door, "chip": chip, "r_eol_ohm": r_eol, "r_pullup_ohm": r_pullup}
    if r_alarm is not None:
        table["r_alarm_ohm"] = r_alarm
    loop = Loop(tmp_path, mock_pins, table)
    plan, top = loop.config.plan, loop.config.top
    cases = {"short": [0.0, 20.0]}  # a paper clip, or a bridge through a few metres of cable
    for eol_k, pull_k, alarm_k in itertools.product((0.95, 1.0, 1.05), repeat=3):
        cases.setdefault("closed", []).append((r_eol * eol_k, r_pullup * pull_k))
        if r_alarm is not None:
            cases.setdefault("open", []).append((r_eol * eol_k + r_alarm * alarm_k, r_pullup * pull_k))
    for state, loops in cases.items():
        for case in loops:
            raw = divider(case, r_pullup, top) if state == "short" else divider(*case, top)
            assert plan.states[plan.classify(raw)] == state, (state, case, raw)
    assert plan.states[plan.classify(top)] == ("cut" if r_alarm is not None else "open")


@pytest.mark.parametrize(("door", "expected"), [
    ({**DOUBLE, "r_eol_ohm": float("nan")}, "locker[0].door.r_eol_ohm: expected a value from 10 to 1000000, got nan"),
    ({**DOUBLE, "r_pullup_ohm": -4700}, "locker[0].door.r_pullup_ohm: expected a value from 10 to 1000000"),
    ({**DOUBLE, "r_alarm_ohm": 1e12}, "locker[0].door.r_alarm_ohm: expected a value from 10 to 1000000"),
    ({**DOUBLE, "channel": 8}, "locker[0].door.channel: expected a value from 0 to 7"),
    ({**DOUBLE, "eol": "triple"}, 'locker[0].door.eol: expected one of "single", "double"'),
    ({**DOUBLE, "r_alarm_ohm": 100}, "locker[0].door.r_alarm_ohm: with ±5 % resistors the closed"),
    ({**DOUBLE, "pin": 17}, "locker[0].door.pin: unknown key"),
    ({**DOUBLE, "bands": {"short": [0, 40], "closed": [30, 540], "open": [650, 710], "cut": [980, 1023]}},
     "locker[0].door.bands.closed: must start at least 8 counts above the band below it"),
    ({**DOUBLE, "bands": {"short": [0, 40], "closed": [540, 480], "open": [650, 710], "cut": [980, 1023]}},
     "locker[0].door.bands.closed: expected [low, high] with low <= high <= 1023"),
    ({**DOUBLE, "bands": {"short": [0, 40], "closed": [480, 540], "open": [650, 710]}},
     "locker[0].door.bands: needs a cut band"),
    ({**DOUBLE, "bands": {"short": [0, 40], "closed": [480, 540], "open": [650, 710], "cut": [980, 2000]}},
     "locker[0].door.bands.cut: expected [low, high] with low <= high <= 1023, got [980, 2000]"),
    ({**DOUBLE, "bands": {"short": [0, 40], "closed": [480, 540], "open": [650, 710], "cut": [980, 1e9]}},
     "locker[0].door.bands.cut[1]: expected an integer"),
])
def test_bad_loop_config_is_refused_with_exit_78(make_config, door, expected):
    result = boxtel("check-config", "-c", str(make_config(extra={"locker": [{"name": "a", "door": door}]})))
    assert result.returncode == 78 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bands_in_raw_counts_for_odd_wiring(tmp_path, mock_pins):
    bands = {"short": [0, 40], "closed": [300, 340], "open": [600, 640], "cut": [1000, 1023]}
    loop = Loop(tmp_path, mock_pins, {**DOUBLE, "bands": bands}, raw=320).open()
    assert loop.rig.state()["door"] == "closed"
    loop.hold(620)
    assert loop.rig.state()["door"] == "open"


# -- transitions ---------------------------------------------------------------------------------------
def test_closed_open_paper_clip_cut_repaired(tmp_path, mock_pins):
    loop = Loop(tmp_path, mock_pins, always_armed=True).open()
    state = loop.rig.state()
    assert (state["door"], state["loop"], state["tamper"], state["alarms"]) == ("closed", "closed", False, [])
    assert "switch_fault" not in state  # no pin to chatter
    loop.kinds()

    loop.hold(loop.reads("open"))
    assert loop.kinds() == ["door_opened", "door_opened_while_armed"]
    loop.hold(loop.reads("closed"))
    assert loop.kinds() == ["door_closed", "door_opened_while_armed"]  # raised, then cleared

    # the paper clip across the pair, then the door opened behind it: the loop reads short throughout
    loop.hold(3)
    tamper = loop.new("alarm_raised")
    assert [(e.details["alarm"], e.severity) for e in tamper] == [("door_tamper", "alarm"),
                                                                 ("door_opened_while_armed", "alarm")]
    assert tamper[0].details["loop"] == "short" and tamper[0].details["raw"] == 3
    for reading in (i for i in loop.rig.drain() if hasattr(i, "values")):
        assert reading.values["door"] != "closed" or "door_tamper" not in reading.values["alarms"]
    assert loop.rig.state()["door"] == "unknown" and loop.rig.state()["tamper"] is True
    loop.hold(2, seconds=2.0)
    assert loop.kinds() == [] and loop.rig.state()["door"] == "unknown"
    loop.hold(loop.reads("open"))  # the clip taken away, the door still open
    assert loop.kinds() == ["door_tamper", "door_opened"]  # cleared; opened (still armed: stays raised)
    assert "door_opened_while_armed" in loop.rig.state()["alarms"]
    loop.hold(loop.reads("closed"))
    assert loop.kinds() == ["door_closed", "door_opened_while_armed"]

    loop.hold(loop.config.top)  # cut
    cut = loop.new("alarm_raised")
    assert [e.details["alarm"] for e in cut] == ["door_tamper", "door_opened_while_armed"]
    assert cut[0].details == {"alarm": "door_tamper", "loop": "cut", "raw": 1023}
    loop.hold(loop.reads("closed"))  # repaired
    assert loop.kinds() == ["door_tamper", "door_opened_while_armed"]
    state = loop.rig.state()
    assert (state["door"], state["loop"], state["alarms"]) == ("closed", "closed", [])


def test_a_short_while_disarmed_is_tamper_but_not_an_opened_door(tmp_path, mock_pins):
    loop = Loop(tmp_path, mock_pins).open()
    loop.kinds()
    loop.hold(0)
    assert [e.details["alarm"] for e in loop.new("alarm_raised")] == ["door_tamper"]
    loop.hold(loop.reads("closed"))
    assert loop.kinds() == ["door_tamper"] and loop.rig.state()["door"] == "closed"


def test_a_change_counts_after_the_settle_time_from_its_first_sample(tmp_path, mock_pins):
    loop = Loop(tmp_path, mock_pins, door={**DOUBLE, "settle_ms": 300}).open()
    loop.kinds()
    start = loop.t
    loop.hold(0, seconds=0.3)  # short for 0.25 s since its first sample: not yet
    assert loop.kinds() == [] and loop.rig.state()["door"] == "closed"
    loop.hold(0, seconds=0.1)
    raised = loop.new("alarm_raised")
    assert [e.details["alarm"] for e in raised] == ["door_tamper"]
    assert raised[0].mono == pytest.approx(start + 0.05)  # the first sample that read short


def test_a_noisy_loop_near_a_band_edge_raises_nothing(tmp_path, mock_pins):
    loop = Loop(tmp_path, mock_pins, door={**DOUBLE, "settle_ms": 100}).open()
    plan = loop.config.plan
    edge = plan.thresholds[1]  # between closed and open
    margin = (plan.expected[2][0] - plan.expected[1][1]) / 4  # the hysteresis
    loop.hold(int(edge - margin + 2))  # closed, just inside the hysteresis
    loop.kinds()
    for i in range(200):  # noise straddling the threshold: each sample crosses it
        loop.hold(int(edge + (margin - 2 if i % 2 else -margin + 2)), seconds=0.05)
    loop.hold(int(edge + margin + 3), seconds=0.05)  # one spike beyond the hysteresis: not settled
    loop.hold(int(edge), seconds=0.5)
    assert loop.kinds() == [] and loop.rig.state()["door"] == "closed"
    loop.hold(int(edge + margin + 3))  # beyond the hysteresis and held: a change
    assert loop.kinds() == ["door_opened"]


def test_an_unreadable_adc_is_tamper_never_closed(tmp_path, mock_pins):
    loop = Loop(tmp_path, mock_pins).open()
    loop.kinds()

    def broken() -> int:
        raise OSError("SPI transfer failed")

    mock_adc(mock_pins, loop.config).levels[loop.config.channel] = broken
    loop.hold(0)
    raised = loop.new("alarm_raised")
    assert [(e.details["alarm"], e.details["loop"]) for e in raised] == [("door_tamper", "fault")]
    assert loop.rig.state()["door"] == "unknown"
    assert loop.rig.ctx.errors["adc_read"] >= 4


def test_the_loop_at_start_is_read_from_the_adc_and_a_tamper_is_not_raised_twice(tmp_path, mock_pins):
    loop = Loop(tmp_path, mock_pins, raw=0).open()
    assert loop.rig.alarms() == ["door_tamper"] and loop.rig.state()["door"] == "unknown"
    loop.rig.driver.stop()
    again = Loop(tmp_path, mock_pins, raw=0).open()
    assert again.rig.alarms() == [] and again.rig.state()["alarms"] == ["door_tamper"]
    again.hold(again.reads("closed"))
    assert again.kinds() == ["door_tamper"]


def test_pins_row_shows_raw_band_and_state(tmp_path, mock_pins):
    loop = Loop(tmp_path, mock_pins).open()
    assert loop.rig.driver.pins() == [{"input": "locker/armory-3 door", "pin": "MCP3008 ch2", "raw": 512,
                                      "state": "closed", "edges_per_s": None,
                                      "band": "244-599 (expected 486-538)"}]


def test_pins_table_gets_a_band_column_only_with_a_loop(tmp_path, mock_pins):
    from agent.commands.pins import render

    loop = Loop(tmp_path, mock_pins).open()
    plain = {"input": "locker/armory-1 door", "pin": 23, "raw": 0, "state": "closed", "edges_per_s": 0.0}
    assert render([plain]).splitlines()[0].split() == ["INPUT", "PIN", "RAW", "STATE", "EDGES/S"]
    table = render([*loop.rig.driver.pins(), plain]).splitlines()
    assert table[0].split() == ["INPUT", "PIN", "RAW", "STATE", "BAND", "EDGES/S"]
    assert table[1].split() == ["locker/armory-3", "door", "MCP3008", "ch2", "512", "closed", "244-599",
                                "(expected", "486-538)", "-"]
    assert table[2].split() == ["locker/armory-1", "door", "23", "0", "closed", "-", "0.0"]


# -- the sampler thread ----------------------------------------------------------------------------------
def test_one_sampler_thread_for_every_loop_watched_by_each_locker(tmp_path, mock_pins):
    first = Loop(tmp_path / "a", mock_pins, raw=512)
    second = Rig(LockerDriver, {"name": "armory-4", "door": {**DOUBLE, "channel": 3}}, tmp_path / "b", mock_pins)
    level = [512]
    mock_adc(mock_pins, second.config.door).levels[3] = lambda: level[0]
    for rig in (first.rig, second):
        rig.driver.start()
    sampler = LoopSampler._current
    assert sampler.thread in first.rig.driver.threads and sampler.thread in second.driver.threads
    level[0] = 0  # the second loop shorted: its own thread reports it within the settle time
    second.wait_event("alarm_raised")
    assert second.state()["door"] == "unknown" and first.rig.events("alarm_raised") == []
    sampler.stop.set()  # the thread ends (as if it died): both drivers say so to the watchdog
    sampler.thread.join(2.0)
    assert "not running" in first.rig.driver.alive() and "not running" in second.driver.alive()


def test_a_loop_no_longer_sampled_tells_the_watchdog(tmp_path, mock_pins):
    loop = Loop(tmp_path, mock_pins).open()
    assert loop.rig.driver.alive() is None
    loop.rig.driver.loop.sampled_at -= 31.0  # a sampler stuck in an SPI transfer
    assert "supervised loop was not sampled for 31 s" in loop.rig.driver.alive()


# -- the arm switch ----------------------------------------------------------------------------------------
def test_the_key_switch_arms_alongside_the_schedule(tmp_path, mock_pins):
    rig = Rig(LockerDriver, {"name": "armory-1", "door": {"pin": 23, "debounce_ms": 5.0},
                             "arm_switch": {"pin": ARM, "debounce_ms": 5.0}, "armed_schedule": ["22:00-06:00"]},
              tmp_path, mock_pins)
    rig.wire(23, False)
    rig.wire(ARM, False)
    minute = [12 * 60]
    rig.driver.local_minute = lambda: minute[0]
    rig.driver.open_pins()
    assert rig.state()["armed"] is False
    rig.drive(ARM, True)  # key turned at noon: armed
    rig.step(0.01)
    assert rig.state()["armed"] is True
    rig.drive(23, True)
    rig.step(0.02)
    assert rig.alarms() == ["door_opened_while_armed"]
    rig.drive(23, False)
    rig.step(0.03)
    minute[0] = 23 * 60  # night: the schedule arms; turning the key back cannot disarm it
    rig.drive(ARM, False)
    rig.step(0.04)
    assert rig.state()["armed"] is True
    minute[0] = 7 * 60
    rig.step(0.05)
    assert rig.state()["armed"] is False


# -- the box's tamper switch --------------------------------------------------------------------------------
def test_box_tamper_raised_while_the_enclosure_is_open(tmp_path, mock_pins):
    rig = Rig(BoxTamperDriver, {"pin": 5, "debounce_ms": 5.0}, tmp_path, mock_pins)
    rig.wire(5, False)
    rig.driver.open_pins()
    assert rig.state() == {"enclosure": "closed", "since": rig.state()["since"], "switch_fault": False,
                           "alarms": []}
    rig.drive(5, True)
    rig.step(0.01)
    raised = rig.events("alarm_raised")
    assert [(e.source, e.details["alarm"], e.severity) for e in raised] == [("tamper", "box_tamper", "alarm")]
    assert rig.state()["enclosure"] == "open"
    rig.drive(5, False)
    rig.step(0.02)
    assert rig.alarms("alarm_cleared") == ["box_tamper"]


def test_box_tamper_config_is_a_key_of_box(make_config):
    config = make_config(extra={"box": {"tamper": {"pin": 99}}})
    result = boxtel("check-config", "-c", str(config))
    assert result.returncode == 78 and "box.tamper.pin: GPIO99 does not exist" in result.stderr, result.stderr
    clash = make_config(extra={"box": {"tamper": {"pin": 23}}, "locker": [{"name": "a", "door": {"pin": 23}}]})
    result = boxtel("check-config", "-c", str(clash))
    assert result.returncode == 78 and "GPIO23 is already used" in result.stderr, result.stderr
    fine = make_config(extra={"box": {"tamper": {"pin": 5}}})
    result = boxtel("check-config", "-c", str(fine))
    assert result.returncode == 0 and "box.tamper" in result.stdout, result.stdout


# -- boxtel doctor ---------------------------------------------------------------------------------------
def test_doctor_reads_each_loop_through_the_agent_and_names_what_to_check(broker, make_config, mock_pins, capsys):
    from agent.cli import main
    from agent.config import load
    from tests.gpio_support import agent_in_process

    lockers = [{"name": "armory-3", "door": DOUBLE}, {"name": "armory-4", "door": {**DOUBLE, "channel": 3}},
               {"name": "armory-5", "door": {**DOUBLE, "channel": 4}}]
    config = make_config(broker, {"gpio": {"pin_factory": "mock"}, "locker": lockers})
    doors = [locker.door for locker in load(config).driver_configs("locker")]
    chip = mock_adc(mock_pins, doors[0])
    chip.levels.update({2: lambda: 512, 3: lambda: 2, 4: lambda: 470})  # sound; bridged; a drifted resistor
    with agent_in_process(config):
        code = main(["doctor", "-c", str(config)])
    lines = [line for line in capsys.readouterr().out.splitlines() if " door loop: " in line]
    assert lines[0].startswith("OK   door loop: locker armory-3: MCP3008 channel 2 reads 512: closed")
    assert lines[1].startswith("FAIL door loop: locker armory-4: MCP3008 channel 3 reads 2: short")
    assert "r_eol_ohm (4700 Ω) must sit at the door contact" in lines[1]
    assert lines[2].startswith("WARN door loop: locker armory-5") and "check r_eol_ohm (4700 Ω)" in lines[2]
    assert code == 2
