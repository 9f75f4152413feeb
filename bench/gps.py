"""NMEA decoding throughput (sentences/s): the driver's decoder against a bare pynmea2.parse loop.

Input: the 62 receiver captures of tests/data/nmea, concatenated and repeated into one large capture.
Baseline, measured in the same run over the same lines: `pynmea2.parse(line)` for every line, which
checks checksums and splits fields but merges nothing. Ours: bytes -> LineReader -> EpochDecoder ->
fixes, all the driver does per byte. A receiver sends 10-30 sentences per second; the headroom figure
says how many receivers' worth one core could decode.
"""

from __future__ import annotations

import time

import pynmea2

from bench.common import ROOT, env_seconds
from drivers.gps.nmea import decode_capture, new_stats

CAPTURES = ROOT / "tests" / "data" / "nmea"
RECEIVER_SENTENCES_PER_S = 20


def main() -> int:
    one = b"".join(path.read_bytes().rstrip(b"\r\n") + b"\r\n" for path in sorted(CAPTURES.glob("*.log")))
    repeat = max(1, int(env_seconds("BOXTEL_BENCH_GPS_REPEAT", 12)))
    capture = one * repeat
    lines = [line for line in capture.decode("latin-1").splitlines() if line.startswith(("$", "!"))]
    print(f"capture: {len(capture) / 2**20:.1f} MB, {len(lines)} sentences ({repeat} x 62 receiver logs)")

    baseline_s, parsed = _best_of(3, lambda: _bare_parse(lines))
    ours_s, fixes = _best_of(3, lambda: len(decode_capture(capture, new_stats())))
    baseline_rate, ours_rate = len(lines) / baseline_s, len(lines) / ours_s
    print(f"baseline pynmea2.parse loop: {baseline_rate:10.0f} sentences/s ({parsed} parsed)")
    print(f"boxtel decoder (bytes->fixes): {ours_rate:8.0f} sentences/s ({fixes} epochs)")
    print(f"ratio: {ours_rate / baseline_rate:.2f} of the bare parse loop; "
          f"headroom: {ours_rate / RECEIVER_SENTENCES_PER_S:.0f} receivers per core")
    return 0


def _bare_parse(lines: list[str]) -> int:
    parsed = 0
    for line in lines:
        try:
            pynmea2.parse(line)
            parsed += 1
        except (pynmea2.ParseError, pynmea2.ChecksumError, ValueError, AttributeError, TypeError, IndexError):
            pass
    return parsed


def _best_of(runs: int, work) -> tuple[float, int]:
    best, result = float("inf"), 0
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


if __name__ == "__main__":
    raise SystemExit(main())
