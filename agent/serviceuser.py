"""The user the service runs as: the agent's secrets must belong to it, so when root runs `check-config`
or `doctor` the files are judged for that user (the installed unit's `User=`, or `--user NAME`), not root.

Read from the unit file, not asked of systemd: it works before `daemon-reload`, in a chroot or a
container, and where systemd is not running.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from agent.errors import UsageError

UNIT = "boxtel.service"
# Where `make install` puts the unit (systemd/install.sh), then where a distribution package would.
UNIT_FILES = (f"/etc/systemd/system/{UNIT}", f"/usr/lib/systemd/system/{UNIT}", f"/lib/systemd/system/{UNIT}")


@dataclass(frozen=True)
class Account:
    name: str
    uid: int


def unit_user(unit_files: tuple[str, ...] | None = None) -> str | None:
    """`User=` of the first unit file that exists (default: `UNIT_FILES`), its drop-ins
    (`<unit>.d/*.conf`, in name order) applied; "root" when it sets none (systemd's default); None when
    no unit is installed."""
    for unit in map(Path, unit_files or UNIT_FILES):
        if not unit.is_file():
            continue
        user = "root"
        for path in [unit, *sorted(unit.with_name(unit.name + ".d").glob("*.conf"))]:
            user = _user_in(path, user)
        return user
    return None


def _user_in(path: Path, user: str) -> str:
    """The last `User=` of the [Service] section (systemd: the last assignment wins; empty resets)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return user
    section = ""
    for line in lines:
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service":
            key, sep, value = line.partition("=")
            if sep and key.strip() == "User":
                user = value.strip() or "root"
    return user


def current() -> Account:
    uid = os.geteuid()
    try:
        return Account(pwd.getpwuid(uid).pw_name, uid)
    except KeyError:
        return Account(str(uid), uid)


def secret_owner(user: str | None = None) -> Account:
    """Who must own the agent's secrets: `user` (`--user`), else as root the unit's `User=`, else us."""
    if user:
        try:
            return Account(user, pwd.getpwnam(user).pw_uid)
        except KeyError:
            raise UsageError(f"--user {user}: no such user") from None
    me = current()
    if me.uid != 0:
        return me
    name = unit_user()
    if not name or name == "root":
        return me
    try:
        return Account(name, pwd.getpwnam(name).pw_uid)
    except KeyError:  # the unit names a user that is not there yet: the service cannot start as it anyway
        return me
