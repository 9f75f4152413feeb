"""`boxtel gps decode FILE [--json]`: what a receiver said, epoch by epoch, from a capture.

A capture is raw receiver output saved to a file (`cat /dev/ttyUSB0 > capture.nmea`, gpsd's logs; CRLF
or LF). It is decoded by the same code the GPS driver runs, so a technician sees what the agent would.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator

from agent.errors import BoxtelError, DataError

HELP = "GPS tools: decode a receiver capture"
EX_NOINPUT = 66  # sysexits: an input file did not exist or was not readable
READ_CHUNK = 1 << 16
# A capture has a sentence every ~80 bytes; a binary stretch (u-blox UBX between NMEA) is far shorter.
# Input this long without one is not NMEA: /dev/zero, a FIFO of noise, the wrong file. Stop, do not hang.
MAX_BYTES_WITHOUT_SENTENCE = 1 << 20
HEAD_KEPT = 1 << 18  # a receiver gives a date within seconds: far less than this of its output

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
    head = bytearray()  # the start of the capture, where the epochs before its first date are

    def chunks(handle) -> Iterator[bytes]:
        for chunk in iter(lambda: handle.read(READ_CHUNK), b""):
            if len(head) < HEAD_KEPT:
                head.extend(chunk[:HEAD_KEPT - len(head)])
            yield chunk

    try:
        with open(args.file, "rb") as handle:
            fixes = list(nmea.decode_stream(chunks(handle), stats, max_gap_bytes=MAX_BYTES_WITHOUT_SENTENCE))
    except OSError as err:
        raise NoInputError(f"{args.file}: {err.strerror or err}") from None
    except nmea.NoSentences:
        raise DataError(f"{args.file}: no NMEA sentence in {MAX_BYTES_WITHOUT_SENTENCE // 2**20} MiB of input"
                        f"{_bad_checksums(stats)} (not a receiver capture?)") from None
    if not nmea.checked_count(stats):
        raise DataError(f"{args.file}: no NMEA sentences{_bad_checksums(stats)}")
    dated = [fix for fix in fixes if fix.time is not None]
    records = _distinct([fix.record() for fix in dated])
    try:
        _print(records, as_json=args.json)
    except BrokenPipeError:  # `| head`: the reader has seen enough
        sys.stderr.close()
        return 0
    instants = {fix.time for fix in dated}
    with_fix = len({fix.time for fix in dated if fix.fix != nmea.FIX_NONE})
    undated = _undated_instants(bytes(head), {time[11:23] for time in instants})
    rejected = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in stats.items()
                         if count and kind != nmea.SENTENCES_OK)
    notes = [f"{_count(len(instants) + undated, 'epoch')}, {with_fix} with a fix, "
             f"from {stats[nmea.SENTENCES_OK]} sentences"]
    if len(records) != len(instants):  # an epoch the receiver reported in parts (gpsd does the same)
        notes.append(f"shown in {_count(len(records), 'row')}")
    if undated:
        notes.append(f"{_count(undated, 'epoch')} before the first date (RMC/ZDA) not shown")
    if rejected:
        notes.append(rejected)
    print("; ".join(notes), file=sys.stderr)
    return 0


# A sentence's time of day (GLL has it in field 5) and whether it dates the capture (RMC, ZDA).
_TIMED = re.compile(rb"^\$[A-Z]{2}(?:(GGA|GNS|RMC|ZDA),(\d{6}(?:\.\d+)?)|GLL,[^,\r\n]*,[^,\r\n]*,[^,\r\n]*,"
                    rb"[^,\r\n]*,(\d{6}(?:\.\d+)?))([^\r\n]*)", re.M)


def _undated_instants(data: bytes, shown: set[str]) -> int:
    """Instants the receiver stamped before it first gave a date that no shown record has. gpsd gives an
    epoch no time until a date is known, so the first instant often appears twice in the decoder's output:
    once undated (its GGA), once dated (its RMC); only the instants never dated are missing."""
    undated: set[str] = set()
    for match in _TIMED.finditer(data):
        kind, clock, gll_clock, rest = match.groups()
        fields = rest.split(b",")
        # a void RMC (status V) dates nothing, for gpsd as for the decoder
        dates = (kind == b"RMC" and len(fields) > 8 and fields[1] == b"A" and len(fields[8]) == 6) or \
                (kind == b"ZDA" and len(fields) > 3 and all(fields[1:4]))
        if dates:
            break
        text = (clock or gll_clock).decode()
        undated.add(f"{text[0:2]}:{text[2:4]}:{float(text[4:]):06.3f}")
    return len(undated - shown)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


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
