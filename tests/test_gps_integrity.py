"""GNSS integrity: the simulator's interference spells through the real decoder and the integrity monitor,
with simulated time (an epoch per simulated second, no waiting), and the rules one at a time."""

from __future__ import annotations

import random

from drivers.gps import integrity, sim
from drivers.gps.integrity import IntegrityMonitor
from drivers.gps.nmea import EpochDecoder, Fix
from drivers.gps.sim import HOME, epoch_sentences, scenario, sentence

T0 = 1_764_150_000.0  # 2025-11-26T09:40:00Z, the loop's start


class Sky:
    """A simulated receiver decoded and judged epoch by epoch, at simulated seconds since T0."""

    def __init__(self):
        self.t = 0.0
        self.monitor = IntegrityMonitor(wall=lambda: T0 + self.t)
        self.decoder = EpochDecoder(remember_enders=False)
        self.rng = random.Random(5)
        self.log: list[tuple[float, Fix, integrity.IntegrityVerdict, bool]] = []  # (t, fix, verdict, alarmed)

    def epoch(self, lines: list[str]) -> None:
        for line in lines:
            for fix in self.decoder.feed(line.strip(), mono=self.t):
                self.log.append((self.t, fix, self.monitor.judge(fix), self.monitor.alarmed))
        self.t += 1.0

    def play(self, until_s: float) -> None:
        """The simulator's loop (sim.scenario), one epoch a second, up to `until_s`."""
        while self.t < until_s:
            state = scenario(self.t, self.rng)
            shift = state.pop("time_shift_s", 0.0)
            self.epoch(epoch_sentences(T0 + self.t + shift, **state))

    def hold(self, seconds: float, **state) -> None:
        """Epochs of a receiver reporting `state` (default: parked at home) for `seconds`."""
        state = {"lat": HOME[0], "lon": HOME[1], "alt_m": 5.0, "speed_mps": 0.0, "course_deg": 0.0, **state}
        shift = state.pop("time_shift_s", 0.0)
        end = self.t + seconds
        while self.t < end:
            self.epoch(epoch_sentences(T0 + self.t + shift, **state))

    def between(self, start: float, end: float) -> list[tuple[float, Fix, integrity.IntegrityVerdict, bool]]:
        return [entry for entry in self.log if start <= entry[0] < end]


def verdicts(entries) -> set[str]:
    return {verdict.integrity for _, _, verdict, _ in entries}


def reasons(entries) -> set[str]:
    return {reason for _, _, verdict, _ in entries for reason in verdict.reasons}


def test_a_parked_box_without_interference_is_trusted_and_its_time_counts_after_three_epochs():
    sky = Sky()
    sky.play(sim.NO_FIX_FROM_S)
    assert verdicts(sky.log) == {"ok"} and not any(alarmed for *_, alarmed in sky.log)
    timed = [verdict.trusted for _, fix, verdict, _ in sky.log if fix.has_position]
    assert timed[:2] == [False, False] and all(timed[integrity.TIME_AGREE_EPOCHS:])


def test_the_spoofing_spell_is_suspect_throughout_and_raises_then_clears_the_alarm():
    sky = Sky()
    sky.play(sim.JAM[0])
    spoofed = sky.between(sim.SPOOF[0] + 2, sim.SPOOF[1])
    assert spoofed and verdicts(spoofed) == {"suspect"}, "a 40 km jump and the smooth drift after it"
    assert reasons(spoofed) == {"position_jump"}
    assert not any(verdict.trusted or verdict.position_trusted for _, _, verdict, _ in spoofed)
    assert all(alarmed for *_, alarmed in sky.between(sim.SPOOF[0] + 2 + integrity.RAISE_EPOCHS, sim.SPOOF[1]))
    before = sky.between(sim.NO_FIX_UNTIL_S + 2, sim.SPOOF[0])
    assert verdicts(before) == {"ok"}
    after = sky.between(sim.SPOOF[1] + integrity.CLEAR_EPOCHS + 2, sim.JAM[0])
    assert after and verdicts(after) == {"ok"} and not any(alarmed for *_, alarmed in after)
    # hysteresis: back home, still suspect for CLEAR_EPOCHS epochs
    assert verdicts(sky.between(sim.SPOOF[1] + 1, sim.SPOOF[1] + integrity.CLEAR_EPOCHS - 1)) == {"suspect"}


def test_the_jamming_spell_ends_in_a_satellite_surge():
    sky = Sky()
    sky.play(sim.UNIFORM[0])
    jammed = sky.between(sim.JAM[0] + 1, sim.JAM[1])
    assert jammed and all(not fix.has_position and fix.sats_seen == 0 for _, fix, _, _ in jammed)
    after = sky.between(sim.JAM[1] + 1, sim.JAM[1] + integrity.CLEAR_EPOCHS - 1)  # (the first: a partial epoch)
    assert verdicts(after) == {"suspect"} and reasons(after) == {"satellite_surge"}
    assert any(alarmed for *_, alarmed in after)
    assert verdicts(sky.between(sim.JAM[1] + integrity.SURGE_WINDOW_S + integrity.CLEAR_EPOCHS + 2, sim.UNIFORM[0])) == {"ok"}


def test_the_uniform_snr_spell_is_suspect():
    sky = Sky()
    sky.play(sim.TIME_JUMP[0])
    spell = sky.between(sim.UNIFORM[0] + 2, sim.UNIFORM[1])
    assert spell and verdicts(spell) == {"suspect"} and reasons(spell) == {"uniform_snr"}
    assert all(alarmed for *_, alarmed in spell[integrity.RAISE_EPOCHS:])
    assert verdicts(sky.between(sim.UNIFORM[1] + integrity.CLEAR_EPOCHS + 2, sim.TIME_JUMP[0])) == {"ok"}


def test_the_time_jump_spell_gives_no_time_and_clears_when_time_agrees_again():
    sky = Sky()
    sky.play(sim.SPELLS_END_S)
    spell = sky.between(sim.TIME_JUMP[0] + 2, sim.TIME_JUMP[1])
    assert spell and verdicts(spell) == {"suspect"} and reasons(spell) == {"time_jump"}
    assert not any(verdict.trusted for _, _, verdict, _ in spell)
    after = sky.between(sim.TIME_JUMP[1] + integrity.CLEAR_EPOCHS + 2, sim.SPELLS_END_S)
    assert after and verdicts(after) == {"ok"} and all(verdict.trusted for _, _, verdict, _ in after)


def test_driving_to_town_and_back_is_never_suspect():
    sky = Sky()
    sky.t = sim.SPELLS_END_S - 5
    sky.play(sim.SPELLS_END_S + 900)  # the whole drive there, the stay, the drive back
    assert len(sky.log) > 800 and verdicts(sky.log) == {"ok"}


def test_a_single_rmc_dated_2079_is_suspect_and_never_trusted():
    sky = Sky()
    sky.hold(10)
    future = sentence("GPRMC,094011.00,A,5205.44,N,00507.28,E,0.0,0.0,261179,,,A")
    sky.epoch([future])
    sky.hold(integrity.CLEAR_EPOCHS + 3)
    dated = [(fix, verdict) for _, fix, verdict, _ in sky.log if fix.time and fix.time.startswith("2079")]
    assert dated and all(v.integrity == "suspect" and not v.trusted for _, v in dated)
    assert "implausible_date" in dated[0][1].reasons
    assert sky.log[-1][2].trusted


def test_a_parked_fake_position_stays_suspect_however_long_it_is_held():
    sky = Sky()
    sky.hold(20)
    fake = sim._offset(*HOME, 0.0, 40_000.0)
    sky.hold(2 * 3600, lat=fake[0], lon=fake[1])  # the spoofer parks it and waits (40 km at 40 m/s: 17 min)
    assert sky.log[-1][2].integrity == "suspect" and sky.monitor.alarmed
    assert sky.log[-1][2].reasons == ("position_jump",)


def test_trust_returns_after_loss_and_reacquire_held_still_for_half_an_hour():
    sky = Sky()
    sky.hold(20)
    elsewhere = sim._offset(*HOME, 0.0, 40_000.0)  # the box really was carried off while spoofed
    sky.hold(60, lat=elsewhere[0], lon=elsewhere[1])
    sky.hold(30, fix=False)
    sky.hold(integrity.REBASELINE_S - 60, lat=elsewhere[0], lon=elsewhere[1])
    assert sky.log[-1][2].integrity == "suspect", "held still, but not yet for REBASELINE_S"
    sky.hold(120, lat=elsewhere[0], lon=elsewhere[1])
    assert sky.log[-1][2].integrity == "ok" and sky.log[-1][2].trusted and not sky.monitor.alarmed
    # moving during the hold starts nothing: it needs another loss
    sky.hold(5)  # back at HOME: 40 km from the new trusted position, a jump
    assert sky.log[-1][2].reasons == ("position_jump",)


def test_receiver_warnings_altitude_jumps_and_sane_motion():
    sky = Sky()
    sky.hold(15)
    sky.epoch([*epoch_sentences(T0 + sky.t, lat=HOME[0], lon=HOME[1], alt_m=5.0, speed_mps=0.0, course_deg=0.0),
               sentence("GPTXT,01,01,01,JAMMING DETECTED")])
    sky.hold(2)
    assert "receiver_jamming" in reasons(sky.log[-3:])
    sky.hold(integrity.CLEAR_EPOCHS + 2)
    assert sky.log[-1][2].integrity == "ok"
    sky.hold(2, alt_m=3000.0)
    assert sky.log[-1][2].reasons == ("altitude_jump",)
    sky.hold(integrity.CLEAR_EPOCHS + 2)
    # a cold start lists satellites it does not track yet (SNR 00 or empty): no signal, nothing uniform
    cold = [sentence("GPGSV,2,1,08,01,10,010,00,02,20,020,00,03,30,030,,04,40,040,00"),
            sentence("GPGSV,2,2,08,05,50,050,00,06,60,060,00,07,70,070,00,08,80,080,00")]
    for _ in range(3):
        plain = epoch_sentences(T0 + sky.t, lat=HOME[0], lon=HOME[1], alt_m=5.0, speed_mps=0.0, course_deg=0.0,
                                fix=False)
        sky.epoch([line for line in plain[:-1] if "GSV" not in line] + cold + plain[-1:])
    assert sky.log[-1][1].sats_seen == 8 and sky.log[-1][1].snr == ()
    assert "uniform_snr" not in reasons(sky.log[-3:])
    sky.hold(integrity.CLEAR_EPOCHS + 2)
    # 300 m in a second: multipath on a parked box, not an impossible jump
    near = sim._offset(*HOME, 300.0, 0.0)
    sky.hold(3, lat=near[0], lon=near[1])
    assert verdicts(sky.log[-3:]) == {"ok"}
