"""The chrony feed: GPS time into the system clock, through chrony's SOCK refclock.

A Pi has no RTC and the field often has no NTP; chrony (on every Pi OS image) disciplines the clock from
whatever reference it trusts. With `refclock SOCK /run/chrony.boxtel.sock refid GPS ...` in chrony.conf,
chronyd listens on that datagram socket, and this module sends it one `struct sock_sample`
(refclock_sock.c) per trusted fix: the system time at which the fix arrived and how far GPS time was
from it. chrony filters, selects and steers the clock; the agent never sets it (ProtectClock=yes).

- A missing socket (chrony not running, or not configured yet) costs a counter and a quiet retry with
  the next fix, never the driver's thread.
- `ChronySources` asks chrony (`chronyc -n -c sources`: a short-lived process in a short-lived thread,
  every 10 s until chrony selected GPS, then every minute) whether it uses the GPS refclock, for health;
  `boxtel doctor` asks the same way (`query`).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
import socket
import threading
import time

from agent.untrusted import printable

log = logging.getLogger("boxtel.gps")

SOCK_MAGIC = 0x534F434B  # "SOCK"
REFID = "GPS"  # the refid docs/deploy.md gives the refclock line; how chronyc names the source
QUERY_EVERY_S = 60.0  # chrony's view changes over minutes (its filter spans 16 s polls)
QUERY_SOON_S = 10.0  # until chrony selects GPS (just started, or lost it): health follows it closer
QUERY_TIMEOUT_S = 3.0
# chrony's source states (chronyc -c sources, second field) in our words
SELECTED, COMBINED, NOT_SELECTED, UNREACHABLE, NOT_CONFIGURED = (
    "selected", "combined", "not_selected", "unreachable", "not_configured")
_STATES = {"*": SELECTED, "+": COMBINED}


def time_t_type(pointer_bytes: int | None = None, python_time_t: int | None = None) -> type[ctypes._SimpleCData]:
    """A C integer as wide as the platform's time_t, the type chronyd was built with.

    64-bit Linux: 8 bytes. 32-bit ARM (armhf): 4 bytes on Debian 12 and Raspberry Pi OS bookworm,
    8 bytes from Debian 13 on (the 64-bit time_t transition); the Python of the same release is built
    the same way, so its SIZEOF_TIME_T says which (read only on 32-bit, where it is in doubt)."""
    if (pointer_bytes or ctypes.sizeof(ctypes.c_void_p)) == 8:
        return ctypes.c_int64
    if python_time_t is None:
        import sysconfig

        python_time_t = sysconfig.get_config_var("SIZEOF_TIME_T")
    return ctypes.c_int64 if python_time_t == 8 else ctypes.c_int32


def sample_layout(time_t: type[ctypes._SimpleCData]) -> type[ctypes.Structure]:
    """chrony's struct sock_sample (refclock_sock.c) for a time_t of that type, with the C compiler's
    native layout and alignment: 40 bytes where time_t is 64 bits, 32 where it is 32. chronyd drops a
    datagram of any other length."""

    class Timeval(ctypes.Structure):
        # glibc's struct timeval: tv_usec has time_t's width too (suseconds_t, or __suseconds64_t)
        _fields_ = [("tv_sec", time_t), ("tv_usec", time_t)]

    class SockSample(ctypes.Structure):
        _fields_ = [
            ("tv", Timeval),  # system time of the measurement
            ("offset", ctypes.c_double),  # true time minus system time, seconds
            ("pulse", ctypes.c_int),  # 0: a full time, not a PPS edge
            ("leap", ctypes.c_int),  # 0: no leap second announced (NMEA does not carry one)
            ("_pad", ctypes.c_int),
            ("magic", ctypes.c_int),
        ]

    return SockSample


SockSample = sample_layout(time_t_type())


def encode_sample(system_s: float, offset_s: float) -> bytes:
    """One sample: at system time `system_s` the true (GPS) time was `system_s + offset_s`."""
    if not (math.isfinite(system_s) and math.isfinite(offset_s)):
        raise ValueError("a chrony sample needs finite times")
    seconds = math.floor(system_s)
    micros = min(int((system_s - seconds) * 1e6), 999_999)
    sample = SockSample(offset=offset_s, pulse=0, leap=0, _pad=0, magic=SOCK_MAGIC)
    sample.tv.tv_sec, sample.tv.tv_usec = seconds, micros
    return bytes(sample)


class ChronyFeed:
    """Sends chrony one sample per trusted fix. Never raises: failures are counted and shown."""

    def __init__(self, path: str):
        self.path = path
        self.samples = 0  # sent
        self.errors = 0  # not sent: socket missing, refused, full
        self.last_error: str | None = None
        self._sock: socket.socket | None = None

    def send(self, gps_epoch_s: float, mono_at_receipt: float) -> bool:
        """GPS said `gps_epoch_s` when the fix arrived at `mono_at_receipt` (time.monotonic())."""
        system_s = time.time() - (time.monotonic() - mono_at_receipt)
        try:
            sample = encode_sample(system_s, gps_epoch_s - system_s)
        except (ValueError, OverflowError) as err:
            return self._failed(str(err))
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # a stuck chronyd must not hold the GPS thread
            self._sock.sendto(sample, self.path)
        except OSError as err:
            return self._failed(_why(err, self.path))
        if self.last_error is not None:
            log.info("chrony takes GPS samples again on %s", self.path)
        self.samples += 1
        self.last_error = None
        return True

    def _failed(self, reason: str) -> bool:
        if reason != self.last_error:
            log.warning("GPS sample not sent to chrony: %s (retried with every fix)", reason)
        self.errors += 1
        self.last_error = reason
        return False

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _why(err: OSError, path: str) -> str:
    if err.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return f"nothing listens on {path} (chronyd not running, or no `refclock SOCK {path}` in chrony.conf)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied (the socket must be writable by the agent's user, see docs/deploy.md)"
    if err.errno in (errno.EAGAIN, errno.ENOBUFS):
        return f"{path}: chronyd is not reading its samples"
    return f"{path}: {os.strerror(err.errno) if err.errno else err}"


class ChronySources:
    """What chrony makes of the GPS refclock, asked now and then through chronyc."""

    def __init__(self, command_socket: str):
        self.command_socket = command_socket
        self.state: str | None = None  # None: chrony could not be asked
        self.reach: int | None = None
        self.error: str | None = None
        self._next = 0.0
        self._asking: threading.Thread | None = None

    def poll(self, mono: float) -> None:
        """Ask chrony if it is time to. The question runs in a thread of its own, briefly: the GPS
        thread must not wait for chronyc (up to QUERY_TIMEOUT_S), or the next epoch would be stamped late."""
        if mono < self._next or (self._asking is not None and self._asking.is_alive()):
            return
        self._next = mono + QUERY_SOON_S
        self._asking = threading.Thread(target=self._ask, name="gps-chrony-query", daemon=True)
        self._asking.start()

    def _ask(self) -> None:
        state, reach, error = query(self.command_socket)
        self.state, self.reach, self.error = state, reach, error
        if state == SELECTED:
            self._next = time.monotonic() + QUERY_EVERY_S


def query(command_socket: str, timeout_s: float = QUERY_TIMEOUT_S) -> tuple[str | None, int | None, str | None]:
    """(state of the GPS refclock, its reach register, why chrony could not be asked)."""
    import shutil  # only here, as subprocess: the feed alone needs neither

    chronyc = shutil.which("chronyc") or ("/usr/bin/chronyc" if os.access("/usr/bin/chronyc", os.X_OK) else None)
    if chronyc is None:
        return None, None, "chronyc not installed"
    import subprocess

    # chronyc binds its reply socket beside chronyd's; where the agent may not (the service user and
    # /run/chrony), chrony's command port on loopback answers `sources` without privileges.
    hosts = f"{command_socket},127.0.0.1" if command_socket.startswith("/") else command_socket
    try:
        done = subprocess.run([chronyc, "-n", "-c", "-h", hosts, "sources"], capture_output=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        return None, None, f"chronyc: {err}"
    if done.returncode != 0:
        text = done.stderr.decode("ascii", "replace").strip().splitlines()
        return None, None, (printable(text[0], 120) if text else f"chronyc exited {done.returncode}")
    return parse_sources(done.stdout)


def parse_sources(output: bytes) -> tuple[str | None, int | None, str | None]:
    """`chronyc -c sources` CSV -> the GPS refclock's (state, reach, None)."""
    for line in output.decode("ascii", "replace").splitlines()[:256]:
        fields = line.split(",")
        if len(fields) < 6 or fields[0] != "#" or fields[2] != REFID:
            continue
        try:
            reach = int(fields[5], 8)  # an octal register: the last 8 polls, 377 all answered
        except ValueError:
            continue
        reach &= 0o377
        state = _STATES.get(fields[1], NOT_SELECTED if reach else UNREACHABLE)
        return state, reach, None
    return NOT_CONFIGURED, None, None
