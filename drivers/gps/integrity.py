"""GNSS integrity: is a fix what the sky over the box says, or jamming and spoofing?

Each epoch is judged `ok` or `suspect` from what NMEA shows. A suspect fix is still published (with
`gnss_integrity: "suspect"`), but it gives no GPS time to `ts` or chrony and moves no geofence: the
alarm `gnss_interference` says interference instead of `container_moved`.

Rules (findings, named by the `reason` the alarm carries):
- position_jump: further from the last trusted position than JUMP_SLACK_M + MAX_SPEED_MPS x the time
  since. Once jumped, the allowance stops growing: a position reached by an impossible jump stays
  suspect for as long as the receiver reports it (a spoofer who parks it somewhere does not win by waiting);
- time_jump: GPS time minus the monotonic clock moved more than TIME_TOLERANCE_S (plus the monotonic
  clock's possible rate error) from what earlier epochs established;
- implausible_date: before EARLIEST_DATE or more than LATEST_AHEAD_S after the system clock (a two-digit
  year read as 2079);
- uniform_snr: UNIFORM_SNR_MIN_SATS or more satellites within UNIFORM_SNR_SPREAD_DB of each other (one
  transmitter on the ground, not a sky);
- satellite_surge: SURGE_SATS or more satellites used within SURGE_WINDOW_S of an epoch that saw none;
- altitude_jump: altitude off the last trusted one by more than ALT_SLACK_M + MAX_CLIMB_MPS x the time since;
- receiver_jamming, receiver_spoofing, receiver_unsafe: the receiver says so (TXT, nav status U).

A suspect receiver is trusted again after CLEAR_EPOCHS clean epochs in a row, clean meaning also
consistent with the last trusted position and time. If it never comes back there (the box really was
moved meanwhile), trust returns only after the fix was lost, reacquired, and then held still (within
HOLD_SPREAD_M, its time steady) for REBASELINE_S: half an hour of alarm is the price of not letting a
spoofer win by parking a fake position.

GPS time counts (IntegrityVerdict.time_agreed) only once TIME_AGREE_EPOCHS epochs in a row agreed
with the monotonic clock, so one forged RMC never re-stamps a message.

Limits: the references live in memory. A spoofer already on the air when the agent starts gives the
first position and time, which the jump rules then defend (the sky rules, dates and the receiver's own
warnings still apply); a slow drift (under MAX_SPEED_MPS, a few metres a second) is not a jump.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from drivers.gps.nmea import JAMMING, SPOOFING, UNSAFE, Fix, distance_m

OK, SUSPECT = "ok", "suspect"
POSITION_JUMP, TIME_JUMP, IMPLAUSIBLE_DATE = "position_jump", "time_jump", "implausible_date"
UNIFORM_SNR, SATELLITE_SURGE, ALTITUDE_JUMP = "uniform_snr", "satellite_surge", "altitude_jump"
RECEIVER = {JAMMING: "receiver_jamming", SPOOFING: "receiver_spoofing", UNSAFE: "receiver_unsafe"}
REASONS = (POSITION_JUMP, TIME_JUMP, IMPLAUSIBLE_DATE, *RECEIVER.values(), UNIFORM_SNR, SATELLITE_SURGE,
           ALTITUDE_JUMP)  # in the order the alarm names the first

MAX_SPEED_MPS = 40.0  # a container on a lorry (~25 m/s) with margin; parked, it does not move at all
JUMP_SLACK_M = 500.0  # multipath and poor geometry throw a parked antenna's fix this far, rarely further
MAX_CLIMB_MPS = 10.0  # roads climb a few % at most
ALT_SLACK_M = 300.0  # a 2d->3d fix or a poor VDOP moves altitude by tens of metres, not hundreds
TIME_TOLERANCE_S = 2.0  # an epoch's arrival jitter over a UART, plus a leap second
TIME_SLEW = 1e-3  # the monotonic clock may run this far off GPS (ntp slews it by at most 500 ppm)
TIME_AGREE_EPOCHS = 3
EARLIEST_DATE = datetime(2025, 1, 1, tzinfo=UTC).timestamp()  # nothing before this software is now
LATEST_AHEAD_S = 20 * 365.25 * 86400.0  # a Pi's clock (fake-hwclock) lags, but not by decades
UNIFORM_SNR_MIN_SATS = 6
UNIFORM_SNR_SPREAD_DB = 2  # a real sky spreads 20-50 dB-Hz over elevations; a spoofer's sats are alike
SURGE_SATS = 6
SURGE_WINDOW_S = 3.0
CLEAR_EPOCHS = 10  # clean epochs in a row before a suspect receiver is trusted again
RAISE_EPOCHS = 3  # suspect epochs in a row before the alarm: one multipath outlier pages nobody
REBASELINE_S = 1800.0
HOLD_SPREAD_M = 50.0


@dataclass(frozen=True)
class IntegrityVerdict:
    """What the monitor thinks of one fix."""

    integrity: str = OK
    reasons: tuple[str, ...] = ()  # the findings of this fix, or (while clearing) the last ones
    time_agreed: bool = False  # its GPS time agreed with the monotonic clock for TIME_AGREE_EPOCHS epochs

    @property
    def position_trusted(self) -> bool:
        """The position may move the geofence and learn home."""
        return self.integrity == OK

    @property
    def trusted(self) -> bool:
        """The fix's time may discipline clocks (`ts`, chrony): ok, and its time established."""
        return self.integrity == OK and self.time_agreed

    @property
    def reason(self) -> str | None:
        return self.reasons[0] if self.reasons else None


class IntegrityMonitor:
    """Judges the epochs of one receiver in order (`judge`), told when the link is lost (`lost`)."""

    def __init__(self, wall: Callable[[], float] = time.time):
        self._wall = wall
        self.verdict = IntegrityVerdict()
        self._clean_run = CLEAR_EPOCHS
        self._suspect_run = 0
        self._last_reasons: tuple[str, ...] = ()
        self.alarmed = False
        # the last trusted position, altitude and time
        self._trusted_pos: tuple[float, float, float] | None = None  # (lat, lon, mono)
        self._trusted_alt: tuple[float, float] | None = None  # (alt_m, mono)
        self._time_ref: tuple[float, float] | None = None  # (GPS time - monotonic, mono of the last agreement)
        self._time_candidate: tuple[float, int] | None = None  # (offset, epochs in a row) before a ref exists
        self._jumped = False  # reached by an impossible jump: no allowance for elapsed time
        self._last_empty_sky: float | None = None  # mono of the last epoch that saw no satellite
        # loss + reacquire + holding still: the way back when the last trusted position is not
        self._lost = False
        self._hold: tuple[float, float, float, float | None] | None = None  # (lat, lon, mono, offset)

    def lost(self) -> None:
        """No fix any more (fix lost, link stale or gone)."""
        self._lost = True
        self._hold = None

    def judge(self, fix: Fix) -> IntegrityVerdict:
        mono = fix.mono if fix.mono is not None else time.monotonic()
        findings: list[str] = []
        if fix.alert in RECEIVER:
            findings.append(RECEIVER[fix.alert])
        if len(fix.snr) >= UNIFORM_SNR_MIN_SATS and max(fix.snr) - min(fix.snr) <= UNIFORM_SNR_SPREAD_DB:
            findings.append(UNIFORM_SNR)
        if (fix.sats or 0) >= SURGE_SATS and self._last_empty_sky is not None \
                and mono - self._last_empty_sky <= SURGE_WINDOW_S:
            findings.append(SATELLITE_SURGE)
        if fix.sats_seen == 0:
            self._last_empty_sky = mono
        offset = None
        if fix.has_position and fix.epoch_s is not None:
            offset = fix.epoch_s - mono
            wall = self._wall()
            if not EARLIEST_DATE <= fix.epoch_s <= max(wall, EARLIEST_DATE) + LATEST_AHEAD_S:
                findings.append(IMPLAUSIBLE_DATE)
                offset = None
            elif not self._time_consistent(offset, mono):
                findings.append(TIME_JUMP)
        if fix.has_position:
            findings += self._position_findings(fix, mono)
        else:
            self.lost()
        findings = [reason for reason in REASONS if reason in findings]
        if fix.has_position and self._rebaselined(fix, mono, offset, findings):
            findings = []
        self._count(findings)
        time_agreed = False
        if not findings and offset is not None:
            time_agreed = self._agree(offset, mono)
        ok = not findings and self._clean_run >= CLEAR_EPOCHS
        if ok and fix.has_position:
            self._trusted_pos = (fix.lat, fix.lon, mono)
            if fix.alt_m is not None:
                self._trusted_alt = (fix.alt_m, mono)
            self._lost = False
            self._hold = None
        self.verdict = IntegrityVerdict(OK if ok else SUSPECT, () if ok else self._last_reasons,
                                        time_agreed=time_agreed and ok)
        self._suspect_run = 0 if ok else self._suspect_run + 1
        if self._suspect_run >= RAISE_EPOCHS:
            self.alarmed = True
        elif ok:
            self.alarmed = False
        return self.verdict

    # -- rules -------------------------------------------------------------------------------------
    def _position_findings(self, fix: Fix, mono: float) -> list[str]:
        findings = []
        if self._trusted_pos is not None:
            lat, lon, since = self._trusted_pos
            allowed = JUMP_SLACK_M + (0.0 if self._jumped else MAX_SPEED_MPS * max(0.0, mono - since))
            self._jumped = distance_m(lat, lon, fix.lat, fix.lon) > allowed
            if self._jumped:
                findings.append(POSITION_JUMP)
        if self._trusted_alt is not None and fix.alt_m is not None:
            alt, since = self._trusted_alt
            if abs(fix.alt_m - alt) > ALT_SLACK_M + MAX_CLIMB_MPS * max(0.0, mono - since):
                findings.append(ALTITUDE_JUMP)
        return findings

    def _time_consistent(self, offset: float, mono: float) -> bool:
        if self._time_ref is None:
            return True  # nothing to disagree with yet (the agreement count decides when time counts)
        ref, since = self._time_ref
        return abs(offset - ref) <= TIME_TOLERANCE_S + TIME_SLEW * max(0.0, mono - since)

    def _agree(self, offset: float, mono: float) -> bool:
        """A clean epoch's time: follow the reference (slowly), or build one. True once established."""
        if self._time_ref is not None:
            ref, since = self._time_ref
            step = TIME_SLEW * max(0.0, mono - since)
            self._time_ref = (ref + max(-step, min(step, offset - ref)), mono)
            return True
        candidate = self._time_candidate
        if candidate is not None and abs(offset - candidate[0]) <= TIME_TOLERANCE_S:
            self._time_candidate = (offset, candidate[1] + 1)
        else:
            self._time_candidate = (offset, 1)
        if self._time_candidate[1] >= TIME_AGREE_EPOCHS:
            self._time_ref = (offset, mono)
            return True
        return False

    def _rebaselined(self, fix: Fix, mono: float, offset: float | None, findings: list[str]) -> bool:
        """Lost, reacquired, and held still for REBASELINE_S: this is where the box is now."""
        if not self._lost or not findings:
            return False
        if not set(findings) <= {POSITION_JUMP, TIME_JUMP}:
            self._hold = None  # something else is wrong too: this is no quiet sky to trust
            return False
        hold = self._hold
        if hold is None:
            self._hold = (fix.lat, fix.lon, mono, offset)
            return False
        lat, lon, since, hold_offset = hold
        steady_time = offset is None or hold_offset is None or abs(offset - hold_offset) <= TIME_TOLERANCE_S
        if distance_m(lat, lon, fix.lat, fix.lon) > HOLD_SPREAD_M or not steady_time:
            self._hold = None
            self._lost = False  # it moved: holding still starts only after another loss
            return False
        if mono - since < REBASELINE_S:
            return False
        self._trusted_pos = (fix.lat, fix.lon, mono)
        self._trusted_alt = None if fix.alt_m is None else (fix.alt_m, mono)
        self._time_ref = None if offset is None else (offset, mono)
        self._jumped = False
        self._clean_run = CLEAR_EPOCHS
        return True

    def _count(self, findings: list[str]) -> None:
        if findings:
            self._clean_run = 0
            self._last_reasons = tuple(findings)
        else:
            self._clean_run += 1
