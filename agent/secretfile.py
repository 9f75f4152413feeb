"""Secret files (MQTT password, TLS private key): refused unless only the agent's own user can read them."""

from __future__ import annotations

import os
import stat

from agent.errors import ConfigError
from agent.serviceuser import Account, current


def check_secret_file(path: str, *, file: str, key: str, holds: str = "the secret",
                      owner: Account | None = None) -> None:
    """Raise ConfigError unless `path` is a non-empty regular file owned by `owner` (default: us) with
    no group/other access."""
    owner = owner or current()
    try:
        st = os.stat(path)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}", file=file, key=key) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is not a regular file", file=file, key=key)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} has mode {mode:04o}: a secret must not be accessible to group or others "
            f"(chmod 600 {path})",
            file=file,
            key=key,
        )
    if st.st_uid != owner.uid:
        raise ConfigError(
            f"{path} (mode {mode:04o}) is owned by uid {st.st_uid}{_name(st.st_uid)}, not by the agent's user "
            f"{owner.name} (uid {owner.uid}): chown {owner.name} {path}",
            file=file,
            key=key,
        )
    if st.st_size == 0:
        raise ConfigError(f"{path} is empty: it must hold {holds}", file=file, key=key)


def read_secret(path: str, *, file: str, key: str, owner: Account | None = None) -> str:
    check_secret_file(path, file=file, key=key, holds="the password", owner=owner)
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}", file=file, key=key) from None
    if not secret:
        raise ConfigError(f"{path} holds only line breaks: it must hold the password", file=file, key=key)
    return secret


def _name(uid: int) -> str:
    import pwd

    try:
        return f" ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return ""
