"""Settings fields: the metadata that makes a runtime settings class a table
of the daemon's TOML file, and the checks of its values.

A field with ``metadata=setting(check, help)`` is a key: ``help`` is its
comment in ``--print-config`` and ``docs/configuration.md``, ``check(raw,
base)`` reads a raw TOML (or command-line) value into the field's value or
raises :class:`Invalid` with the reason; ``base`` is the directory relative
paths are taken from (None: the current directory). The runtime classes
(:class:`~trioctl._driver.DriverConfig`, :class:`~trioctl._pools.PoolLimits`
and the tables of :mod:`trioctl._config`) carry these; :mod:`trioctl._config`
structures them with one cattrs converter. This module imports nothing of
trioctl, so any module can declare settings.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

Check = Callable[[object, "Path | None"], Any]
SETTING: Final = "trioctl.setting"


class Invalid(Exception):
    """A check's refusal; the loader adds the file and the key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class Setting:
    check: Check
    help: str
    textual: bool = False
    """The value is a string in TOML: a string override is taken as it is,
    never parsed as a TOML literal."""
    none: str = '""'
    """How ``None`` is written in TOML."""


def setting(check: Check, help: str, *, textual: bool = False, none: str = '""') -> dict[str, Any]:
    """The metadata of a settings field."""
    return {SETTING: Setting(check, help, textual=textual, none=none)}


def setting_of(field: attrs.Attribute[Any]) -> Setting | None:
    """The field's :class:`Setting`, or None when it is not a key."""
    found = field.metadata.get(SETTING)
    return found if isinstance(found, Setting) else None


def show(value: object) -> str:
    """A value as an error message quotes it (TOML spelling where possible)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | os.PathLike):
        return json.dumps(os.fsdecode(value), ensure_ascii=False)
    if isinstance(value, int | float):
        try:
            return repr(value)
        except ValueError:  # an integer beyond Python's 4300-digit string limit
            return "a huge integer"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return "None" if value is None else f"{type(value).__name__} {value!s}"


def integer(minimum: int) -> Check:
    wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}"
    )

    def check(value: object, _base: Path | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise Invalid(f"expected {wanted}, got {show(value)}")
        return value

    return check


def seconds(*, zero: bool = False, forever: bool = False) -> Check:
    """A finite number of seconds, > 0 (``zero``: >= 0); ``forever``: or false (None)."""
    wanted = ("a non-negative number" if zero else "a positive number") + (
        " or false" if forever else ""
    )

    def check(value: object, _base: Path | None) -> float | None:
        if forever and (value is False or value is None):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected {wanted}, got {show(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise Invalid(f"expected {wanted}, got {show(value)}") from None
        if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
            raise Invalid(f"expected {wanted}, got {show(value)}")
        return number

    return check


def boolean(value: object, _base: Path | None) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {show(value)}")
    return value


def choice(*options: str) -> Check:
    wanted = ", ".join(json.dumps(o) for o in options)

    def check(value: object, _base: Path | None) -> str:
        if not isinstance(value, str) or value not in options:
            raise Invalid(f"expected one of {wanted}, got {show(value)}")
        return value

    return check


def path(*, optional: bool = False) -> Check:
    """A path string, ``~`` expanded, made absolute; ``optional``: "" is None."""

    def check(value: object, base: Path | None) -> Path | None:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise Invalid(f"expected a path string, got {show(value)}")
        if not value:
            if optional:
                return None
            raise Invalid("expected a path, got an empty string")
        if "\0" in value:
            raise Invalid(f"a path cannot contain NUL, got {show(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Invalid(f"the path is not valid UTF-8: {value!r}") from None
        expanded = os.path.expanduser(value)
        if expanded.startswith("~"):
            raise Invalid(f"cannot expand {show(value)}: unknown user or no home directory")
        try:
            return Path(os.path.abspath(os.path.join(base or "", expanded)))
        except OSError as exc:  # the current directory is gone
            raise Invalid(f"cannot make {show(value)} absolute: {exc.strerror}") from None

    return check


_EMULATOR_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}", re.ASCII)
_MACHINE_PATTERN_RE: Final = re.compile(r"[a-z0-9*][a-z0-9._*-]{0,63}", re.ASCII)
_ACCOUNT_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?", re.ASCII)


def emulators(value: object, base: Path | None) -> dict[str, str]:
    """name = absolute path of an executable file."""
    if not isinstance(value, Mapping):
        raise Invalid(f"expected a table of name = path, got {show(value)}")
    table: dict[str, str] = {}
    for name, file in value.items():
        if not isinstance(name, str) or not _EMULATOR_NAME_RE.fullmatch(name):
            raise Invalid(
                f"emulator name {show(name)}: expected a lower-case letter, then up to 31 "
                "lower-case letters, digits, '_' or '-'"
            )
        if name == "sim":
            raise Invalid('"sim" is the built-in simulator and cannot be replaced')
        if not isinstance(file, str) or not os.path.isabs(file):
            raise Invalid(f"emulator {name}: expected an absolute path, got {show(file)}")
        checked = path()(file, base)
        if not (checked.is_file() and os.access(checked, os.X_OK)):
            raise Invalid(f"emulator {name}: {show(file)} is not an executable file")
        table[name] = str(checked)
    return dict(sorted(table.items()))


def machines(value: object, _base: Path | None) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"expected an array of machine type names, got {show(value)}")
    for item in value:
        if not _MACHINE_PATTERN_RE.fullmatch(item):
            raise Invalid(
                f"machine type {show(item)}: expected lower-case letters, digits, '.', '_', "
                "'-' and '*' (no ',' or '=')"
            )
    return tuple(value)


def storage_dirs(value: object, base: Path | None) -> tuple[Path, ...]:
    if not isinstance(value, list | tuple):
        raise Invalid(f"expected an array of directory paths, got {show(value)}")
    dirs = tuple(path()(item, base) for item in value)
    if Path("/") in dirs:
        raise Invalid('"/" would allow every file on the host; name storage directories')
    return dirs


def account(value: object, _base: Path | None) -> str:
    """A user name, or "" (checked to exist when the daemon starts as root)."""
    if not isinstance(value, str) or (value and not _ACCOUNT_RE.fullmatch(value)):
        raise Invalid(f"expected a user name, got {show(value)}")
    return value
