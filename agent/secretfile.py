"""Secret files (MQTT password, TLS private key): refused unless only the agent's own user can read them."""

from __future__ import annotations

import os
import stat

from agent.errors import ConfigError


def check_secret_file(path: str, *, file: str, key: str) -> None:
    """Raise ConfigError unless `path` is a regular file owned by us with no group/other access."""
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
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"{path} (mode {mode:04o}) is owned by uid {st.st_uid}, not by the agent's user "
            f"(uid {os.geteuid()})",
            file=file,
            key=key,
        )


def read_secret(path: str, *, file: str, key: str) -> str:
    check_secret_file(path, file=file, key=key)
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}", file=file, key=key) from None
