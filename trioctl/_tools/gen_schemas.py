"""Generate ``schemas/`` and ``docs/procedures.md`` from the procedure table.

Usage::

    python -m trioctl._tools.gen_schemas          # write the files
    python -m trioctl._tools.gen_schemas --check  # exit 1 if any is stale (CI)

Each procedure gets ``schemas/NAME.params.json`` and ``schemas/NAME.result.json``
(JSON Schema draft 2020-12); the domain definition gets
``schemas/domain.json``; the whole table, with errors and the
``events.event`` notification, is ``schemas/openrpc.json`` (OpenRPC 1.3,
what ``rpc.discover`` answers). Field descriptions come from the attribute
docstrings of the attrs classes.
"""

from __future__ import annotations

import argparse
import ast
import enum
import functools
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Final, Union

import attrs

from .._errors import _BY_REASON, TrioctlError
from .._models import SCHEMA, DomainDefinition, DomainEvent
from .._procedures import PROCEDURES, PROTOCOL_VERSION, Procedure
from .._version import __version__

ROOT: Final = Path(__file__).resolve().parents[2]
DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"

_BOUNDS: Final = {
    ">=": "minimum",
    "<=": "maximum",
    ">": "exclusiveMinimum",
    "<": "exclusiveMaximum",
}


def _validators(validator: Any) -> list[Any]:
    """``validator`` as a flat list (attrs makes a list of them one ``and_``)."""
    if validator is None:
        return []
    inner = getattr(validator, "_validators", None)
    if type(validator).__name__ == "_AndValidator" and inner is not None:
        return [v for each in inner for v in _validators(each)]
    return [validator]


def constraints(cls: type, field: attrs.Attribute[Any], prop: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema constraints of ``field``'s validators: attrs' own
    (``ge``, ``le``, ``lt``, ``gt``, ``max_len``, ``min_len``) read from the
    validator, any other from the field's ``metadata[SCHEMA]``, written next
    to it in the model.

    Raises:
        TypeError: a field has a validator the schema would not state.
    """
    out: dict[str, Any] = {}
    unstated = []
    for validator in _validators(field.validator):
        kind = type(validator).__name__
        if kind == "_NumberValidator" and validator.compare_op in _BOUNDS:
            out[_BOUNDS[validator.compare_op]] = validator.bound
        elif kind in ("_MaxLengthValidator", "_MinLengthValidator"):
            limit = "max" if kind.startswith("_Max") else "min"
            unit = "Items" if prop.get("type") == "array" else "Length"
            out[f"{limit}{unit}"] = getattr(validator, f"{limit}_length")
        else:
            unstated.append(validator)
    if unstated and SCHEMA not in field.metadata:
        raise TypeError(
            f"{cls.__name__}.{field.name}: validator {unstated[0]!r} has no JSON Schema: "
            f"add metadata={{SCHEMA: ...}} next to it"
        )
    for key, value in field.metadata.get(SCHEMA, {}).items():
        if key == "items":
            out[key] = {**prop.get("items", {}), **value}
        else:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right after a field) of ``cls``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in zip(body, [*body[1:], None], strict=True):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def schema_for(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of type ``tp``; attrs classes go to ``defs``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return {}
    if tp is type(None):
        return {"type": "null"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if origin in (Union, types.UnionType):
        return {"anyOf": [schema_for(arg, defs) for arg in typing.get_args(tp)]}
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return {"type": "array", "items": schema_for(args[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": schema_for(typing.get_args(tp)[1], defs)}
    if attrs.has(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            defs[name] = object_schema(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"no JSON Schema for {tp!r}")


def object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        prop = schema_for(hints[field.name], defs)
        prop.update(constraints(cls, field, prop))
        if field.name in docs:
            prop["description"] = docs[field.name]
        if field.default is attrs.NOTHING:
            required.append(field.name)
        elif not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            default = field.default
            prop["default"] = (
                default.value
                if isinstance(default, enum.Enum)
                else (list(default) if isinstance(default, tuple) else default)
            )
        properties[field.name] = prop
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    doc = inspect.getdoc(cls)
    if doc and not doc.startswith(f"{cls.__name__}("):
        schema["description"] = " ".join(doc.split())
    return schema


def document(title: str, tp: Any, description: str = "") -> dict[str, Any]:
    defs: dict[str, Any] = {}
    body = schema_for(tp, defs)
    schema: dict[str, Any] = {"$schema": DRAFT, "title": title}
    if description:
        schema["description"] = description
    if "$ref" in body and len(defs) >= 1:
        # Inline the top-level object, keep the rest in $defs.
        name = body["$ref"].rsplit("/", 1)[1]
        schema.update(defs.pop(name))
    else:
        schema.update(body)
    if defs:
        schema["$defs"] = dict(sorted(defs.items()))
    return schema


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def generate() -> dict[Path, str]:
    """Every generated file and its content."""
    out: dict[Path, str] = {}
    out[ROOT / "schemas" / "domain.json"] = _dump(
        document("DomainDefinition", DomainDefinition, "A domain's persistent definition.")
    )
    for proc in PROCEDURES:
        out[ROOT / "schemas" / f"{proc.name}.params.json"] = _dump(
            document(f"{proc.name} params", proc.params, proc.doc)
        )
        out[ROOT / "schemas" / f"{proc.name}.result.json"] = _dump(
            document(f"{proc.name} result", proc.result if proc.result else Any, proc.doc)
        )
    out[ROOT / "schemas" / "openrpc.json"] = _dump(openrpc_document())
    out[ROOT / "docs" / "procedures.md"] = procedures_markdown()
    return out


OPENRPC_VERSION: Final = "1.3.2"

#: Errors any call may get, by reason.
_COMMON_ERRORS: Final = (
    "INVALID_PARAMS",
    "ACCESS_DENIED",
    "DEADLINE_EXCEEDED",
    "SERVER_BUSY",
    "INTERNAL_ERROR",
)
_JOB_ERRORS: Final = ("OPERATION_INVALID", "JOB_TIMEOUT", "JOB_QUEUE_FULL", "DOMAIN_DESTROYED")
_MONITOR_ERRORS: Final = ("MONITOR_TIMEOUT", "MONITOR_UNRESPONSIVE", "MONITOR_ERROR")
_EXTRA_ERRORS: Final[dict[str, tuple[str, ...]]] = {
    "domain.define": ("DOMAIN_EXISTS",),
    "domain.undefine": ("OPERATION_INVALID",),
    "domain.start": ("LAUNCH_FAILED",),
}


def _first_paragraph(cls: type) -> str:
    return " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())


def method_errors(proc: Procedure) -> list[str]:
    """The reasons a call of ``proc`` may fail with, besides the protocol's."""
    reasons = list(_COMMON_ERRORS)
    if "name" in attrs.fields_dict(proc.params):
        reasons.append("NO_DOMAIN")
    if proc.job is not None:
        reasons += _JOB_ERRORS
        if proc.touches_monitor:
            reasons += _MONITOR_ERRORS
    reasons += _EXTRA_ERRORS.get(proc.name, ())
    return list(dict.fromkeys(reasons))


def _content_descriptors(cls: type, defs: dict[str, Any]) -> list[dict[str, Any]]:
    """One OpenRPC content descriptor per field of ``cls``, in field order
    (the order positional params follow)."""
    body = object_schema(cls, defs)
    required = set(body.get("required", []))
    out = []
    for name, schema in body["properties"].items():
        descriptor: dict[str, Any] = {"name": name}
        if "description" in schema:
            descriptor["description"] = schema["description"]
        descriptor["required"] = name in required
        descriptor["schema"] = schema
        out.append(descriptor)
    return out


def _refs_to_components(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            key: (
                value.replace("#/$defs/", "#/components/schemas/")
                if key == "$ref" and isinstance(value, str)
                else _refs_to_components(value)
            )
            for key, value in obj.items()
        }
    if isinstance(obj, list):
        return [_refs_to_components(value) for value in obj]
    return obj


def openrpc_document() -> dict[str, Any]:
    """The OpenRPC document of the procedure table: what ``rpc.discover``
    answers and ``schemas/openrpc.json`` holds."""
    defs: dict[str, Any] = {}
    methods: list[dict[str, Any]] = []
    for proc in PROCEDURES:
        method: dict[str, Any] = {
            "name": proc.name,
            "summary": proc.doc.split(". ")[0].rstrip(".") if proc.doc else proc.name,
            "description": proc.doc,
            "paramStructure": "either",
            "params": _content_descriptors(proc.params, defs),
            "result": {
                "name": f"{proc.name} result",
                "schema": schema_for(proc.result, defs) if proc.result is not None else {},
            },
            "errors": [{"$ref": f"#/components/errors/{reason}"} for reason in method_errors(proc)],
            "x-priority": proc.priority.value,
            "x-role": proc.role.name.lower(),
            "x-deadline": proc.deadline,
        }
        if proc.job is not None:
            method["x-domain-job"] = proc.job.value
        if proc.endpoint == "admin":
            method["servers"] = [{"name": "admin", "url": "/admin"}]
        methods.append(method)
    methods.append(
        {
            "name": "events.event",
            "summary": "A domain event, sent by the server after events.subscribe",
            "description": (
                "A notification from the server to the client (never called by a "
                "client), one per domain event, while the client is subscribed. "
                "kind is lifecycle, monitor or qmp; monitor events include "
                "events_dropped (data.count: QMP events of that domain dropped "
                "by the per-domain rate bound, driver.max_events_per_second)."
            ),
            "paramStructure": "by-name",
            "params": _content_descriptors(DomainEvent, defs),
            "x-notification": "server-to-client",
        }
    )
    errors = {}
    for reason, cls in sorted(_BY_REASON.items(), key=lambda kv: (-kv[1].rpc_code, kv[0])):
        if cls is TrioctlError:
            continue
        errors[reason] = {
            "code": cls.rpc_code,
            "message": _first_paragraph(cls),
            "data": {"reason": reason},
        }
    document = {
        "openrpc": OPENRPC_VERSION,
        "info": {
            "title": "trioctl",
            "version": __version__,
            "description": (
                f"trioctl JSON-RPC 2.0 over WebSocket, protocol {PROTOCOL_VERSION}. "
                "`/` serves the API, `/admin` the admin procedures. Params may be "
                "an object or an array in the order listed here. Every error has "
                "data.reason. rpc.discover returns this document."
            ),
        },
        "servers": [{"name": "api", "url": "/"}],
        "methods": methods,
        "components": {"schemas": dict(sorted(defs.items())), "errors": errors},
    }
    result = _refs_to_components(document)
    assert isinstance(result, dict)
    return result


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any"
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"object of {_type_name(typing.get_args(tp)[1])}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in tp)
    if isinstance(tp, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp)


def _fields_table(cls: type) -> list[str]:
    fields = attrs.fields(cls)
    if not fields:
        return ["(none)", ""]
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for field in fields:
        if field.default is attrs.NOTHING:
            default = "required"
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            default = "generated" if field.name == "uuid" else "empty"
        else:
            value = field.default
            value = value.value if isinstance(value, enum.Enum) else value
            default = f"`{json.dumps(list(value) if isinstance(value, tuple) else value)}`"
        rows.append(
            f"| `{field.name}` | {_type_name(hints[field.name])} | {default} | "
            f"{docs.get(field.name, '')} |"
        )
    return [*rows, ""]


def procedures_markdown() -> str:
    lines = [
        "# Procedures",
        "",
        "<!-- Generated by `python -m trioctl._tools.gen_schemas` from",
        "     trioctl/_procedures.py. Do not edit: CI fails when it is stale. -->",
        "",
        f"Protocol version {PROTOCOL_VERSION}. Transport: JSON-RPC 2.0 over WebSocket text",
        "frames; `/` serves the API procedures, `/admin` the admin ones. Params are",
        "an object (unknown keys are refused, `INVALID_PARAMS`) or an array that maps",
        "onto the parameters in the order of each procedure's table below (JSON-RPC",
        "2.0 section 4.2): `[]` means none, a shorter array leaves the rest to their",
        "defaults, a longer one is `INVALID_PARAMS` with the order in `data.order`.",
        "Priority follows libvirt's rule: a procedure that may touch a monitor is",
        "`low`; destroy, lookups, listing and cached info are `high`. A procedure",
        "with a job kind first waits for the domain's job in its bounded queue",
        "(holding no worker), then runs on a worker of its priority. JSON Schemas",
        "for each procedure are in `schemas/NAME.params.json` and",
        "`schemas/NAME.result.json`; the whole table is the OpenRPC 1.3 document",
        "`schemas/openrpc.json`, which `rpc.discover` (no params) returns on either",
        "endpoint.",
        "",
        "## Connecting, limits and batches",
        "",
        "- **Handshake.** A client sends its token as `Authorization: Bearer TOKEN`,",
        "  or, from a browser (which cannot set that header), as the subprotocol",
        "  `bearer.TOKEN` offered beside `trioctl.v1`: the server then selects",
        "  `trioctl.v1`, never the token. A handshake with an `Origin` header is",
        "  refused (403) unless that origin is in `server.allowed_origins`, with or",
        "  without auth; clients that send no `Origin` are unaffected. Refusals: 400",
        "  (`bearer.` without `trioctl.v1`), 401 (no valid token), 403 (Origin, or",
        "  `/admin` without an admin token), 404 (another path), 503 (`max_clients`,",
        "  `admin_max_clients` for `/admin`, read-only clients beyond",
        "  `max_clients - reserved_write_clients`, or shutting down). Two `Origin`",
        "  headers are refused with 400.",
        "- **Before the handshake.** At most `server.max_anonymous_clients`",
        "  connections may be in their handshake at once (a new one evicts the",
        "  oldest of them), each for at most `server.handshake_timeout` seconds.",
        "- **Batches.** A batch of up to `server.max_batch` items is answered in",
        "  full (notifications left out) whatever `max_client_requests` is; its items",
        "  run concurrently, in no set order, at most `max_client_requests` of the",
        "  client's calls at once. None of a larger batch runs; it is still answered",
        "  with an array: one error per item (`-32600`, `data.reason`",
        "  `LIMIT_EXCEEDED`, `data.max_batch`) with the item's id, or null for an",
        "  item without one or that is not an object. A batch whose answers would",
        "  exceed the output bound (more than `server.max_output_bytes / 200` items)",
        "  gets one such error object instead.",
        "- **Requests.** Members a request does not define are ignored (except",
        "  `result` and `error`, which make it an Invalid Request); with duplicate",
        "  keys the last wins; binary frames are read as UTF-8 text.",
        "- **Backpressure.** Each message (a call or a batch) holds one of the",
        "  client's `max_client_requests` slots until its reply is queued; replies",
        "  and events queued for a client are bounded by `server.max_output_bytes`.",
        "  A client that does not read is not read.",
        "- **Events.** After `events.subscribe`, the server sends `events.event`",
        "  notifications (params: a `DomainEvent`). Each domain passes on at most",
        "  `driver.max_events_per_second` QMP events (bursts of one second's worth);",
        "  the rest are dropped and counted, and reported by a `monitor` event",
        "  `events_dropped` with `data.count` (before the next event that passes,",
        "  or alone a second after the first drop).",
        "",
        "## Procedure table",
        "",
        "| procedure | priority | role | domain job | deadline (s) | endpoint |",
        "|---|---|---|---|---|---|",
    ]
    procs: list[Procedure] = list(PROCEDURES)
    for p in procs:
        lines.append(
            f"| [`{p.name}`](#{p.name.replace('.', '')}) | {p.priority.value} | "
            f"{p.role.name.lower()} | {p.job.value if p.job else '-'} | {p.deadline:g} | "
            f"`{'/admin' if p.endpoint == 'admin' else '/'}` |"
        )
    lines.append("")
    for p in procs:
        lines += [f"## {p.name}", "", p.doc, "", "Params:", ""]
        lines += _fields_table(p.params)
        names = [f.name for f in attrs.fields(p.params)]
        if names:
            order = ", ".join(f"`{n}`" for n in names)
            lines += [f"Positional order: {order}.", ""]
        if p.result is None:
            lines += ["Result: any JSON value.", ""]
        else:
            lines += [f"Result (`{p.result.__name__}`):", ""]
            lines += _fields_table(p.result)
    lines += [
        "## Errors",
        "",
        "Every error object has `data.reason`, a stable name:",
        "",
        "| reason | code | meaning |",
        "|---|---|---|",
    ]
    from .._errors import _BY_REASON

    for reason, cls in sorted(_BY_REASON.items(), key=lambda kv: kv[1].rpc_code):
        doc = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
        lines.append(f"| `{reason}` | {cls.rpc_code} | {doc} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args(argv)
    files = generate()
    schema_dir = ROOT / "schemas"
    extra = {p for p in schema_dir.glob("*.json")} - set(files) if schema_dir.exists() else set()
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)}", file=sys.stderr)
        for path in sorted(extra):
            print(f"not generated: {path.relative_to(ROOT)}", file=sys.stderr)
        if stale or extra:
            print("run: python -m trioctl._tools.gen_schemas", file=sys.stderr)
            return 1
        print(f"{len(files)} generated files are current")
        return 0
    schema_dir.mkdir(exist_ok=True)
    for path, text in files.items():
        if path in stale:
            path.write_text(text)
    for path in extra:
        path.unlink()
    print(f"wrote {len(stale)} of {len(files)} files, removed {len(extra)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
