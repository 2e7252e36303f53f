"""The OpenRPC document (``schemas/openrpc.json``, what ``rpc.discover``
answers) against the OpenRPC meta-schema.

The official meta-schema (open-rpc/meta-schema) is not available offline: no
package on the local index ships it. ``tests/data/openrpc-1.3-subset.schema.json``
is a faithful subset written from the OpenRPC 1.3.2 specification (the
objects trioctl emits, their required members, types, enums and the ``x-``
rule). On top of it this file checks what the meta-schema cannot: every
``$ref`` resolves, every schema is valid JSON Schema (draft 7, OpenRPC's),
and the document says what the procedure table says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest

from trioctl._errors import _BY_REASON
from trioctl._procedures import PROCEDURES
from trioctl._tools.gen_schemas import openrpc_document

ROOT = Path(__file__).resolve().parent.parent
META = json.loads((Path(__file__).parent / "data" / "openrpc-1.3-subset.schema.json").read_text())


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    doc = json.loads((ROOT / "schemas" / "openrpc.json").read_text())
    assert doc == openrpc_document()
    return doc  # type: ignore[no-any-return]


def test_valid_against_the_meta_schema(document: dict[str, Any]) -> None:
    jsonschema.Draft7Validator.check_schema(META)
    jsonschema.Draft7Validator(META).validate(document)


def test_the_meta_schema_subset_can_fail(document: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(document))
    del broken["methods"][0]["params"]
    broken["methods"][1]["errors"].append({"code": "x", "message": 1})
    errors = list(jsonschema.Draft7Validator(META).iter_errors(broken))
    assert errors


def _refs(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        found = [obj["$ref"]] if isinstance(obj.get("$ref"), str) else []
        return found + [r for value in obj.values() for r in _refs(value)]
    if isinstance(obj, list):
        return [r for value in obj for r in _refs(value)]
    return []


def test_every_ref_resolves_and_every_schema_is_valid(document: dict[str, Any]) -> None:
    for ref in _refs(document):
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            node = node[part]
    schemas = list(document["components"]["schemas"].values())
    for method in document["methods"]:
        schemas += [p["schema"] for p in method["params"]]
        if "result" in method:
            schemas.append(method["result"]["schema"])
    for schema in schemas:
        jsonschema.Draft7Validator.check_schema(schema)


def test_it_says_what_the_table_says(document: dict[str, Any]) -> None:
    methods = {m["name"]: m for m in document["methods"]}
    assert list(methods) == [p.name for p in PROCEDURES] + ["events.event"]
    for proc in PROCEDURES:
        method = methods[proc.name]
        # Params in table order: the order positional params follow.
        assert [p["name"] for p in method["params"]] == [f.name for f in attrs.fields(proc.params)]
        assert method["x-role"] == proc.role.name.lower()
        assert ("servers" in method) == (proc.endpoint == "admin")
    errors = document["components"]["errors"]
    for reason, cls in _BY_REASON.items():
        if reason != "INTERNAL_ERROR" or cls.__name__ == "InternalError":
            assert errors[reason]["code"] == cls.rpc_code
            assert errors[reason]["data"] == {"reason": reason}
    assert errors["LIMIT_EXCEEDED"]["code"] == -32600
    event = methods["events.event"]
    assert "result" not in event  # a notification
    assert [p["name"] for p in event["params"]] == [
        "domain",
        "kind",
        "detail",
        "timestamp",
        "data",
    ]
