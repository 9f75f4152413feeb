"""Every epoch of 62 real receiver captures (gpsd's regression logs) decodes to the fix gpsd reports.

The comparison is the one tests/data/nmea/README.md states: for each expected record with a fix, a
decoded record with the same `time` and `fix`, lat/lon within 1e-6 degrees and altitude within 0.1 m
where both have one. Stricter than the README: where gpsd reports no fix, a record decoded for that time
must have none either. Records for the same time replace earlier ones, as in the expected files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drivers.gps.nmea import FIX_NONE, decode_capture

CAPTURES = Path(__file__).parent / "data" / "nmea"
NAMES = sorted(path.stem for path in CAPTURES.glob("*.log"))
# Small hand-made cases (cases/README.md) for quirks the 62 captures lack; compared the same way.
CASES = sorted(f"cases/{path.stem}" for path in (CAPTURES / "cases").glob("*.log"))


def test_all_captures_are_here():
    assert len(NAMES) == 62
    assert all((CAPTURES / f"{name}.expected.jsonl").is_file() for name in NAMES)


@pytest.mark.parametrize("name", NAMES + CASES)
def test_capture_decodes_to_gpsd_fixes(name):
    decoded = {fix.time: fix for fix in decode_capture((CAPTURES / f"{name}.log").read_bytes()) if fix.time}
    expected = [json.loads(line) for line in (CAPTURES / f"{name}.expected.jsonl").read_text().splitlines()]
    assert expected, "every capture has expected fixes"
    problems = []
    for record in expected:
        got = decoded.get(record["time"])
        if got is None:
            if record["fix"] != FIX_NONE:
                problems.append(f"{record['time']}: no epoch decoded")
            continue
        if got.fix != record["fix"]:
            problems.append(f"{record['time']}: fix {got.fix}, gpsd {record['fix']}")
            continue
        if record["fix"] == FIX_NONE or "lat" not in record:
            assert got.lat is None and got.lon is None, "no position without a fix"
            continue
        if abs(got.lat - record["lat"]) > 1e-6 or abs(got.lon - record["lon"]) > 1e-6:
            problems.append(f"{record['time']}: {got.lat},{got.lon}, gpsd {record['lat']},{record['lon']}")
        if "alt_m" in record and got.alt_m is not None and abs(got.alt_m - record["alt_m"]) > 0.1:
            problems.append(f"{record['time']}: alt {got.alt_m}, gpsd {record['alt_m']}")
    assert not problems, f"{len(problems)} of {len(expected)} epochs differ: {problems[:5]}"


@pytest.mark.parametrize("name", CASES)
def test_case_gives_exactly_one_fix_per_epoch(name):
    dated = [fix.time for fix in decode_capture((CAPTURES / f"{name}.log").read_bytes()) if fix.time]
    expected = [json.loads(line)["time"] for line in (CAPTURES / f"{name}.expected.jsonl").open()]
    assert dated == expected, "one fix per epoch, in order, none twice"


@pytest.mark.parametrize("name", NAMES + CASES)
def test_capture_fixes_are_plausible(name):
    for fix in decode_capture((CAPTURES / f"{name}.log").read_bytes()):
        if fix.fix == FIX_NONE:
            assert fix.lat is None and fix.alt_m is None
        else:
            assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180 and (fix.lat, fix.lon) != (0.0, 0.0)
            assert fix.alt_m is None or fix.fix == "3d", "altitude only with a 3d fix"
