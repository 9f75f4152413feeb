"""Clock source: ntp when the kernel says synchronised, gps once GPS time arrives, else unsynced."""

import time
from datetime import UTC, datetime

from agent.clock import GPS, NTP, UNSYNCED, Clock, iso_ms, kernel_clock_synchronised


def test_iso_ms_format():
    assert iso_ms(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1764000000.1239) == "2025-11-24T16:00:00.123Z"


def test_unsynced_without_ntp_or_gps():
    clock = Clock(kernel_synced=lambda: False)
    assert clock.source() == UNSYNCED
    assert abs(clock.now() - time.time()) < 0.5
    assert clock.snapshot() == {"clock_source": UNSYNCED, "clock_offset_s": None}


def test_ntp_when_kernel_synchronised_even_with_gps():
    clock = Clock(kernel_synced=lambda: True)
    clock.gps_time(time.time() - 3600, time.monotonic())
    assert clock.source() == NTP
    assert abs(clock.now() - time.time()) < 0.5


def test_gps_time_stamps_when_unsynced_and_offset_is_measured():
    clock = Clock(kernel_synced=lambda: False)
    # the system clock believes it is 2000; GPS says it is ten years later
    gps_epoch = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC).timestamp()
    mono = time.monotonic()
    clock.gps_time(gps_epoch, mono)
    assert clock.source() == GPS
    assert abs(clock.epoch_at(mono) - gps_epoch) < 1e-6
    assert abs(clock.epoch_at(mono + 2.5) - (gps_epoch + 2.5)) < 1e-6
    assert clock.iso_at(mono + 1.0) == "2031-05-06T07:08:10.000Z"
    assert abs(clock.offset_s() - (time.time() - gps_epoch)) < 1.0


def test_kernel_probe_answers_a_bool():
    assert kernel_clock_synchronised() in (True, False)
