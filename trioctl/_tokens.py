"""The tokens file: bearer tokens and the role each grants.

::

    {"tokens": [{"token": "...", "role": "admin", "name": "local"}, ...]}

The daemon reads it at start-up and again on SIGHUP; the command-line client
reads it to find a token (:func:`trioctl._client.find_token`). The daemon
refuses a file it cannot trust (:func:`read_tokens_file` with ``owner``):
one that is not a regular file, owned by another user, or writable by group
or others (that user's token would then work as admin). Parsing needs only the
standard library, so the client commands stay light.
"""

from __future__ import annotations

import errno
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Final

import attrs

from ._procedures import Role

__all__ = ["MAX_TOKENS_FILE", "ROLE_NAMES", "Tokens", "TokensFileError", "read_tokens_file"]

#: Bytes: a larger file is refused (a tokens file holds a few lines).
MAX_TOKENS_FILE: Final = 1024 * 1024
#: Role names, lowest first.
ROLE_NAMES: Final = ("read", "write", "admin")
_MIN_TOKEN_LENGTH: Final = 16


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message names the file and why."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"tokens file {path}: {why}")
        self.path = path
        self.why = why


def _read_bytes(path: Path, owner: int | None) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TokensFileError(path, "is a symbolic link; give the file itself") from None
        raise TokensFileError(path, f"cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokensFileError(path, "is not a regular file")
        if owner is not None:
            if info.st_uid != owner:
                raise TokensFileError(
                    path,
                    f"is owned by uid {info.st_uid}, not by the daemon's user (uid {owner}); "
                    f"chown it or give another file",
                )
            if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise TokensFileError(
                    path,
                    f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                    f"chmod 600 it",
                )
        if info.st_size > MAX_TOKENS_FILE:
            raise TokensFileError(path, f"is larger than {MAX_TOKENS_FILE} bytes")
        chunks = []
        remaining = MAX_TOKENS_FILE + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > MAX_TOKENS_FILE:
            raise TokensFileError(path, f"is larger than {MAX_TOKENS_FILE} bytes")
        return data
    except OSError as exc:
        raise TokensFileError(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_tokens_file(path: Path, *, owner: int | None = None) -> list[tuple[str, str]]:
    """The ``(token, role name)`` pairs of the tokens file at ``path``.

    ``owner``: the uid that must own the file, which must then not be
    writable by group or others (the daemon passes its own uid; the client,
    which only looks for a token, passes None).

    Raises:
        TokensFileError: naming the file and why it cannot be used.
    """
    data = _read_bytes(path, owner)
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: nested too deeply (a SIGHUP catches TokensFileError only).
        raise TokensFileError(path, f"not valid JSON: {exc}") from None
    entries = raw.get("tokens") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise TokensFileError(path, 'expected an object with a "tokens" list')
    found: list[tuple[str, str]] = []
    for i, entry in enumerate(entries):
        token = entry.get("token") if isinstance(entry, dict) else None
        role = entry.get("role") if isinstance(entry, dict) else None
        if not isinstance(token, str) or not isinstance(role, str):
            raise TokensFileError(path, f'tokens[{i}] needs a "token" and a "role"')
        if role.lower() not in ROLE_NAMES:
            raise TokensFileError(
                path, f"tokens[{i}]: role {role!r} is not one of {', '.join(ROLE_NAMES)}"
            )
        if len(token) < _MIN_TOKEN_LENGTH or token != token.strip():
            raise TokensFileError(
                path,
                f"tokens[{i}]: a token must be {_MIN_TOKEN_LENGTH} characters or more, "
                f"without surrounding spaces",
            )
        found.append((token, role.lower()))
    return found


@attrs.frozen
class Tokens:
    """Bearer tokens and the role each grants (the tokens file)."""

    roles: dict[str, Role]

    @classmethod
    def load(cls, path: Path, *, owner: int | None = None) -> Tokens:
        """Read the tokens file (see :func:`read_tokens_file`).

        Raises:
            TokensFileError: it cannot be used (the message names it and why).
        """
        return cls(
            {token: Role[role.upper()] for token, role in read_tokens_file(path, owner=owner)}
        )

    def role_for(self, token: str) -> Role | None:
        found = None
        for known, role in self.roles.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = role
        return found

    def admin_token(self) -> str | None:
        """The first admin token, if any."""
        return next((t for t, r in self.roles.items() if r is Role.ADMIN), None)
