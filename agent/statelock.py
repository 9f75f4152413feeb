"""One agent per state dir: an flock on `agent.lock` in it, held for the agent's whole life.

Two agents on one state dir would write the same outbox and knock each other off the broker (same
client id). The kernel releases an flock when its holder dies, SIGKILL and OOM included, so a lock is
never stale; the pid written into the file only names the holder for the message.

`boxtel status` and `doctor` ask the same lock whether an agent is there when its control socket does
not answer: they take a shared lock for an instant, which fails while the agent holds its exclusive
one. The agent retries briefly at start so such a probe never keeps it from starting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from agent.errors import TempFailError

LOCK_FILE = "agent.lock"
_START_PATIENCE_S = 0.5  # outlasts a status probe's instant shared lock; well within "refused within 1 s"


class StateLock:
    """The agent's hold on its state dir; `release()` (or process exit) lets the next agent start."""

    def __init__(self, fd: int, path: Path):
        self._fd = fd
        self.path = path

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = -1


def acquire(state_dir: Path) -> StateLock:
    """Take the state dir for this process, or raise TempFailError (exit 75) naming who holds it.
    OSError when there is no lock file and none can be made (a read-only state dir)."""
    path = state_dir / LOCK_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        writable = True
    except OSError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # an flock needs no write access; the pid does
        writable = False
    deadline = time.monotonic() + _START_PATIENCE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                pid = _read_pid(fd)
                os.close(fd)
                who = f"pid {pid}" if pid else "another process"
                raise TempFailError(
                    f"another boxtel agent ({who}) holds the state dir {state_dir}: stop it first "
                    "(systemctl stop boxtel), or give this one its own box.state_dir"
                ) from None
            time.sleep(0.05)
        except OSError:
            os.close(fd)
            raise
    if writable:
        with contextlib.suppress(OSError):  # a full disk: the lock holds, only the pid is not named
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(fd, path)


def holder(state_dir: Path) -> int | None:
    """The pid of the agent holding `state_dir` (0 if it wrote none), or None when nobody holds it.
    Raises OSError (EACCES: a state dir only the agent's user may read) when it cannot tell."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # no agent ever ran here (a running one keeps the file)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(os.pread(fd, 32, 0).split()[0])
    return 0
