"""`boxtel gps decode FILE [--json]`: what a receiver said, epoch by epoch, from a capture.

A capture is raw receiver output saved to a file (`cat /dev/ttyUSB0 > capture.nmea`, gpsd's logs; CRLF
or LF). It is decoded by the same code the GPS driver runs, so a technician sees what the agent would.
"""

from __future__ import annotations

import argparse
import json
import sys

from agent.errors import BoxtelError, DataError

HELP = "GPS tools: decode a receiver capture"
EX_NOINPUT = 66  # sysexits: an input file did not exist or was not readable
READ_CHUNK = 1 << 16
# A capture has a sentence every ~80 bytes; a binary stretch (u-blox UBX between NMEA) is far shorter.
# Input this long without one is not NMEA: /dev/zero, a FIFO of noise, the wrong file. Stop, do not hang.
MAX_BYTES_WITHOUT_SENTENCE = 1 << 20

_COLUMNS = ("time", "fix", "lat", "lon", "alt_m", "sats", "speed_mps", "course_deg")
_WIDTHS = (24, 4, 11, 12, 8, 4, 9, 10)


class NoInputError(BoxtelError):
    exit_code = EX_NOINPUT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    decode = actions.add_parser("decode", help="print one record per epoch of an NMEA capture",
                                description="Print one record per epoch (time, fix, position, altitude, "
                                            "satellites, speed, course) of a capture of raw NMEA output.")
    decode.add_argument("file", metavar="FILE", help="raw receiver output (CRLF or LF)")
    decode.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    from drivers.gps import nmea

    stats = nmea.new_stats()
    try:
        with open(args.file, "rb") as handle:
            chunks = iter(lambda: handle.read(READ_CHUNK), b"")
            fixes = list(nmea.decode_stream(chunks, stats, max_gap_bytes=MAX_BYTES_WITHOUT_SENTENCE))
    except OSError as err:
        raise NoInputError(f"{args.file}: {err.strerror or err}") from None
    except nmea.NoSentences:
        raise DataError(f"{args.file}: no NMEA sentence in {MAX_BYTES_WITHOUT_SENTENCE // 2**20} MiB of input"
                        f"{_bad_checksums(stats)} (not a receiver capture?)") from None
    if not nmea.checked_count(stats):
        raise DataError(f"{args.file}: no NMEA sentences{_bad_checksums(stats)}")
    # gpsd reports no time before the capture gave a date (RMC or ZDA): such epochs are counted, not shown
    undated = sum(1 for fix in fixes if fix.time is None)
    records = _distinct([fix.record() for fix in fixes if fix.time is not None])
    try:
        _print(records, as_json=args.json)
    except BrokenPipeError:  # `| head`: the reader has seen enough
        sys.stderr.close()
        return 0
    with_fix = sum(1 for record in records if record["fix"] != nmea.FIX_NONE)
    rejected = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in stats.items()
                         if count and kind != nmea.SENTENCES_OK)
    print(f"{len(records)} epochs, {with_fix} with a fix, from {stats[nmea.SENTENCES_OK]} sentences"
          f"{f'; {undated} epochs before the first date (RMC/ZDA) not shown' if undated else ''}"
          f"{f'; {rejected}' if rejected else ''}", file=sys.stderr)
    return 0


def _bad_checksums(stats: dict[str, int]) -> str:
    from drivers.gps import nmea

    return f" ({stats[nmea.BAD_CHECKSUM]} with bad checksums)" if stats[nmea.BAD_CHECKSUM] else ""


def _distinct(records: list[dict]) -> list[dict]:
    """A receiver without a fix repeats the same empty epoch: show it once per run."""
    kept: list[dict] = []
    for record in records:
        if not kept or record != kept[-1]:
            kept.append(record)
    return kept


def _print(records: list[dict], *, as_json: bool) -> None:
    out = sys.stdout
    if as_json:
        for record in records:
            out.write(json.dumps(record) + "\n")
        return
    out.write(_row(_COLUMNS))
    for record in records:
        out.write(_row([_cell(record[name]) for name in _COLUMNS]))


def _row(cells: list[str] | tuple[str, ...]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, _WIDTHS, strict=True)).rstrip() + "\n"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.7f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:.1f}"
    return str(value)
