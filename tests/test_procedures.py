"""The procedure table: declared once, consistent, and its generated files current."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
import trio
from hypothesis import given, settings, strategies as st

from trioctl._client import METHODS, Client, _procedure, connect
from trioctl._errors import _BY_REASON, InvalidParams, TrioctlError
from trioctl._handlers import PROCEDURES as HANDLED
from trioctl._jobs import JobHandle, JobKind
from trioctl._models import SCHEMA, DomainDefinition, DomainInfo, DomainStats, structure
from trioctl._pools import Priority
from trioctl._procedures import PROCEDURES, Procedure, ProcedureTable
from trioctl._tools import gen_schemas

from .helpers import running_daemon

ROOT = Path(__file__).resolve().parents[1]


def test_names_are_unique_and_namespaced() -> None:
    names = [p.name for p in PROCEDURES]
    assert len(names) == len(set(names)) == len(PROCEDURES)
    for proc in PROCEDURES:
        prefix = proc.name.split(".")[0]
        assert prefix in {"connect", "domain", "events", "admin"}
        assert (prefix == "admin") == (proc.endpoint == "admin")


def test_table_refuses_duplicates_and_reserved_names() -> None:
    proc = PROCEDURES.get("connect.get_version")
    assert proc is not None
    with pytest.raises(ValueError, match="duplicate"):
        ProcedureTable([proc, proc])
    with pytest.raises(ValueError, match="reserved"):
        ProcedureTable([attrs.evolve(proc, name="rpc.x")])
    with pytest.raises(ValueError, match="name"):
        ProcedureTable([attrs.evolve(proc, job=JobKind.QUERY)])


def test_error_codes_and_reasons_are_unique() -> None:
    # A reason may refine its parent's code (LIMIT_EXCEEDED is an Invalid
    # Request, -32600); otherwise each code has one reason.
    roots = [
        cls
        for cls in _BY_REASON.values()
        if not any(
            base is not cls and base.rpc_code == cls.rpc_code and issubclass(cls, base)
            for base in _BY_REASON.values()
        )
    ]
    codes = [cls.rpc_code for cls in roots]
    assert len(codes) == len(set(codes))
    assert len(roots) == len(_BY_REASON) - 1
    for reason, cls in _BY_REASON.items():
        assert cls.reason == reason
        assert issubclass(cls, TrioctlError)


def test_priorities_follow_libvirts_rule() -> None:
    # The table checks the touches_monitor column against the priority.
    for proc in PROCEDURES:
        assert proc.priority is (Priority.LOW if proc.touches_monitor else Priority.HIGH)
        assert proc.job is not None or not proc.touches_monitor
    stats = PROCEDURES["domain.get_stats"]
    with pytest.raises(ValueError, match="touches a monitor is low priority"):
        ProcedureTable([attrs.evolve(stats, priority=Priority.HIGH)])
    with pytest.raises(ValueError, match="never touches a monitor is high priority"):
        ProcedureTable([attrs.evolve(stats, touches_monitor=False)])
    with pytest.raises(ValueError, match="needs a domain job"):
        ProcedureTable([attrs.evolve(stats, job=None, shared=False)])


#: Driver operations that talk to a domain's monitor.
_MONITOR_OPERATIONS = {
    "start_locked",
    "shutdown_locked",
    "suspend_locked",
    "resume_locked",
    "reset_locked",
    "get_stats_locked",
    "monitor_command_locked",
}


def test_the_monitor_column_matches_the_handlers() -> None:
    for proc in HANDLED:
        assert bool(_driver_calls(proc) & _MONITOR_OPERATIONS) == proc.touches_monitor, proc.name


def test_every_procedure_has_a_handler_and_the_declared_table_none() -> None:
    assert [p.name for p in HANDLED] == [p.name for p in PROCEDURES]
    for declared, bound in zip(PROCEDURES, HANDLED, strict=True):
        assert attrs.evolve(bound, bound=None) == declared
        with pytest.raises(RuntimeError, match="no handler"):
            _ = declared.handler
    with pytest.raises(ValueError, match="missing"):
        PROCEDURES.bind({})


def _driver_calls(proc: Procedure) -> set[str]:
    """Names of ``ctx.services.driver.X`` attributes the handler uses."""
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(proc.handler)))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "driver"
    }


def test_handlers_with_a_job_take_its_handle() -> None:
    # The dispatcher holds the job and passes its handle (with_job), which
    # the driver's *_locked operations take: mypy checks that only a handler
    # given a handle calls them. A handler taking the job again would
    # deadlock: none calls the operations that do.
    for proc in HANDLED:
        params = list(inspect.signature(proc.handler).parameters.values())
        if proc.job is not None:
            assert [p.name for p in params][2:] == ["job"], proc.name
            assert params[2].annotation in ("JobHandle", JobHandle), proc.name
        else:
            assert len(params) == 2, proc.name
        calls = _driver_calls(proc)
        assert not (calls & {"start", "suspend", "resume", "reset", "shutdown", "get_stats"})


@pytest.mark.slow
def test_the_client_library_loads_no_daemon_module() -> None:
    code = (
        "import sys, trioctl._client\n"
        "print(sorted(m for m in sys.modules if m.startswith('trioctl')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = set(ast.literal_eval(out.stdout))
    allowed = {"_client", "_errors", "_fanout", "_models", "_procedures", "_sansio"}
    allowed |= {"_sansio.rpc", "_util"}
    assert loaded <= {"trioctl", "trioctl._version"} | {f"trioctl.{m}" for m in allowed}
    source = (ROOT / "trioctl" / "_procedures.py").read_text()
    imported = {
        node.module
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.level
    }
    assert imported == {"_models"}


def test_generated_files_are_current() -> None:
    files = gen_schemas.generate()
    for path, text in files.items():
        assert path.exists(), f"missing {path}: run python -m trioctl._tools.gen_schemas"
        assert path.read_text() == text, f"stale {path}: run python -m trioctl._tools.gen_schemas"
    assert gen_schemas.main(["--check"]) == 0


def _schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "schemas" / name).read_text())
    return loaded


def test_domain_schema_agrees_with_the_converter() -> None:
    schema = _schema("domain.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    good = {"name": "vm-1.a_b", "memory_mib": 256, "vcpus": 2, "extra_args": ["-S"]}
    jsonschema.validate(good, schema)
    for bad in ({"name": "no spaces"}, {"name": "x", "bogus": 1}, {"name": "x", "vcpus": 0}, {}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.mark.slow
async def test_live_results_match_their_schemas(sock_dir: Path) -> None:
    """Run every procedure and validate params and results against schemas/."""
    calls: list[tuple[str, dict[str, Any], str]] = [
        ("connect.get_version", {}, "/"),
        ("domain.define", {"definition": {"name": "s1"}}, "/"),
        ("connect.list_domains", {}, "/"),
        ("domain.lookup", {"name": "s1"}, "/"),
        ("events.subscribe", {"domains": ["s1"]}, "/"),
        ("domain.start", {"name": "s1", "paused": False}, "/"),
        ("domain.get_info", {"name": "s1"}, "/"),
        ("domain.get_stats", {"name": "s1"}, "/"),
        ("connect.get_all_domain_stats", {"states": ["running"], "wait": 5}, "/"),
        ("domain.suspend", {"name": "s1"}, "/"),
        ("domain.resume", {"name": "s1"}, "/"),
        ("domain.reset", {"name": "s1"}, "/"),
        ("domain.monitor_command", {"name": "s1", "command": "query-status"}, "/"),
        ("domain.shutdown", {"name": "s1"}, "/"),
        ("domain.start", {"name": "s1"}, "/"),
        ("domain.destroy", {"name": "s1"}, "/"),
        ("domain.undefine", {"name": "s1"}, "/"),
        ("events.unsubscribe", {}, "/"),
        ("admin.get_threadpool", {}, "admin"),
        ("admin.set_threadpool", {"max_workers": 25}, "admin"),
        ("admin.get_client_limits", {}, "admin"),
        ("admin.set_client_limits", {"max_client_requests": 6}, "admin"),
        ("admin.list_clients", {}, "admin"),
        ("admin.list_jobs", {}, "admin"),
        ("admin.get_stats", {}, "admin"),
    ]
    seen = set()
    with trio.fail_after(60):
        async with (
            running_daemon(sock_dir) as daemon,
            connect(daemon.url, daemon.token) as api,
            connect(daemon.admin_url, daemon.token) as admin,
        ):
            for method, params, endpoint in calls:
                jsonschema.validate(params, _schema(f"{method}.params.json"))
                client = admin if endpoint == "admin" else api
                result = await client.call(method, params)
                jsonschema.validate(result, _schema(f"{method}.result.json"))
                seen.add(method)
            clients = await admin.list_clients()
            disconnect = {"id": clients[0].id}
            jsonschema.validate(disconnect, _schema("admin.disconnect_client.params.json"))
            seen.add("admin.disconnect_client")
    assert seen == {p.name for p in PROCEDURES}


def _valid(schema: dict[str, Any], value: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(schema).is_valid(value))


def _server_takes(value: dict[str, Any]) -> bool:
    try:
        structure(value, DomainDefinition)
    except InvalidParams:
        return False
    return True


@pytest.mark.parametrize(
    ("value", "ok"),
    [(64, True), (64.0, True), (64.5, False), ("64", False), (True, False), (0, False),
     (float(1 << 20), True), ((1 << 20) + 1, False), (None, False)],
)  # fmt: skip
def test_schema_and_server_agree_on_integers(value: Any, ok: bool) -> None:
    definition = {"name": "a", "memory_mib": value}
    assert _valid(_schema("domain.json"), definition) is ok
    assert _server_takes(definition) is ok
    if ok:
        assert structure(definition, DomainDefinition).memory_mib == int(value)
        assert type(structure(definition, DomainDefinition).memory_mib) is int


_scalars = st.one_of(
    st.integers(-3, 300),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-3, max_value=300),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=70),
    vcpus=_scalars,
    machine=st.sampled_from(["none", "pc", "q35", "PC", "pc,accel=kvm", ""]),
    mac=st.sampled_from(["", "52:54:00:12:34:56", "53:54:00:12:34:56", "52:54:00:12:34"]),
    cmdline=st.text(max_size=5),
)
def test_schema_and_server_agree_on_definitions(
    name: str, vcpus: Any, machine: str, mac: str, cmdline: str
) -> None:
    # (A newline ends an ECMA "$" but not Python's: the schema is written for ECMA.)
    definition = {"name": name, "vcpus": vcpus, "machine": machine, "nics": [{"mac": mac}]}
    if cmdline:
        definition |= {"kernel": "/k", "machine": "pc", "cmdline": cmdline}
    assert _valid(_schema("domain.json"), definition) == _server_takes(definition), definition


def test_a_validator_without_a_schema_fails_generation() -> None:
    def odd(_inst: object, _attr: Any, value: int) -> None:
        if not value % 2:
            raise ValueError("odd")

    @attrs.frozen
    class Unstated:
        n: int = attrs.field(validator=[attrs.validators.ge(1), odd])

    @attrs.frozen
    class Stated:
        n: int = attrs.field(
            validator=[attrs.validators.ge(1), odd], metadata={SCHEMA: {"not": {"multipleOf": 2}}}
        )
        items: tuple[int, ...] = attrs.field(default=(), validator=attrs.validators.max_len(3))

    with pytest.raises(TypeError, match=r"Unstated\.n: .* has no JSON Schema"):
        gen_schemas.document("x", Unstated)
    body = gen_schemas.document("x", Stated)["properties"]
    assert body["n"] == {"type": "integer", "minimum": 1, "not": {"multipleOf": 2}}
    assert body["items"]["maxItems"] == 3


def test_every_procedure_has_a_client_method_with_its_result_type() -> None:
    assert set(METHODS) == {p.name for p in PROCEDURES}
    public = {
        name
        for name, value in vars(Client).items()
        if inspect.iscoroutinefunction(value) and not name.startswith("_")
    }
    assert public - {"call"} == set(METHODS.values())
    for proc in PROCEDURES:
        method = getattr(Client, METHODS[proc.name])
        returns = typing.get_type_hints(method)["return"]
        # The method's type is the table's, or the one field it unwraps, or None.
        assert (
            returns in (proc.result, type(None))
            or (
                proc.result is not None
                and [typing.get_type_hints(proc.result)[f.name] for f in attrs.fields(proc.result)]
                == [returns]
            )
            or (proc.result is None and returns is Any)
        ), proc.name
        assert method.__doc__, proc.name


def test_a_client_method_that_differs_from_the_table_is_refused() -> None:
    async def get_info(self: Client, name: str) -> DomainStats: ...  # type: ignore[empty-body]

    async def start(self: Client, name: str, paused: bool, force: bool) -> DomainInfo: ...  # type: ignore[empty-body]

    async def list_clients(self: Client) -> list[DomainInfo]: ...  # type: ignore[empty-body]

    with pytest.raises(TypeError, match=r"cannot return domain\.get_info's result"):
        _procedure("domain.get_info")(get_info)
    with pytest.raises(TypeError, match=r"domain\.start takes \['name', 'paused'\]"):
        _procedure("domain.start")(start)
    with pytest.raises(TypeError, match=r"cannot return admin\.list_clients"):
        _procedure("admin.list_clients")(list_clients)
    with pytest.raises(KeyError):
        _procedure("domain.nothing")


def test_cli_help_comes_from_the_procedure_docs() -> None:
    from click.testing import CliRunner

    from trioctl._cli._client_cmds import COMMAND_PROCEDURES
    from trioctl._cli._main import cli

    assert set(COMMAND_PROCEDURES.values()) >= {
        p.name for p in PROCEDURES if p.name.startswith(("domain.", "admin."))
    } - {"domain.lookup", "admin.get_client_limits", "admin.set_client_limits"}
    for command, procedure in COMMAND_PROCEDURES.items():
        result = CliRunner().invoke(cli, [*command.split(), "--help"])
        assert result.exit_code == 0, result.output
        first = PROCEDURES[procedure].doc.replace("`", "").split(". ")[0]
        assert " ".join(first.split()) in " ".join(result.output.split()), command


def test_the_drivers_embedding_api_takes_job_kinds_from_the_table() -> None:
    from trioctl._driver import Driver

    source = inspect.getsource(Driver)
    assert "JobKind.MODIFY" not in source and "JobKind.QUERY" not in source
    for proc in PROCEDURES:
        if proc.job is None:
            continue
        method = getattr(Driver, proc.name.split(".")[1])
        assert f'self._job(\n            "{proc.name}"' in inspect.getsource(method) or (
            f'self._job("{proc.name}"' in inspect.getsource(method)
        ), proc.name


def test_client_arguments_go_out_as_json() -> None:
    import types

    from trioctl._client import _wire
    from trioctl._models import DomainState

    assert _wire(types.MappingProxyType({"a": DomainState.RUNNING})) == {"a": "running"}
    assert _wire([DomainState.PAUSED, "shutoff"]) == ["paused", "shutoff"]
    assert _wire(DomainDefinition(name="a"))["name"] == "a"
