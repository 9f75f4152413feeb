"""The NMEA line reader and epoch decoder: quirks one at a time, and fuzzing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gps.nmea import PLAUSIBLE, SKY_MAX, EpochDecoder, LineReader, decode_capture, new_stats
from drivers.gps.sim import HOME, corrupt, epoch_sentences, sentence

T0 = 1_764_150_000.0  # 2025-11-26T09:40:00Z


def decode(*bodies: str, rollover: bool = True, stats: dict | None = None, flush: bool = True) -> list:
    """Sentences (bodies without `$` and checksum) through a live decoder, then end of input (`flush`;
    else only the epochs a later sentence closed). `stats`: the decoder's counters, filled in."""
    decoder = EpochDecoder(stats, **({} if rollover else {"rollover_before": None}))
    fixes = []
    for body in bodies:
        fixes += decoder.feed(sentence(body).strip())
    return fixes + decoder.flush() if flush else fixes


def receiver_output(seconds: int = 3, **state) -> bytes:
    state = {"lat": HOME[0], "lon": HOME[1], "alt_m": 5.0, "speed_mps": 1.0, "course_deg": 90.0, **state}
    return "".join(line for s in range(seconds) for line in epoch_sentences(T0 + s, **state)).encode()


# -- lines ---------------------------------------------------------------------------------------------
def test_line_reader_joins_split_reads_and_accepts_crlf_lf_and_cr():
    reader = LineReader()
    lines = reader.feed(b"$GPGGA,1*00\r\n$GPR") + reader.feed(b"MC,2*00\n$GPGSA,3*00\r$GPV") + reader.flush()
    assert lines == ["$GPGGA,1*00", "$GPRMC,2*00", "$GPGSA,3*00", "$GPV"]


def test_line_reader_counts_noise_and_drops_endless_lines():
    stats = new_stats()
    reader = LineReader(stats)
    assert reader.feed(bytes(range(128, 256)) * 10) == []  # a wrong baud rate: never a line end
    assert reader.feed(b"\xff\xfe$GPGGA,1*00\r\n") == ["$GPGGA,1*00"]
    assert reader.feed(b"$GP" + b"A" * 500 + b"\r\n") == []
    assert stats["noise_bytes"] >= 1282 and stats["overlong"] >= 1


def test_capture_with_crlf_and_lf_decodes_the_same():
    lf = receiver_output().replace(b"\r\n", b"\n")
    assert [f.record() for f in decode_capture(lf)] == [f.record() for f in decode_capture(receiver_output())]


# -- sentences ---------------------------------------------------------------------------------------
def test_bad_checksum_missing_checksum_proprietary_and_other_talkers_are_counted_not_used():
    stats = new_stats()
    good = sentence("GPRMC,094000.00,A,5205.44422,N,00507.28520,E,0.0,0.0,261125,,,A").strip()
    decoder = EpochDecoder(stats)
    decoder.feed(good[:-2] + ("00" if good[-2:] != "00" else "01"))  # flipped checksum
    decoder.feed(good.split("*")[0][:40])  # truncated: no checksum left
    decoder.feed(sentence("PGRME,15.0,M,45.0,M,25.0,M").strip())
    decoder.feed(sentence("SDDBT,7.7,f,2.3,M,1.3,F").strip())  # a depth sounder on the same bus
    decoder.feed("$GPXYZ-nonsense*00")
    assert decoder.flush() == []
    assert stats["bad_checksum"] == 1 and stats["proprietary"] == 1 and stats["unsupported"] == 1
    assert stats["malformed"] == 2 and stats["sentences_ok"] == 0


def test_multi_constellation_talkers_decode():
    fixes = decode(
        "GNRMC,094000.00,A,5205.44422,N,00507.28520,E,0.5,90.0,261125,,,A",
        "GNGGA,094000.00,5205.44422,N,00507.28520,E,1,12,0.8,5.0,M,47.0,M,,",
        "GNGSA,A,3,01,02,03,04,,,,,,,,,1.5,0.8,1.2",
        "BDGSA,A,3,201,202,,,,,,,,,,,1.5,0.8,1.2",
        "GNRMC,094001.00,A,5205.44422,N,00507.28520,E,0.5,90.0,261125,,,A",
    )
    dated = [f for f in fixes if f.time == "2025-11-26T09:40:00.000Z"]
    assert dated and dated[-1].fix == "3d" and dated[-1].alt_m == 5.0 and dated[-1].sats == 6


def test_rmc_status_v_is_no_fix_even_with_a_position():
    fixes = decode("GPRMC,094000.00,V,5205.44422,N,00507.28520,E,0.0,0.0,261125,,,N",
                   "GPRMC,094001.00,V,5205.44422,N,00507.28520,E,0.0,0.0,261125,,,N")
    assert fixes and all(f.fix == "none" and f.lat is None for f in fixes)


def test_zero_zero_is_never_a_position():
    fixes = decode("GPGGA,094000.00,0000.0000,N,00000.0000,E,1,08,1.0,0.0,M,0.0,M,,",
                   "GPRMC,094000.00,A,0000.0000,N,00000.0000,E,0.0,0.0,261125,,,A",
                   "GPGGA,094001.00,0000.0000,N,00000.0000,E,1,08,1.0,0.0,M,0.0,M,,")
    assert fixes and all(f.lat is None and f.fix == "none" for f in fixes)


def test_empty_fields_of_a_receiver_without_anything_do_not_crash():
    fixes = decode("GPGGA,,,,,,0,,,,,,,,", "GPGSA,A,1,,,,,,,,,,,,,,,", "GPGSV,1,1,00", "GPRMC,,V,,,,,,,,,,N",
                   "GPVTG,,T,,M,,N,,K,N", "GPGLL,,,,,,V,N", "GPZDA,,,,,,")
    assert fixes and all(f.fix == "none" and f.time is None for f in fixes)


def test_checksummed_but_absurd_values_are_nulled_and_counted():
    stats = new_stats()
    decoder = EpochDecoder(stats)
    fixes = []
    for body in ("GPGGA,094000.00,5205.44,N,00507.28,E,1,09,0.0,1e308,M,47.0,M,,",
                 "GPGSA,A,3,02,05,07,09,13,15,18,20,25,,,,-1.0,0.0,1.3",
                 "GPRMC,094000.00,A,5205.44,N,00507.28,E,99999999.0,400.0,261125,,,A",
                 "GPGGA,094001.00,5205.44,N,00507.28,E,1,09,0.9,-1500.0,M,47.0,M,,",
                 "GPRMC,094001.00,A,5205.44,N,00507.28,E,1.0,360.0,261125,,,A"):
        fixes += decoder.feed(sentence(body).strip())
    fixes += decoder.flush()
    first, second = fixes[-2], fixes[-1]
    assert first.fix == "3d" and abs(first.lat - 52.0906667) < 1e-6  # the position itself is fine
    assert (first.alt_m, first.speed_mps, first.course_deg, first.hdop, first.pdop) == (None,) * 5
    assert second.alt_m is None and second.course_deg == 360.0 and second.speed_mps == 0.514
    assert stats["rejected"] >= 6  # per value withheld from a fix: alt 1e308, speed, course 400, hdop 0, pdop -1, alt -1500
    # the bounds are inclusive and sane values pass untouched
    ok = decode("GPGGA,094000.00,5205.44,N,00507.28,E,1,09,0.9,49999.0,M,47.0,M,,",
                "GPRMC,094000.00,A,5205.44,N,00507.28,E,0.0,0.0,261125,,,A")
    assert ok[-1].alt_m == 49999.0 and ok[-1].course_deg == 0.0 and ok[-1].speed_mps == 0.0


@pytest.mark.parametrize("word", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_checksummed_nan_and_inf_are_nulled_and_counted_like_any_absurd_value(word):
    stats = new_stats()
    fixes = decode(f"GPGGA,094000.00,5205.44,N,00507.28,E,1,09,0.9,{word},M,47.0,M,,",
                   f"GPRMC,094000.00,A,5205.44,N,00507.28,E,{word},{word},261125,,,A",
                   "GPGGA,094001.00,5205.44,N,00507.28,E,1,09,0.9,5.0,M,47.0,M,,", stats=stats, flush=False)
    dated = [f for f in fixes if f.time]
    assert dated and abs(dated[0].lat - 52.0906667) < 1e-6
    assert (dated[0].alt_m, dated[0].speed_mps, dated[0].course_deg) == (None,) * 3
    assert stats["rejected"] >= 3  # altitude, speed, course withheld, and counted (health: gps_rejected)


@pytest.mark.parametrize("position", ["9100.000,N,00507.28,E", "5205.44,N,18100.000,E", "9959.999,S,35959.999,W"])
def test_a_checksummed_position_off_the_globe_is_no_position_and_counted(position):
    stats = new_stats()
    fixes = decode(f"GPGGA,094000.00,{position},1,09,0.9,5.0,M,47.0,M,,",
                   f"GPRMC,094000.00,A,{position},0.0,0.0,261125,,,A",
                   "GPGGA,094001.00,5205.44,N,00507.28,E,1,09,0.9,5.0,M,47.0,M,,", stats=stats, flush=False)
    dated = [f for f in fixes if f.time]
    assert dated and all((f.lat, f.lon, f.alt_m, f.fix) == (None, None, None, "none") for f in dated)
    assert stats["rejected"] >= 1  # health: gps_rejected


def test_a_talker_sending_only_gsv_or_gsa_never_grows_the_decoder_without_end():
    """No timed sentence ever closes the cycle: the satellite lists stay bounded by SKY_MAX."""
    only_gsv, only_gsa = EpochDecoder(new_stats()), EpochDecoder(new_stats())
    for n in range(5_000):
        only_gsv.feed(sentence(f"GPGSV,3,{n % 2 + 1},12,{n % 99 + 1:02d},40,083,46,{n % 98 + 1:02d},40,083,45").strip())
        only_gsa.feed(sentence("GNGSA,A,3," + ",".join(f"{(n + k) % 99 + 1:02d}" for k in range(12)) +
                               ",1.6,0.9,1.3").strip())
    assert len(only_gsv._session.gsv_snr) == SKY_MAX and only_gsv._session.gsv_count == SKY_MAX
    assert len(only_gsa._session.sats_used) == SKY_MAX


def test_altitude_needs_a_3d_fix():
    fixes = decode("GPRMC,094000.00,A,5205.44422,N,00507.28520,E,0.0,0.0,261125,,,A",
                   "GPGGA,094000.00,5205.44422,N,00507.28520,E,1,03,2.0,55.0,M,47.0,M,,",
                   "GPGSA,A,2,01,02,03,,,,,,,,,,2.5,2.0,1.5",
                   "GPRMC,094001.00,A,5205.44422,N,00507.28520,E,0.0,0.0,261125,,,A")
    dated = [f for f in fixes if f.time]
    assert dated[0].fix == "2d" and dated[0].alt_m is None and dated[0].lat is not None


def test_two_digit_years_and_midnight_rollover():
    fixes = decode("GPRMC,235959.00,A,5205.44422,N,00507.28520,E,0.0,0.0,311279,,,A",
                   "GPGGA,000000.00,5205.44422,N,00507.28520,E,1,08,1.0,5.0,M,47.0,M,,",
                   "GPGGA,000001.00,5205.44422,N,00507.28520,E,1,08,1.0,5.0,M,47.0,M,,")
    times = [f.time for f in fixes if f.time]
    # 79 is 2079; GGA carries no date: after midnight it is the next day (and year)
    assert times[:2] == ["2079-12-31T23:59:59.000Z", "2080-01-01T00:00:00.000Z"]
    assert decode("GPRMC,120000.00,A,5205.44422,N,00507.28520,E,0.0,0.0,010180,,,A", rollover=False)[0].time \
        == "1980-01-01T12:00:00.000Z"


def test_gps_week_rollover_is_corrected_live_and_kept_in_dated_captures():
    # A receiver that lost the April 2019 rollover reports 1024 weeks (7168 days) early.
    lost = "GPRMC,094000.00,A,5205.44422,N,00507.28520,E,0.0,0.0,220899,,,A"
    assert decode(lost)[0].time == "2019-04-07T09:40:00.000Z"
    assert decode(lost, rollover=False)[0].time == "1999-08-22T09:40:00.000Z"
    capture = sentence(lost).encode()
    assert decode_capture(capture)[0].time.startswith("2019-04-07")
    assert decode_capture(b"# Date: 2019-3-14\n" + capture)[0].time.startswith("1999-08-22")


def test_date_from_zda_dates_gga_epochs():
    fixes = decode("GPZDA,094000.00,26,11,2025,00,00",
                   "GPGGA,094000.00,5205.44422,N,00507.28520,E,1,08,1.0,5.0,M,47.0,M,,",
                   "GPGGA,094001.00,5205.44422,N,00507.28520,E,1,08,1.0,5.0,M,47.0,M,,")
    assert [f.time for f in fixes if f.fix == "3d"][:1] == ["2025-11-26T09:40:00.000Z"]


def test_epoch_merges_speed_course_and_quality_from_all_its_sentences():
    fixes = decode_capture(receiver_output(seconds=3, speed_mps=10.0, course_deg=271.5))
    epoch = [f for f in fixes if f.time == "2025-11-26T09:40:01.000Z"][-1]
    assert epoch.fix == "3d" and epoch.sats == 9 and epoch.sats_seen == 11 and epoch.hdop == 0.9
    assert abs(epoch.speed_mps - 10.0) < 0.01 and epoch.course_deg == 271.5
    assert abs(epoch.lat - HOME[0]) < 1e-6 and abs(epoch.lon - HOME[1]) < 1e-6


def test_one_fix_per_epoch_from_a_steady_receiver():
    fixes = decode_capture(receiver_output(seconds=10))
    times = [f.time for f in fixes if f.time]
    assert len(times) == len(set(times)) == 10


def test_corrupted_lines_lose_at_most_their_epoch():
    rng = random.Random(5)
    lines = [line for s in range(60) for line in epoch_sentences(
        T0 + s, lat=HOME[0], lon=HOME[1], alt_m=5.0, speed_mps=0.0, course_deg=0.0)]
    damaged = "".join(corrupt(line, rng) if i % 9 == 4 else line for i, line in enumerate(lines))
    stats = new_stats()
    fixes = decode_capture(damaged.encode("latin-1"), stats)
    good = {f.time for f in fixes if f.fix == "3d"}
    assert len(good) >= 50 and stats["bad_checksum"] + stats["malformed"] >= 20
    assert all(abs(f.lat - HOME[0]) < 1e-6 for f in fixes if f.lat is not None)


def test_live_decoding_recovers_its_cycle_end_after_a_damaged_line():
    lines = [line for s in range(20) for line in epoch_sentences(
        T0 + s, lat=HOME[0], lon=HOME[1], alt_m=5.0, speed_mps=3.0, course_deg=45.0)]
    damaged_rmc = next(i for i, line in enumerate(lines) if line.startswith("$GPRMC") and i > 30)
    lines[damaged_rmc] = lines[damaged_rmc][:30] + "\r\n"
    partial = {}
    for remember in (True, False):
        decoder = EpochDecoder(remember_enders=remember)
        fixes = [fix for line in lines for fix in decoder.feed(line.strip())]
        partial[remember] = [f.time for f in fixes if f.time and f.speed_mps is None]
    # gpsd keeps GGA as a cycle ender from then on and reports every later epoch twice, first without
    # speed; live, only the damaged epoch and the next one lack it
    assert len(partial[True]) >= 14 and len(partial[False]) <= 2


# -- fuzzing -------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=30))
def test_random_bytes_never_crash_and_never_give_a_fix(chunks):
    stats = new_stats()
    reader, decoder = LineReader(stats), EpochDecoder(stats)
    fixes = []
    for chunk in chunks:
        for line in reader.feed(chunk):
            fixes += decoder.feed(line)
    for line in reader.flush():
        fixes += decoder.feed(line)
    fixes += decoder.flush()
    assert all(f.lat is None and f.fix == "none" for f in fixes)


_FIELD = st.text(alphabet="0123456789.,-NSEWAVMTK", max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["GPGGA", "GNRMC", "GPGSA", "GLGSV", "GPVTG", "GPGLL", "GPZDA", "GNGNS", "PGRMZ", "GPTXT"]),
       st.lists(_FIELD, max_size=22), st.integers(min_value=0, max_value=3))
def test_well_framed_sentences_with_random_fields_never_crash_or_give_a_bogus_fix(kind, fields, repeat):
    body = ",".join([kind, *fields])
    decoder = EpochDecoder()
    fixes = []
    for _ in range(repeat + 1):
        fixes += decoder.feed(sentence(body).strip())
    fixes += decoder.flush()
    for fix in fixes:
        if fix.fix == "none":
            assert fix.lat is None and fix.alt_m is None
        else:
            assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180 and (fix.lat, fix.lon) != (0.0, 0.0)
            assert fix.alt_m is None or fix.fix == "3d"
        for name, (low, high) in PLAUSIBLE.items():  # whatever the fields, the output is physical
            assert getattr(fix, name) is None or low <= getattr(fix, name) <= high, name
        assert all(1 <= snr <= 99 for snr in fix.snr)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.integers(min_value=1, max_value=64))
def test_how_the_bytes_are_split_does_not_change_the_lines(noise, step):
    data = noise + receiver_output(seconds=2) + noise
    whole = LineReader().feed(data)
    reader = LineReader()
    pieces = [line for i in range(0, len(data), step) for line in reader.feed(data[i:i + step])]
    assert pieces == whole
