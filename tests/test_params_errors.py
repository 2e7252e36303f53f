"""Invalid parameters are reported in words, every bad field at once.

``structure`` (the server's params check, and the store's) says "expected a
list of strings" rather than cattrs' "expected tuple", suggests the closest
key for an unknown one (as the configuration file does), and reports every
invalid field, whether its type is wrong or its validator refuses it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, strategies as st

from trioctl._errors import InvalidParams
from trioctl._models import DomainDefinition, structure
from trioctl._procedures import PROCEDURES


def errors_of(data: Any, cls: type = DomainDefinition) -> list[str]:
    with pytest.raises(InvalidParams) as caught:
        structure(data, cls)
    errors: list[str] = caught.value.data["errors"]
    assert caught.value.message.endswith("; ".join(errors))
    return errors


def test_extra_args_as_a_string() -> None:
    assert errors_of({"name": "a", "extra_args": "-S"}) == [
        "expected a list of strings, got str @ $.extra_args"
    ]


def test_scalars_in_words() -> None:
    assert errors_of({"name": 5}) == ["expected a string, got int @ $.name"]
    assert errors_of({"name": "a", "vcpus": "2"}) == ["expected an integer, got str @ $.vcpus"]
    assert errors_of({"name": "a", "autostart": 1}) == ["expected a boolean, got int @ $.autostart"]


def test_unknown_key_did_you_mean() -> None:
    assert errors_of({"name": "a", "memry_mib": 64}) == [
        "unknown key 'memry_mib'; did you mean 'memory_mib'? @ $"
    ]
    (far,) = errors_of({"name": "a", "zzzz": 1})
    assert far.startswith("unknown key 'zzzz' (known: name, uuid, memory_mib")


def test_every_invalid_field_is_reported_nested() -> None:
    proc = PROCEDURES.get("domain.define")
    assert proc is not None
    params = proc.params
    definition = {
        "name": "a",
        "nmae": "b",
        "uuid": "x",
        "memory_mib": 0,
        "vcpus": 999,
        "extra_args": "-S",
    }
    errors = errors_of({"definition": definition}, params)
    assert sorted(errors) == sorted(
        [
            "unknown key 'nmae'; did you mean 'name'? @ $.definition",
            "'uuid' is not a UUID: 'x' @ $.definition.uuid",
            "'memory_mib' must be >= 1: 0 @ $.definition.memory_mib",
            "'vcpus' must be <= 255: 999 @ $.definition.vcpus",
            "expected a list of strings, got str @ $.definition.extra_args",
        ]
    )


#: Field -> (a bad value, what its error says). Type errors and validator
#: refusals mixed: both must be reported together.
BAD: dict[str, tuple[Any, str]] = {
    "name": ("", "'name'"),
    "uuid": (7, "expected a string"),
    "memory_mib": (-1, "'memory_mib' must be >= 1"),
    "vcpus": ("two", "expected an integer"),
    "machine": ("", "'machine'"),
    "extra_args": ("-S", "expected a list of strings"),
    "autostart": ("yes", "expected a boolean"),
}


@given(st.sets(st.sampled_from(sorted(BAD)), min_size=1))
def test_any_set_of_invalid_fields_is_reported_whole(bad: set[str]) -> None:
    data: dict[str, Any] = {"name": "ok"}
    data.update({field: BAD[field][0] for field in bad})
    errors = errors_of(data)
    assert len(errors) == len(bad), errors
    for field in bad:
        (line,) = [e for e in errors if e.endswith(f"@ $.{field}")]
        assert BAD[field][1] in line
