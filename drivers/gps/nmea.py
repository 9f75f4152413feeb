"""NMEA 0183 decoding shared by the GPS driver and `boxtel gps decode`: bytes -> lines -> fixes per epoch.

`LineReader` cuts a byte stream (a serial port, a capture file) into candidate sentences and survives
whatever a serial line in a generator-powered container delivers: binary noise, a wrong baud rate,
truncated and overlong lines. `EpochDecoder` checks each sentence (pynmea2 parses it and verifies the
checksum), keeps the GNSS talkers, and merges GGA, RMC, GSA, GSV, VTG, GLL, GNS and ZDA into one `Fix` per
epoch. Everything rejected is counted by kind in `stats`; nothing here raises on bad input.

The merging follows gpsd (driver_nmea0183.c), so a capture decodes to the fixes gpsd reports for it:
- an epoch ends when the time of day changes (sentences without a time join the current epoch); the
  sentence type that came last before a change is learned as the cycle ender, and an epoch is reported
  when its ender arrives (until one is known, its last state before the time changes); losing the fix
  is reported at once, and so is a receiver with nothing at all (GGA/RMC without a time);
- the date comes from RMC or ZDA; GGA/GLL times before any date give epochs without a `time`; two-digit
  years are 20yy up to 2079 (then 19yy) and a time of day that goes backwards is the next day;
- fix mode: GSA's mode when present, else GGA (2d with a position, 3d with an altitude and >= 4
  satellites, none below 3 satellites), RMC/GLL (2d, or 3d when 3d is already known); RMC status `V`,
  GLL status `V` and an empty position are no fix; a GGA whose timestamp did not advance is no fix
  (receivers that lost lock and repeat their last solution);
- a fix is only as good as what it carries: `lat`/`lon` only with 2d/3d, `alt_m` only with 3d (Garmin's
  PGRMZ altitude, sent after the ender, counts for the epoch); 0,0 is never a position;
- a date before 2017 (when the 18th leap second came) is a receiver that lost a GPS week rollover:
  1024 weeks are added, as gpsd does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pynmea2

GNSS_TALKERS = frozenset({"GP", "GN", "GL", "GA", "GB", "BD", "GQ", "GI", "QZ", "PQ"})
FIX_NONE, FIX_2D, FIX_3D = "none", "2d", "3d"
KNOTS_TO_MPS = 1852.0 / 3600.0
MAX_LINE = 160  # NMEA says 82; high-precision u-blox lines run longer, noise without a newline runs forever
# gpsd's week-rollover check: with 18 leap seconds (since 2017-01-01) an earlier date is a receiver
# that lost 1024 weeks. Captures that state their recording date (`# Date:`) are decoded as recorded.
ROLLOVER_BEFORE = date(2017, 1, 1)
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_CHECKSUMMED = re.compile(r"\*[0-9A-Fa-f]{2}$")
_RECORDED_ON = re.compile(rb"^# Date: \d{4}-\d{1,2}-\d{1,2}", re.MULTILINE)
_GPSD_MIN_FIELDS = {"GGA": 13, "GLL": 7, "GNS": 13, "GSA": 18, "RMC": 8, "VTG": 5, "ZDA": 4}
_HANDLERS = {kind: f"_{kind.lower()}" for kind in ("GGA", "RMC", "GSA", "GSV", "VTG", "GLL", "GNS", "ZDA", "PGRMZ")}
_CYCLE_CONTINUE = frozenset({"GLL"})  # gpsd: GLL may follow the cycle's last timed sentence
_NO_MODE, _MODE_NONE, _MODE_2D, _MODE_3D = 0, 1, 2, 3  # gpsd's MODE_NOT_SEEN, NO_FIX, 2D, 3D
_FIX_NAMES = {_NO_MODE: FIX_NONE, _MODE_NONE: FIX_NONE, _MODE_2D: FIX_2D, _MODE_3D: FIX_3D}

# Fix.alert: what a receiver says about its own integrity, where NMEA carries it
JAMMING, SPOOFING, UNSAFE = "jamming", "spoofing", "unsafe"

# stats keys: why a line did not count
SENTENCES_OK = "sentences_ok"
BAD_CHECKSUM = "bad_checksum"
MALFORMED = "malformed"  # a `$` line pynmea2 cannot parse, or a GNSS sentence with unusable fields
PROPRIETARY = "proprietary"  # $P... vendor sentences: valid, not used
UNSUPPORTED = "unsupported"  # other talkers (AIS, depth sounders, wind) and sentence types we do not use
NOISE_BYTES = "noise_bytes"  # bytes outside any sentence: binary protocols, a wrong baud rate
OVERLONG = "overlong"
REJECTED = "rejected"  # a checksummed value no receiver on Earth can mean (see PLAUSIBLE): published as null
STAT_KINDS = (SENTENCES_OK, BAD_CHECKSUM, MALFORMED, PROPRIETARY, UNSUPPORTED, NOISE_BYTES, OVERLONG, REJECTED)
# Satellites of every constellation in view at once stay well under 200: a longer list is a GSV or GSA
# stream that never closes its cycle (a talker sending nothing else), and must not grow without end.
SKY_MAX = 256
# The physical bounds of a fix's values (inclusive). A checksum only proves the line arrived as sent: a
# buggy or hostile talker can still send altitude 1e308. Checked once, on the decoder's output.
PLAUSIBLE = {
    "lat": (-90.0, 90.0),  # out of either, the whole position goes, and the fix with it
    "lon": (-180.0, 180.0),
    "alt_m": (-1_000.0, 50_000.0),  # Dead Sea shore to well above any balloon a receiver reports from
    "speed_mps": (0.0, 1_000.0),  # COCOM limits receivers to 515 m/s; a container on a truck to ~40
    "course_deg": (0.0, 360.0),
    "hdop": (0.01, 99.99),  # dilution is at least 1 in theory; 0 or less is a receiver bug
    "pdop": (0.01, 99.99),
}


@dataclass
class Fix:
    """One epoch: what the receiver said about one instant."""

    time: str | None = None  # ISO 8601 UTC with milliseconds, None before a date is known
    epoch_s: float | None = None  # the same instant as POSIX seconds
    fix: str = FIX_NONE
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None  # above mean sea level
    speed_mps: float | None = None
    course_deg: float | None = None
    sats: int | None = None  # used in the solution
    sats_seen: int | None = None
    hdop: float | None = None
    pdop: float | None = None
    mono: float | None = None  # time.monotonic() when the epoch's first sentence arrived (live only)
    snr: tuple[int, ...] = ()  # signal strengths (dB-Hz) of the satellites in view that have one (GSV)
    alert: str | None = None  # the receiver's own warning: JAMMING, SPOOFING (TXT) or UNSAFE (nav status U)

    @property
    def has_position(self) -> bool:
        return self.fix != FIX_NONE and self.lat is not None and self.lon is not None

    def record(self) -> dict:
        """The `boxtel gps decode` record."""
        return {
            "time": self.time, "fix": self.fix, "lat": _rounded(self.lat, 9), "lon": _rounded(self.lon, 9),
            "alt_m": _rounded(self.alt_m, 3), "sats": self.sats, "speed_mps": _rounded(self.speed_mps, 3),
            "course_deg": _rounded(self.course_deg, 2),
        }


class LineReader:
    """Bytes in, candidate sentences out (`$...` or `!...`, without the line ending)."""

    def __init__(self, stats: dict[str, int] | None = None):
        self.stats = stats if stats is not None else new_stats()
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        *complete, rest = _LINE_ENDS.split(bytes(self._buffer) + data if self._buffer else data)
        for raw in complete:
            self._take(raw, lines)
        self._buffer = bytearray(rest)
        if len(self._buffer) > MAX_LINE:
            self._drop_unterminated()
        return lines

    def flush(self) -> list[str]:
        """End of input: whatever is left is the last line (a capture without a final newline)."""
        lines: list[str] = []
        if self._buffer:
            self._take(bytes(self._buffer), lines)
            self._buffer.clear()
        return lines

    def _drop_unterminated(self) -> None:
        """No line end within MAX_LINE: keep only a tail that could still become a sentence."""
        start = _sentence_start(self._buffer)
        if start > 0 and len(self._buffer) - start <= MAX_LINE:
            self.stats[NOISE_BYTES] += start
            del self._buffer[:start]
            return
        if self._buffer[:1] in (b"$", b"!"):
            self.stats[OVERLONG] += 1
        else:
            self.stats[NOISE_BYTES] += len(self._buffer)
        self._buffer.clear()

    def _take(self, raw: bytes, lines: list[str]) -> None:
        raw = raw.strip(b"\r\n \t\x00")
        if not raw or raw.startswith(b"#"):
            return  # gpsd's capture files start with `#` comments; a receiver never sends one
        start = _sentence_start(raw)  # `$` and `!` never occur inside a sentence
        if start < 0:
            self.stats[NOISE_BYTES] += len(raw)
            return
        self.stats[NOISE_BYTES] += start
        raw = raw[start:]
        if len(raw) > MAX_LINE:
            self.stats[OVERLONG] += 1
            return
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            self.stats[MALFORMED] += 1
            return
        if not text.isprintable():
            self.stats[MALFORMED] += 1
            return
        lines.append(text)


def _sentence_start(raw: bytes | bytearray) -> int:
    return max(raw.rfind(b"$"), raw.rfind(b"!"))


def new_stats() -> dict[str, int]:
    return dict.fromkeys(STAT_KINDS, 0)


@dataclass
class _Epoch:
    """The fix being merged (gpsd's gpsdata.fix between two time changes)."""

    mode: int = _NO_MODE
    time: tuple[date, int, int, int, int] | None = None  # (date, hour, minute, second, microsecond)
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None
    speed_mps: float | None = None
    course_deg: float | None = None
    mono: float | None = None
    touched: bool = False


@dataclass
class _Update:
    """What one sentence says (gpsd's newdata plus its mask)."""

    mode: int | None = None
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None
    speed_mps: float | None = None
    course_deg: float | None = None
    time_set: bool = False
    report: bool = False  # a no-fix sentence without a time: nothing will end the epoch, so report now


@dataclass
class _Session:
    date: date | None = None
    hour: int = 0
    minute: int = 0
    second: int = 0
    microsecond: int = 0
    frac_time: float | None = None  # the last registered hhmmss.ss, to see the time of day change
    time_registered: bool = False  # the current sentence registered a time of day
    gsv_more: bool = False  # the current sentence is a GSV part with more to come
    sats_used: list[int] = field(default_factory=list)
    sats_seen: int | None = None
    gsv_count: int = 0
    gsv_snr: list[int] = field(default_factory=list)  # the GSV cycle in progress
    snr: tuple[int, ...] = ()  # the last complete GSV cycle
    alert: str | None = None  # said during the epoch in progress
    hdop: float | None = None
    pdop: float | None = None
    last_gga_talker: str = ""
    last_gga_timestamp: str | None = None
    latch_mode: bool = False
    last_gsa_talker: str = ""
    last_gsv_talker: str = ""
    seen_other_gsa: bool = False
    last_mode: int = _NO_MODE  # gpsd's lastfix: the fix last reported
    last_alt: bool = False  # lastfix or oldfix had an altitude


class EpochDecoder:
    """Sentences in, one `Fix` per finished epoch out."""

    def __init__(self, stats: dict[str, int] | None = None, *, rollover_before: date | None = ROLLOVER_BEFORE,
                 remember_enders: bool = True):
        self.stats = stats if stats is not None else new_stats()
        self.rollover_before = rollover_before
        # gpsd keeps every cycle ender it ever learned. Live, one damaged RMC would then make GGA an
        # ender for good, and every later epoch be reported twice, first without speed and course;
        # with remember_enders=False the ender is relearned from the next intact epoch.
        self.remember_enders = remember_enders
        self.kinds_seen: set[str] = set()
        self._session = _Session()
        self._epoch = _Epoch()
        self._cycle_enders: set[str] = set()  # sentence types that end an epoch (learned, as gpsd does)
        self._last_timed_kind = ""
        # gpsd reports at the learned cycle ender; until one is known (or after a receiver with no
        # time reset it) it reports after every sentence that sets a position or a fix mode.
        self._end_reliable = False
        self._pending: Fix | None = None  # the epoch's latest report, not yet handed out
        self._epoch_reported = False

    def feed(self, line: str, mono: float | None = None) -> list[Fix]:
        """Decode one line; returns the epochs it finished (usually none, sometimes one)."""
        message = self._parse(line)
        if message is None:
            return []
        talker, kind, fields = message
        if len(fields) + 1 < _GPSD_MIN_FIELDS.get(kind, 0):
            self.stats[MALFORMED] += 1  # a truncated sentence with a valid checksum (or none)
            return []
        self.stats[SENTENCES_OK] += 1
        self.kinds_seen.add(kind)
        session = self._session
        if kind != "GSV":
            session.last_gsv_talker = ""
        if kind != "GSA":
            session.last_gsa_talker = ""
        previous_frac = session.frac_time
        session.time_registered = False
        session.gsv_more = False
        try:
            update = getattr(self, _HANDLERS[kind])(talker, fields) or _Update()
        except (IndexError, ValueError):
            self.stats[MALFORMED] += 1  # a field missing or mangled beyond what the checks above see
            self.stats[SENTENCES_OK] -= 1
            return []
        finished: list[Fix] = []
        time_changed, at_ender = self._track_cycle(kind, previous_frac, update)
        # gpsd: never downgrade a 3d fix to 2d while the receiver has been giving altitudes (RMC has none)
        if (update.mode is not None and self._epoch.mode == _MODE_3D and update.mode != _MODE_NONE
                and (session.last_alt or self._epoch.alt_m is not None)):
            update.mode = _MODE_3D
        if time_changed and self._epoch.touched:
            finished += self._end_epoch()
        elif update.time_set and self._pending is not None and self._epoch.time != self._session_time():
            # A sentence restamps the epoch (GLL 27.523 then GGA 27.52): the report so far keeps its time.
            finished.append(self._pending)
            self._pending = None
        had_fix = self._epoch.mode >= _MODE_2D
        self._merge(update, mono)
        sets_fix = update.mode is not None or update.lat is not None
        # Losing the fix is always news (RMC `V` carries no time, so no cycle ender follows it).
        lost_fix = had_fix and update.mode == _MODE_NONE
        # Garmin sends its altitude (PGRMZ) after the cycle's last timed sentence; it belongs to the
        # epoch just reported, and gpsd's reports carry it.
        late_altitude = kind == "PGRMZ" and self._epoch_reported
        if (update.report or at_ender or late_altitude or lost_fix
                or (sets_fix and not self._end_reliable)):
            self._pending = self._to_fix(self._epoch)
            self._epoch_reported = True
            if (at_ender and self._end_reliable) or update.report:
                finished.append(self._pending)  # the usual case: out as soon as the epoch is complete
                self._pending = None
        return self._bounded(finished)

    def _bounded(self, fixes: list[Fix]) -> list[Fix]:
        """The one place values are checked against PLAUSIBLE: out of bounds becomes None, and counted."""
        if fixes and any(fix.alert for fix in fixes):
            self._session.alert = None  # told once: a TXT warning is news for the fix it came with
        for fix in fixes:
            for name, (low, high) in PLAUSIBLE.items():
                value = getattr(fix, name)
                if value is not None and not low <= value <= high:
                    setattr(fix, name, None)
                    self.stats[REJECTED] += 1
            if fix.lat is None or fix.lon is None:  # without a position there is no fix, nor altitude
                fix.lat = fix.lon = fix.alt_m = None
                fix.fix = FIX_NONE
        return fixes

    def _track_cycle(self, kind: str, previous_frac: float | None, update: _Update) -> tuple[bool, bool]:
        """gpsd's end-of-cycle detector: (did the time of day change, is this sentence the cycle's end)."""
        session = self._session
        time_changed = False
        if session.gsv_more:
            pass  # more GSV parts to come: never an epoch boundary
        elif session.time_registered:
            time_changed = previous_frac is None or abs(session.frac_time - previous_frac) > 0.01
            if time_changed and self._last_timed_kind and kind not in _CYCLE_CONTINUE:
                # The sentence that closed the previous epoch will close the next ones.
                if self.remember_enders:
                    self._cycle_enders.add(self._last_timed_kind)
                else:
                    self._cycle_enders = {self._last_timed_kind}
                self._end_reliable = True
        elif kind in _CYCLE_CONTINUE:
            self._cycle_enders.discard(self._last_timed_kind)
            self._cycle_enders.add(kind)
            self._end_reliable = True
        if update.report:
            self._end_reliable = False
        at_ender = (
            (session.time_registered or kind in _CYCLE_CONTINUE) and kind in self._cycle_enders
            and not session.gsv_more
        )
        if session.time_registered:
            self._last_timed_kind = kind
        return time_changed, at_ender

    def flush(self) -> list[Fix]:
        """End of input: the epoch in progress is finished."""
        return self._bounded(self._end_epoch())

    def _end_epoch(self) -> list[Fix]:
        """The time changed: hand out the epoch's last report (or the epoch, if it never had one)."""
        epoch, self._epoch = self._epoch, _Epoch()
        pending, self._pending = self._pending, None
        reported, self._epoch_reported = self._epoch_reported, False
        if pending is not None:
            return [pending]
        if epoch.touched and not reported:
            return [self._to_fix(epoch)]
        return []

    # -- sentence checking -------------------------------------------------------------------------
    def _parse(self, line: str) -> tuple[str, str, list[str]] | None:
        if not _CHECKSUMMED.search(line):
            self.stats[MALFORMED] += 1  # no checksum: a truncated line, whatever is left of it is suspect
            return None
        try:
            message = pynmea2.parse(line)
        except pynmea2.ChecksumError:
            self.stats[BAD_CHECKSUM] += 1
            return None
        except (pynmea2.ParseError, ValueError, TypeError, AttributeError, IndexError):
            self.stats[MALFORMED] += 1
            return None
        if isinstance(message, pynmea2.ProprietarySentence):
            if getattr(message, "manufacturer", "") == "GRM" and message.data[:1] == ["Z"]:
                return "PGRM", "PGRMZ", [str(value) for value in message.data[1:]]
            self.stats[PROPRIETARY] += 1
            return None
        talker = getattr(message, "talker", "")
        kind = getattr(message, "sentence_type", "")
        if kind == "TXT" and talker in GNSS_TALKERS:
            self._txt(message.data)
        if talker not in GNSS_TALKERS or kind not in _HANDLERS:
            self.stats[UNSUPPORTED] += 1
            return None
        return talker, kind, message.data

    # -- the epoch ---------------------------------------------------------------------------------
    def _merge(self, update: _Update, mono: float | None) -> None:
        epoch = self._epoch
        if not epoch.touched:
            epoch.touched = True
            epoch.mono = mono
        if update.mode is not None:
            epoch.mode = update.mode
        if update.lat is not None:
            epoch.lat, epoch.lon = update.lat, update.lon
        for name in ("alt_m", "speed_mps", "course_deg"):
            value = getattr(update, name)
            if value is not None:
                setattr(epoch, name, value)
        if update.time_set:
            epoch.time = self._session_time()

    def _session_time(self) -> tuple[date, int, int, int, int]:
        s = self._session
        return (s.date, s.hour, s.minute, s.second, s.microsecond)

    def _to_fix(self, epoch: _Epoch) -> Fix:
        session = self._session
        session.last_alt = epoch.alt_m is not None or (session.last_alt and epoch.mode == _MODE_3D)
        session.last_mode = epoch.mode
        fix = Fix(
            fix=_FIX_NAMES[epoch.mode],
            speed_mps=_rounded(epoch.speed_mps, 3),
            course_deg=epoch.course_deg,
            sats=len(session.sats_used) if session.sats_used or session.last_gsa_talker else None,
            sats_seen=session.sats_seen,
            hdop=session.hdop,
            pdop=session.pdop,
            mono=epoch.mono,
            snr=session.snr,
            alert=session.alert,
        )
        if epoch.time is not None:
            fix.time, fix.epoch_s = _utc(*epoch.time)
        if epoch.mode >= _MODE_2D and epoch.lat is not None:
            fix.lat, fix.lon = epoch.lat, epoch.lon
            if epoch.mode == _MODE_3D:
                fix.alt_m = epoch.alt_m
        else:
            fix.fix = FIX_NONE
        return fix

    # -- time --------------------------------------------------------------------------------------
    def _merge_hhmmss(self, text: str) -> bool:
        if len(text) < 6 or not text[:6].isdigit():
            return False
        s = self._session
        hour = int(text[:2])
        if hour < s.hour and s.date is not None:  # midnight passed since the last date
            s.date += timedelta(days=1)
        s.hour, s.minute, s.second = hour, int(text[2:4]), int(text[4:6])
        fraction = text[7:] if len(text) > 7 and text[6] == "." else ""
        s.microsecond = int(round(float("0." + fraction) * 1e6)) if fraction.isdigit() else 0
        if s.hour > 23 or s.minute > 59 or s.second > 60 or s.microsecond >= 1_000_000:
            return False
        return True

    def _register_time(self, text: str) -> None:
        try:
            self._session.frac_time = float(text)
        except ValueError:
            return
        self._session.time_registered = True

    def _merge_ddmmyy(self, text: str) -> bool:
        if len(text) != 6 or not text.isdigit():
            return False
        day, month, yy = int(text[:2]), int(text[2:4]), int(text[4:])
        year = 2000 + yy if yy < 80 else 1900 + yy  # two-digit years: 1980 (GPS epoch) to 2079
        return self._set_date(year, month, day)

    def _set_date(self, year: int, month: int, day: int) -> bool:
        try:
            when = date(year, month, day)
        except ValueError:
            return False
        if self.rollover_before is not None and when < self.rollover_before:
            when += timedelta(weeks=1024)  # the receiver lost a GPS week rollover (gpsd's WKRO check)
        self._session.date = when
        return True

    # -- sentences (fields as pynmea2 splits them: fields[0] is gpsd's field[1]) -------------------
    def _gga(self, talker: str, f: list[str]) -> _Update:
        s = self._session
        update = _Update()
        quality = _int(f[5])
        last_talker, s.last_gga_talker = s.last_gga_talker, talker
        if last_talker and last_talker != talker:
            s.latch_mode = False
        else:
            s.latch_mode = f[0] == s.last_gga_timestamp
        if not s.latch_mode:
            s.last_gga_timestamp = f[0]
        if quality == 0 and not f[0]:
            s.date = None  # a receiver with nothing: forget the date, report the epoch now
            update.report = True
        if f[0] and self._merge_hhmmss(f[0]):
            self._register_time(f[0])
            update.time_set = s.date is not None
        used = _int(f[6]) or 0
        position = _lat_lon(f[1:5])
        if position is not None:
            update.lat, update.lon = position
            update.mode = _MODE_2D
            altitude = _float(f[8])
            if altitude is not None:
                update.alt_m = altitude
                if used >= 4:
                    update.mode = _MODE_3D
            if used < 3:
                update.mode = _MODE_NONE
        else:
            update.mode = _MODE_NONE
        if s.latch_mode:
            update.mode = _MODE_NONE
        hdop = _float(f[7])
        if hdop is not None and hdop < 99.0:
            s.hdop = hdop
        return update

    def _rmc(self, talker: str, f: list[str]) -> _Update:
        s = self._session
        update = _Update()
        status = f[1][:1]
        if len(f) > 12 and f[12][:1] == "U":  # NMEA 4.1 navigational status: unsafe
            s.alert = UNSAFE
        if status not in ("A", "D"):
            update.mode = _MODE_NONE
            if not f[0] or len(f) < 9 or not f[8]:
                s.date = None
                update.report = True
            return update
        if f[0] and len(f) > 8 and f[8] and self._merge_hhmmss(f[0]) and self._merge_ddmmyy(f[8]):
            update.time_set = True
            self._register_time(f[0])
        position = _lat_lon(f[2:6])
        if position is not None:
            update.lat, update.lon = position
            update.mode = _MODE_3D if s.last_mode == _MODE_3D else _MODE_2D
        else:
            update.mode = _MODE_NONE
        speed = _float(f[6])
        if speed is not None:
            update.speed_mps = speed * KNOTS_TO_MPS
        course = _float(f[7]) if len(f) > 7 else None
        if course is not None:
            update.course_deg = course
        if len(s.sats_used) > 3 or self._epoch.alt_m is not None:
            update.mode = _MODE_3D
        return update

    def _gll(self, talker: str, f: list[str]) -> _Update:
        s = self._session
        update = _Update()
        if len(f) > 4 and f[4] and self._merge_hhmmss(f[4]):
            self._register_time(f[4])
            update.time_set = s.date is not None
        status = f[5][:1] if len(f) > 5 else ""
        faa = f[6][:1] if len(f) > 6 else ""
        position = _lat_lon(f[0:4])
        if status == "A" and faa != "N" and position is not None:
            update.lat, update.lon = position
            if self._epoch.alt_m is not None or len(s.sats_used) > 3:
                update.mode = _MODE_3D
            elif self._epoch.mode < _MODE_2D or not s.last_alt:
                update.mode = _MODE_2D
            else:
                update.mode = _NO_MODE
        else:
            update.mode = _MODE_NONE
        return update

    def _gns(self, talker: str, f: list[str]) -> _Update:
        s = self._session
        update = _Update()
        if f[0] and self._merge_hhmmss(f[0]):
            self._register_time(f[0])
            update.time_set = s.date is not None
        # One mode character per constellation (NMEA 4.x: GPS, GLONASS, Galileo, BeiDou, QZSS, NavIC):
        # "NA" is no GPS fix but a GLONASS one. No fix only when every constellation says N.
        if not f[5].strip("N "):
            update.mode = _MODE_NONE
            return update
        if len(f) > 12 and f[12][:1] in ("U", "V"):
            if f[12][:1] == "U":
                s.alert = UNSAFE
            return update
        position = _lat_lon(f[1:5])
        if position is None:
            update.mode = _MODE_NONE
            return update
        update.lat, update.lon = position
        update.mode = _MODE_2D
        altitude = _float(f[8])
        if altitude is not None:
            update.alt_m = altitude
            if (_int(f[6]) or 0) > 3:
                update.mode = _MODE_3D
        hdop = _float(f[7])
        if hdop is not None:
            s.hdop = hdop
        return update

    def _gsa(self, talker: str, f: list[str]) -> _Update:
        s = self._session
        update = _Update()
        last_talker = s.last_gsa_talker
        if s.latch_mode:
            return update  # the last GGA repeated its timestamp: this GSA is stale too
        if f[1][:1] != "E":
            mode = _int(f[1])
            if mode in (_MODE_NONE, _MODE_2D, _MODE_3D):
                update.mode = mode
        if len(f) + 1 <= 19:
            pdop, hdop = _float(f[14]), _float(f[15])
            if pdop is not None and pdop < 99.0:
                s.pdop = pdop
            if hdop is not None and hdop < 99.0:
                s.hdop = hdop
        talker_id = talker[1]
        if not last_talker or (talker_id == last_talker and talker_id != "N"):
            s.sats_used = []
        s.last_gsa_talker = talker_id
        if talker_id != "P":
            s.seen_other_gsa = True
        for prn in f[2:-3] if len(f) > 5 else []:
            number = _int(prn)
            if number is not None and number > 0 and len(s.sats_used) < SKY_MAX:
                s.sats_used.append(number)
        if s.seen_other_gsa and talker_id == "P":
            update.mode = None  # GPS-only GSA beside a multi-constellation one: the latter rules
        return update

    def _gsv(self, talker: str, f: list[str]) -> _Update | None:
        s = self._session
        if len(f) < 3:
            return None
        total, part = _int(f[0]), _int(f[1])
        if total is None or part is None or part < 1:
            return None
        if part == 1 and not s.last_gsv_talker:
            s.gsv_count = 0
            s.gsv_snr = []
        s.last_gsv_talker = talker
        s.gsv_count = min(SKY_MAX, s.gsv_count + sum(1 for prn in f[3::4] if prn.isdigit() and prn.strip("0")))
        # (00 or empty: not tracked, e.g. almanac entries at a cold start; not a signal strength)
        s.gsv_snr += [int(snr) for snr in f[6::4] if snr.isdigit() and len(snr) <= 2 and snr != "00"]
        del s.gsv_snr[SKY_MAX:]
        if part >= total:
            s.sats_seen = s.gsv_count
            s.snr = tuple(s.gsv_snr)
        else:
            s.gsv_more = True
        return None

    def _vtg(self, talker: str, f: list[str]) -> _Update | None:
        if not f[0] or len(f) < 5 or not f[4]:
            return None
        if len(f) > 8 and f[8][:1] in ("E", "N"):
            return None
        course, speed = _float(f[0]), _float(f[4])
        if course is None or speed is None:
            return None
        return _Update(course_deg=course, speed_mps=speed * KNOTS_TO_MPS)

    def _pgrmz(self, talker: str, f: list[str]) -> _Update | None:
        """Garmin's altitude in feet, sent after the cycle's GGA, and what gpsd reports as altitude."""
        if len(f) < 3:
            return None
        update = _Update()
        feet = _int(f[0].lstrip("-")) if f[0] else None
        if f[1] == "f" and feet is not None:
            update.alt_m = (-feet if f[0].startswith("-") else feet) * 0.3048
        if f[2] in ("2", "3"):
            update.mode = int(f[2])
        return update

    def _txt(self, f: list[str]) -> None:
        """Free text; some receivers (u-blox M8+, Quectel) say there when they see jamming or spoofing."""
        text = f[-1].upper() if f else ""
        if "SPOOF" in text:
            self._session.alert = SPOOFING
        elif "JAM" in text:
            self._session.alert = JAMMING

    def _zda(self, talker: str, f: list[str]) -> _Update | None:
        if len(f) < 4 or not all(f[:4]):
            return None
        day, month, year = _int(f[1]), _int(f[2]), _int(f[3])
        if day is None or month is None or year is None or not 1900 <= year <= 2200:
            return None
        if not self._merge_hhmmss(f[0]) or not self._set_date(year, month, day):
            return None
        # No time registered: receivers that send ZDA only with a fix would look like they change
        # their cycle (gpsd leaves ZDA out of epoch detection too).
        return _Update(time_set=True)


def decode_capture(data: bytes, stats: dict[str, int] | None = None) -> list[Fix]:
    """A whole capture (raw receiver output, CRLF or LF, gpsd's `#` comment lines allowed) to its epochs.

    A capture whose header states when it was recorded (gpsd's `# Date: yyyy-mm-dd`) is decoded with
    the dates its receiver sent, as gpsd's regression tests do; others get the week-rollover check."""
    return list(decode_stream([data], stats))


class NoSentences(ValueError):
    """`max_gap_bytes` of input in a row without one checksummed sentence (/dev/zero, a binary log)."""


def decode_stream(chunks: Iterable[bytes], stats: dict[str, int] | None = None, *,
                  max_gap_bytes: int | None = None) -> Iterator[Fix]:
    """`decode_capture` for input that arrives in pieces and may never end: the epochs as they finish.

    With `max_gap_bytes`, raises NoSentences once that much input passed without a checksummed sentence
    (used or not), so something endless that is not NMEA stops instead of being read forever."""
    stats = stats if stats is not None else new_stats()
    reader = LineReader(stats)
    decoder: EpochDecoder | None = None
    gap = 0
    for data in chunks:
        if decoder is None:  # the header is at the top: the first piece decides
            decoder = EpochDecoder(stats, rollover_before=None if _RECORDED_ON.search(data) else ROLLOVER_BEFORE)
        before = checked_count(stats)
        for line in reader.feed(data):
            yield from decoder.feed(line)
        gap = 0 if checked_count(stats) > before else gap + len(data)
        if max_gap_bytes is not None and gap >= max_gap_bytes:
            raise NoSentences(f"{gap} bytes without an NMEA sentence")
    decoder = decoder or EpochDecoder(stats)
    for line in reader.flush():
        yield from decoder.feed(line)
    yield from decoder.flush()


def checked_count(stats: dict[str, int]) -> int:
    """Sentences with a good checksum, used or not: proof the input is NMEA at the right baud rate."""
    return stats[SENTENCES_OK] + stats[PROPRIETARY] + stats[UNSUPPORTED]


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine on a 6371 km sphere: metres of error at geofence scale)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlmb = phi2 - phi1, math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * 6371008.8 * math.asin(min(1.0, math.sqrt(a)))


def _utc(day: date, hour: int, minute: int, second: int, microsecond: int) -> tuple[str, float]:
    global _midnight
    if _midnight[0] != day:
        _midnight = (day, datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    midnight = _midnight[1]
    epoch_s = midnight + hour * 3600 + minute * 60 + second + microsecond / 1e6
    if second < 60:
        iso = (f"{day.year:04d}-{day.month:02d}-{day.day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
               f".{microsecond // 1000:03d}Z")
    else:  # a leap second as the receiver wrote it: 23:59:60
        moment = datetime.fromtimestamp(epoch_s, tz=UTC)
        iso = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return iso, epoch_s


_midnight: tuple[date | None, float] = (None, 0.0)  # the last day seen: epochs come in order


def _lat_lon(f: list[str]) -> tuple[float, float] | None:
    if len(f) < 4 or not all(f[:4]):
        return None
    lat, lon = _degrees(f[0]), _degrees(f[2])
    if lat is None or lon is None:  # a latitude of 91 goes on to PLAUSIBLE, to be counted
        return None
    if lat == 0.0 and lon == 0.0:
        return None  # what some receivers print before their first fix: never a position
    if f[1][:1] == "S":
        lat = -lat
    elif f[1][:1] != "N":
        return None
    if f[3][:1] == "W":
        lon = -lon
    elif f[3][:1] != "E":
        return None
    return lat, lon


def _degrees(text: str) -> float | None:
    """NMEA (d)ddmm.mmmm to degrees."""
    whole, dot, fraction = text.partition(".")
    if not dot or not whole.isdigit() or (fraction and not fraction.isdigit()):
        return None
    minutes = int(whole)
    degrees = minutes // 100
    minutes -= degrees * 100
    if minutes >= 60:
        return None
    return (degrees * 60 + minutes + float("0." + (fraction or "0"))) / 60.0


def _float(text: str) -> float | None:
    """A number as written; `nan` and `inf` too (Python reads them), left for PLAUSIBLE to null and
    count, as it does 1e308: a checksummed nonsense value is a rejected value, not a silent empty field."""
    try:
        return float(text)
    except ValueError:
        return None


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
