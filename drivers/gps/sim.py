"""A simulated NMEA receiver on a pseudo-terminal, read by the real GPS driver.

`prepare()` opens a pty, links `<workdir>/gps0` to it and points every [gps] config there. `start()`
writes one epoch a second (GGA, GSA, GSV, RMC with correct checksums, stamped with the current UTC
time) playing a loop: parked at home with a few metres of jitter, a spell without a fix, then the
interference spells of the region (SPELLS: a spoofer's 40 km jump and smooth drift, jamming that
empties the sky, a spoofer's uniform signal strengths, a time jump), a drive to the next town and
back, and now and then a corrupted line (bad checksum, a truncated sentence, binary noise), as a
serial line in a generator-powered container delivers.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import random
import time
import tty
from collections.abc import Iterator
from datetime import UTC, datetime

from drivers.gps.nmea import KNOTS_TO_MPS, distance_m
from drivers.simulator import QUIET, Simulator

HOME = (52.090737, 5.121420)  # Utrecht
TOWN = (52.089444, 5.233333)  # Zeist, 7.7 km east
PARKED_S = 75.0  # at home; the fix drops out in the middle of it
NO_FIX_FROM_S, NO_FIX_UNTIL_S = 40.0, 52.0
# Interference while still parked at home, (start, end) seconds into the loop; home in between, long
# enough for trust to return (drivers/gps/integrity.py CLEAR_EPOCHS).
SPOOF = (80.0, 140.0)  # the fix jumps SPOOF_JUMP_M east, then drifts north at SPOOF_DRIFT_MPS
JAM = (170.0, 185.0)  # no fix and no satellite in view; then all of them at once
UNIFORM = (215.0, 235.0)  # every satellite at the same strength: one transmitter on the ground
TIME_JUMP = (265.0, 280.0)  # the receiver's time SPELL_TIME_SHIFT_S ahead of the real one
SPELLS_END_S = 310.0
SPOOF_JUMP_M, SPOOF_DRIFT_MPS = 40_000.0, 3.0
SPELL_TIME_SHIFT_S = 6 * 3600.0
UNIFORM_SNR = 41
DRIVE_MPS = 20.0
STAY_S = 60.0  # in town before driving home
CORRUPT_EVERY = 37  # about one line in this many is damaged
SATELLITES = (2, 5, 7, 9, 13, 15, 18, 20, 25, 29, 30)


class GpsSimulator(Simulator):
    loop_offset_s = 0.0  # where in the loop to begin (tests skip ahead to a spell)

    def prepare(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # the slave stays open here, so writes before the driver opens it are kept
        os.set_blocking(self.master, False)
        self.link = self.workdir / "gps0"
        self.link.unlink(missing_ok=True)
        self.link.symlink_to(os.ttyname(self.slave))
        for config in self.configs:
            config.port = str(self.link)
        self._random = random.Random(17)

    def release(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self.link.unlink(missing_ok=True)

    def _run(self) -> None:
        lines = 0
        while not self._stop.wait(1.0 - (time.time() % 1.0)):
            elapsed = time.monotonic() - self._started + self.loop_offset_s
            if self.scenario == QUIET:  # parked at home, a steady fix, a clean line
                state, damage = parked(self._random), False
            else:
                state, damage = scenario(elapsed, self._random), True
            epoch = epoch_sentences(time.time() + state.pop("time_shift_s", 0.0), **state)
            for index in range(len(epoch) if damage else 0):
                lines += 1
                if lines % CORRUPT_EVERY == 0:
                    epoch[index] = corrupt(epoch[index], self._random)
            try:
                # the whole epoch in one write, as a receiver's UART FIFO hands it over in bursts
                os.write(self.master, "".join(epoch).encode("latin-1"))
            except BlockingIOError:
                pass  # nobody reading: a receiver does not wait either
            except OSError:
                return


def scenario(elapsed_s: float, rng: random.Random) -> dict:
    """Where the simulated box is `elapsed_s` into the loop, and what its receiver can see."""
    drive_s = distance_m(*HOME, *TOWN) / DRIVE_MPS
    cycle_s = SPELLS_END_S + drive_s + STAY_S + drive_s
    t = elapsed_s % cycle_s
    jitter_m = 2.5
    if t < SPELLS_END_S:
        lat, lon = _offset(*HOME, rng.gauss(0, jitter_m), rng.gauss(0, jitter_m))
        state = {"lat": lat, "lon": lon, "alt_m": 5.0 + rng.gauss(0, 1.0), "speed_mps": abs(rng.gauss(0, 0.1)),
                 "course_deg": rng.uniform(0, 360), "fix": not NO_FIX_FROM_S <= t < NO_FIX_UNTIL_S}
        return {**state, **spell(t)}
    t -= SPELLS_END_S
    if t < drive_s:
        start, end = HOME, TOWN
    elif t < drive_s + STAY_S:
        lat, lon = _offset(*TOWN, rng.gauss(0, jitter_m), rng.gauss(0, jitter_m))
        return {"lat": lat, "lon": lon, "alt_m": 3.0, "speed_mps": 0.0, "course_deg": 0.0, "fix": True}
    else:
        start, end = TOWN, HOME
        t -= drive_s + STAY_S
    share = min(t / drive_s, 1.0)
    # a road is not a straight line: a gentle bend of up to 300 m
    lat = start[0] + (end[0] - start[0]) * share
    lon = start[1] + (end[1] - start[1]) * share
    lat, lon = _offset(lat, lon, 300.0 * math.sin(math.pi * share), 0.0)
    course = math.degrees(math.atan2(
        (end[1] - start[1]) * math.cos(math.radians(lat)), end[0] - start[0])) % 360
    return {"lat": lat, "lon": lon, "alt_m": 4.0 + 2.0 * math.sin(share * 6), "speed_mps": DRIVE_MPS,
            "course_deg": course, "fix": True}


def parked(rng: random.Random) -> dict:
    """Standing at home with a good sky: a metre of jitter, as a receiver that has settled shows."""
    lat, lon = _offset(*HOME, rng.gauss(0, 1.0), rng.gauss(0, 1.0))
    return {"lat": lat, "lon": lon, "alt_m": 5.0 + rng.gauss(0, 0.5), "speed_mps": abs(rng.gauss(0, 0.05)),
            "course_deg": rng.uniform(0, 360), "fix": True}


def spell(t: float) -> dict:
    """What interference changes `t` seconds into the loop (nothing outside the SPELLS)."""
    if SPOOF[0] <= t < SPOOF[1]:
        lat, lon = _offset(*HOME, SPOOF_DRIFT_MPS * (t - SPOOF[0]), SPOOF_JUMP_M)
        return {"lat": lat, "lon": lon, "speed_mps": SPOOF_DRIFT_MPS, "course_deg": 0.0}
    if JAM[0] <= t < JAM[1]:
        return {"fix": False, "sky": SKY_EMPTY}
    if UNIFORM[0] <= t < UNIFORM[1]:
        return {"sky": SKY_UNIFORM}
    if TIME_JUMP[0] <= t < TIME_JUMP[1]:
        return {"time_shift_s": SPELL_TIME_SHIFT_S}
    return {}


SKY_CLEAR, SKY_EMPTY, SKY_UNIFORM = "clear", "empty", "uniform"


def epoch_sentences(epoch_s: float, *, lat: float, lon: float, alt_m: float, speed_mps: float,
                    course_deg: float, fix: bool = True, sats: int = 9, sky: str = SKY_CLEAR) -> list[str]:
    """One second of a receiver's output: GGA, GSA, GSV and RMC, each `$...*CS\\r\\n`.

    `sky`: SKY_CLEAR (satellites at their usual strengths), SKY_EMPTY (none in view), SKY_UNIFORM (all alike)."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    hhmmss = moment.strftime("%H%M%S.") + f"{moment.microsecond // 10000:02d}"
    ddmmyy = moment.strftime("%d%m%y")
    used = SATELLITES[:sats] if fix else ()
    hdop, pdop, vdop = (0.9, 1.6, 1.3) if fix else (99.99, 99.99, 99.99)
    if fix:
        lat_text, lon_text = _nmea_angle(lat, 2, "NS"), _nmea_angle(lon, 3, "EW")
        gga = (f"GPGGA,{hhmmss},{lat_text},{lon_text},1,{len(used):02d},{hdop:.1f},{alt_m:.1f},M,47.0,M,,")
        rmc = (f"GPRMC,{hhmmss},A,{lat_text},{lon_text},{speed_mps / KNOTS_TO_MPS:.2f},{course_deg:.1f},{ddmmyy},,,A")
    else:
        gga = f"GPGGA,{hhmmss},,,,,0,00,{hdop:.2f},,M,,M,,"
        rmc = f"GPRMC,{hhmmss},V,,,,,,,{ddmmyy},,,N"
    prns = [f"{p:02d}" for p in used] + [""] * (12 - len(used))
    gsa = f"GPGSA,A,{3 if fix else 1},{','.join(prns)},{pdop:.2f},{hdop:.2f},{vdop:.2f}"
    return [sentence(gga), sentence(gsa), *_GSV[sky], sentence(rmc)]


def sentence(body: str) -> str:
    """`body` framed as an NMEA sentence with its checksum."""
    checksum = functools.reduce(operator.xor, body.encode("latin-1"), 0)
    return f"${body}*{checksum:02X}\r\n"


def corrupt(line: str, rng: random.Random) -> str:
    """Damage a line the ways a serial line does."""
    kind = rng.randrange(3)
    if kind == 0:  # a flipped bit: the checksum no longer matches
        index = rng.randrange(1, max(2, line.index("*")))
        return line[:index] + chr(ord(line[index]) ^ 0x04) + line[index + 1:]
    if kind == 1:  # cut short (a brownout, a buffer overrun)
        return line[: rng.randrange(5, len(line) - 4)] + "\r\n"
    return "".join(chr(rng.randrange(128, 256)) for _ in range(rng.randrange(4, 24))) + line  # binary noise


def _gsv(count: int, snr: int | None = None) -> Iterator[str]:
    if not count:
        yield "GPGSV,1,1,00"
        return
    parts = (count + 3) // 4
    for part in range(parts):
        block = []
        for i, prn in enumerate(SATELLITES[part * 4: part * 4 + 4]):
            strength = snr if snr is not None else 30 + (i * 5) % 18
            block.append(f"{prn:02d},{20 + (prn * 7) % 60:02d},{(prn * 33) % 360:03d},{strength:02d}")
        yield f"GPGSV,{parts},{part + 1},{count:02d},{','.join(block)}"


_GSV = {  # the sky here does not change (but for interference)
    SKY_CLEAR: tuple(sentence(body) for body in _gsv(len(SATELLITES))),
    SKY_EMPTY: tuple(sentence(body) for body in _gsv(0)),
    SKY_UNIFORM: tuple(sentence(body) for body in _gsv(len(SATELLITES), UNIFORM_SNR)),
}


def _nmea_angle(value: float, degree_digits: int, hemispheres: str) -> str:
    hemisphere = hemispheres[0] if value >= 0 else hemispheres[1]
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60.0
    if round(minutes, 5) >= 60.0:
        degrees, minutes = degrees + 1, 0.0
    return f"{degrees:0{degree_digits}d}{minutes:08.5f},{hemisphere}"


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    return (lat + north_m / 111_320.0, lon + east_m / (111_320.0 * math.cos(math.radians(lat))))
