"""QMP messages as QEMU 7.2 writes them, and its checks on requests (sans-I/O).

Wording, error classes and key order follow what ``qemu-system-x86_64`` 7.2
answers (QEMU's key order is its hash tables' order; the orders seen on the
wire are copied here): ``{"return": ..., "id": ...}`` but
``{"id": ..., "error": {"class": ..., "desc": ...}}``, and every message ends
with ``\\r\\n``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Final

import attrs

__all__ = [
    "QMP_VERSION",
    "ArgSpec",
    "QmpError",
    "Request",
    "check_arguments",
    "encode",
    "error_message",
    "event_message",
    "greeting",
    "parse_request",
    "request_id",
    "return_message",
]

#: What the simulator reports as its version (QEMU 7.2.0).
QMP_VERSION: Final[Mapping[str, Any]] = {
    "qemu": {"micro": 0, "minor": 2, "major": 7},
    "package": "trioctl-sim",
}

_NO_ID: Final = object()

#: QAPI type names used in QEMU's "Invalid parameter type" errors.
_TYPE_NAMES: Final = {
    "string": "string",
    "number": "number",
    "integer": "integer",
    "boolean": "boolean",
    "array": "array",
}


class QmpError(Exception):
    """A request fails with QMP error ``error_class`` and text ``desc``."""

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(f"{error_class}: {desc}")
        self.error_class = error_class
        self.desc = desc


@attrs.frozen
class Request:
    """A request that passed QMP's checks on its members."""

    name: str
    arguments: dict[str, Any]
    id: Any = _NO_ID

    @property
    def has_id(self) -> bool:
        return self.id is not _NO_ID


@attrs.frozen
class ArgSpec:
    """One argument a command takes."""

    type: str
    """``string``, ``number``, ``integer``, ``boolean`` or ``array``."""
    required: bool = False
    choices: tuple[str, ...] = ()
    """For strings: the accepted values (a QAPI enum)."""


def encode(message: Mapping[str, Any]) -> bytes:
    """One message on the wire, ``\\r\\n``-terminated like QEMU's."""
    return json.dumps(message, allow_nan=False).encode("ascii") + b"\r\n"


def greeting() -> dict[str, Any]:
    """The greeting a new connection gets."""
    return {"QMP": {"version": dict(QMP_VERSION), "capabilities": ["oob"]}}


def return_message(value: Any, request_id: Any = _NO_ID) -> dict[str, Any]:
    """``{"return": value}``, with the request's id after it when it had one."""
    message: dict[str, Any] = {"return": value}
    if request_id is not _NO_ID:
        message["id"] = request_id
    return message


def error_message(error_class: str, desc: str, request_id: Any = _NO_ID) -> dict[str, Any]:
    """``{"error": {...}}``, with the request's id *before* it, as QEMU does."""
    message: dict[str, Any] = {}
    if request_id is not _NO_ID:
        message["id"] = request_id
    message["error"] = {"class": error_class, "desc": desc}
    return message


def event_message(
    name: str, data: Mapping[str, Any] | None = None, now: float | None = None
) -> dict[str, Any]:
    """An event stamped with the wall clock (or ``now``)."""
    stamp = time.time() if now is None else now
    seconds = int(stamp)
    message: dict[str, Any] = {
        "timestamp": {"seconds": seconds, "microseconds": int((stamp - seconds) * 1_000_000)},
        "event": name,
    }
    if data is not None:
        message["data"] = dict(data)
    return message


def request_id(value: Any) -> Any:
    """The id of an input object, or the no-id marker: error replies to any
    object carry its id, even when the object was rejected."""
    if isinstance(value, dict) and "id" in value:
        return value["id"]
    return _NO_ID


def parse_request(value: Any) -> Request:
    """Check one input value's members the way QEMU's dispatcher does.

    Raises:
        QmpError: ``GenericError`` naming the first problem.
    """
    if not isinstance(value, dict):
        raise QmpError("GenericError", "QMP input must be a JSON object")
    for key, member in value.items():
        if key == "execute":
            if not isinstance(member, str):
                raise QmpError("GenericError", "QMP input member 'execute' must be a string")
        elif key == "arguments":
            if not isinstance(member, dict):
                raise QmpError("GenericError", "QMP input member 'arguments' must be an object")
        elif key != "id":
            # exec-oob is refused too: the simulator has no out-of-band commands.
            raise QmpError("GenericError", f"QMP input member '{key}' is unexpected")
    if "execute" not in value:
        raise QmpError("GenericError", "QMP input lacks member 'execute'")
    return Request(
        name=value["execute"],
        arguments=value.get("arguments", {}),
        id=value.get("id", _NO_ID),
    )


def check_arguments(arguments: Mapping[str, Any], spec: Mapping[str, ArgSpec]) -> None:
    """Check a command's arguments against ``spec`` with QEMU's wording.

    Raises:
        QmpError: ``GenericError`` for an unexpected, missing, mistyped or
            out-of-enum argument.
    """
    for name in arguments:
        if name not in spec:
            raise QmpError("GenericError", f"Parameter '{name}' is unexpected")
    for name, arg in spec.items():
        if name not in arguments:
            if arg.required:
                raise QmpError("GenericError", f"Parameter '{name}' is missing")
            continue
        value = arguments[name]
        if not _has_type(value, arg.type):
            raise QmpError(
                "GenericError",
                f"Invalid parameter type for '{name}', expected: {_TYPE_NAMES[arg.type]}",
            )
        if arg.choices and value not in arg.choices:
            raise QmpError("GenericError", f"Parameter '{name}' does not accept value '{value}'")


def _has_type(value: Any, type_name: str) -> bool:
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "boolean":
        return isinstance(value, bool)
    if type_name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_name == "array":
        return isinstance(value, list)
    raise ValueError(f"unknown argument type {type_name!r}")
