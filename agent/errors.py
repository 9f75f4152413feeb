"""Exit codes (sysexits.h) and the errors that map onto them.

Every user-facing failure is one of these exceptions; the CLI turns it into a single line on stderr
and the matching exit code, never a traceback.
"""

EX_OK = 0
EX_USAGE = 64  # bad command line
EX_DATAERR = 65  # bad input data (e.g. a capture with no NMEA)
EX_UNAVAILABLE = 69  # a service we need is not there (no agent running, broker unreachable)
EX_SOFTWARE = 70  # internal error: a bug, reported with a traceback in the log
EX_TEMPFAIL = 75  # try again later (another agent holds the state dir)
EX_CONFIG = 78  # configuration error

# Invisible format characters (of Unicode's Cf): zero-width spaces and joiners, bidi marks, embeddings,
# overrides and isolates, the word joiner and BOM. Pasted from a chat app into box.id they make a client
# id and topic that look right and are not; in a log line they reorder what a technician reads.
_INVISIBLE = ((0x061C, 0x061C), (0x180E, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064),
              (0x2066, 0x206F), (0xFEFF, 0xFEFF))


def unsafe_char(char: str) -> bool:
    """Unicode's control characters (category Cc: C0, DEL, C1), line and paragraph separators (Zl, Zp),
    lone surrogates (Cs) and the invisible format characters above: in a topic, client id, payload or log
    line they forge lines and confuse terminals and tools. Spelled out, so the daemon need not load
    unicodedata."""
    code = ord(char)
    return (code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029) or 0xD800 <= code <= 0xDFFF
            or (0x061C <= code <= 0xFEFF and any(low <= code <= high for low, high in _INVISIBLE)))


def one_line(text: str) -> str:
    """`text` with control characters and line breaks escaped (\\n, \\x1b, \\u2028): one error is one line,
    and a value from a hostile file cannot forge a log or terminal line."""
    if text.isprintable():
        return text
    return "".join(char.encode("unicode_escape").decode("ascii") if unsafe_char(char) else char for char in text)


class BoxtelError(Exception):
    """An error the user can act on; `str()` is the whole message."""

    exit_code = EX_SOFTWARE


class ConfigError(BoxtelError):
    """A problem in the config file, reported as `FILE: KEY.PATH: what is wrong`."""

    exit_code = EX_CONFIG

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        self.detail = message
        super().__init__(message)

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        return one_line(": ".join([*parts, self.detail]))


class DataError(BoxtelError):
    exit_code = EX_DATAERR


class UnavailableError(BoxtelError):
    exit_code = EX_UNAVAILABLE


class UsageError(BoxtelError):
    exit_code = EX_USAGE


class TempFailError(BoxtelError):
    exit_code = EX_TEMPFAIL
