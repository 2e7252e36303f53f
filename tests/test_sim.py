"""Tests of the QEMU simulator (``trioctl.sim``).

Rules: every test doing I/O is bounded by ``trio.fail_after`` (the ``bounded``
decorator) or a subprocess timeout; every process started is killed in
teardown (the ``procs`` fixture), daemonized ones through their pidfile.
QMP is spoken over raw sockets with the small ``Qmp`` helper below, never
through trioctl's own client. Protocol tests run the VM in-process
(``open_simulated_vm``); process behaviour (daemonize, signals, crash exit
codes, SIGSTOP) runs ``python -m trioctl.sim`` for real. The ``qemu`` test
checks that real QEMU and the simulator answer a script with the same shapes.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import attrs
import pytest
import trio
from hypothesis import given, strategies as st

from trioctl._errors import QmpCommandError
from trioctl.sim import (
    GARBAGE,
    InputTooLarge,
    JsonStreamParser,
    ParsedValue,
    ParseFailure,
    SimulatedVM,
    SmpTopology,
    UsageError,
    VMConfig,
    control_request,
    open_simulated_vm,
    parse_many_args,
    parse_qemu_args,
    sim_command,
)

P = ParamSpec("P")
T = TypeVar("T")

SIM = sim_command()


def bounded(seconds: float) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Fail the decorated async test if it runs longer than ``seconds``."""

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            with trio.fail_after(seconds):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate


# -- a raw QMP client -------------------------------------------------------------------


class Qmp:
    """Reads ``\\r\\n``-terminated JSON messages from a raw socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buf = bytearray()

    async def raw_line(self) -> bytes:
        """The next line, without its ``\\r\\n``. Raises EOFError at EOF."""
        while (end := self._buf.find(b"\r\n")) < 0:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(bytes(self._buf))
            self._buf += data
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    async def message(self) -> dict[str, Any]:
        value = json.loads(await self.raw_line())
        assert isinstance(value, dict)
        return value

    async def send(self, data: bytes | dict[str, Any]) -> None:
        await self.stream.send_all(data if isinstance(data, bytes) else json.dumps(data).encode())

    async def reply(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Events up to the next return/error, and that reply."""
        events = []
        while True:
            message = await self.message()
            if "event" in message:
                events.append(message)
            else:
                return events, message

    async def execute(
        self, name: str, arguments: dict[str, Any] | None = None, **extra: Any
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        request: dict[str, Any] = {"execute": name, **extra}
        if arguments is not None:
            request["arguments"] = arguments
        await self.send(request)
        return await self.reply()

    async def ok(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a command that must succeed and cause no event; its return."""
        events, reply = await self.execute(name, arguments)
        assert events == []
        assert "return" in reply, reply
        return reply["return"]

    async def expect_eof(self) -> None:
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            self._buf += data
            assert b"\r\n" not in self._buf, f"unexpected data before EOF: {bytes(self._buf)!r}"

    async def silent_for(self, seconds: float) -> bool:
        """True if nothing arrives within ``seconds``."""
        with trio.move_on_after(seconds):
            await self.raw_line()
            return False
        return True


@asynccontextmanager
async def qmp_client(path: str | Path, *, negotiate: bool = True) -> AsyncIterator[Qmp]:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        qmp = Qmp(stream)
        if negotiate:
            greeting = await qmp.message()
            assert "QMP" in greeting
            assert await qmp.ok("qmp_capabilities") == {}
        yield qmp


@asynccontextmanager
async def sim_vm(
    sock_dir: Path, *, control: bool = True, **config: Any
) -> AsyncIterator[tuple[SimulatedVM, Path, Path]]:
    """An in-process simulated VM: (vm, qmp path, control path)."""
    qmp_path = sock_dir / "vm.qmp"
    control_path = sock_dir / "vm.ctl"
    config.setdefault("name", "vm")
    async with open_simulated_vm(
        VMConfig(qmp_path=str(qmp_path), **config),
        control_path=str(control_path) if control else None,
    ) as vm:
        yield vm, qmp_path, control_path


def shape(value: Any, literal_keys: frozenset[str] = frozenset({"class", "event"})) -> Any:
    """The shape of a JSON value: same keys recursively and JSON types, with
    the values under ``literal_keys`` (error classes, event names) kept."""
    if isinstance(value, dict):
        return {
            key: item if key in literal_keys else shape(item, literal_keys)
            for key, item in sorted(value.items())
        }
    if isinstance(value, list):
        return [shape(item, literal_keys) for item in value]
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    assert value is None
    return "null"


def test_shape() -> None:
    assert shape({"b": [1, "x", None], "a": {"c": True}}) == {
        "a": {"c": "boolean"},
        "b": ["number", "string", "null"],
    }
    assert shape({"error": {"class": "GenericError", "desc": "x"}}) == {
        "error": {"class": "GenericError", "desc": "string"}
    }
    assert shape({"event": "STOP", "x": 1.5}) != shape({"event": "RESUME", "x": 1.5})


# -- processes ----------------------------------------------------------------------------


@attrs.define
class Procs:
    """Every process a test starts; all are SIGKILLed in teardown."""

    children: list[subprocess.Popen[bytes]] = attrs.field(factory=list)
    pidfiles: list[Path] = attrs.field(factory=list)
    pids: list[int] = attrs.field(factory=list)

    def start(self, *args: str | Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*SIM, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.children.append(proc)
        return proc

    def daemon(self, pidfile: Path, *args: str | Path) -> int:
        """Run with -daemonize; return the daemon's pid once the parent exits."""
        self.pidfiles.append(pidfile)
        done = subprocess.run(
            [*SIM, *map(str, args), "-pidfile", str(pidfile), "-daemonize"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        pid = int(pidfile.read_text())
        self.pids.append(pid)
        return pid

    def kill_all(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        pids = list(self.pids)
        for pidfile in self.pidfiles:
            try:
                pids.append(int(pidfile.read_text()))
            except (OSError, ValueError):
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def procs() -> Iterator[Procs]:
    registry = Procs()
    try:
        yield registry
    finally:
        registry.kill_all()


async def wait_for_socket(path: Path) -> None:
    """Wait until ``path`` accepts connections (a foreground simulator has
    no readiness signal; the file exists a moment before it listens)."""
    while True:
        try:
            stream = await trio.open_unix_socket(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            await trio.sleep(0.01)
        else:
            await stream.aclose()
            return


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    while (code := proc.poll()) is None:
        await trio.sleep(0.01)
    return code


def qmp_arg(path: Path) -> str:
    return f"unix:{path},server=on,wait=off"


# -- command line -------------------------------------------------------------------------


def test_parse_the_launchers_command_line() -> None:
    options = parse_qemu_args(
        [
            "-name", "guest=web1", "-machine", "none", "-m", "256M", "-smp", "2",
            "-nodefaults", "-display", "none",
            "-qmp", "unix:/run/x/web1.qmp,server=on,wait=off",
            "-pidfile", "/run/x/web1.pid", "-daemonize", "-S",
            "-sim-control", "unix:/run/x/web1.ctl",
        ]
    )  # fmt: skip
    assert options.vm == VMConfig(
        qmp_path="/run/x/web1.qmp",
        name="web1",
        paused=True,
        memory_bytes=256 << 20,
        smp=SmpTopology(cpus=2, cores=2),
        machine="none",
    )
    assert options.pidfile == "/run/x/web1.pid"
    assert options.daemonize
    assert options.control_path == "/run/x/web1.ctl"


@pytest.mark.parametrize(
    ("args", "field", "expected"),
    [
        (["-name", "plain"], "name", "plain"),
        (["-name", "guest=a,,b,debug-threads=on,process=p"], "name", "a,b"),
        (["--name", "dashes"], "name", "dashes"),
        ([], "name", None),
        (["-m", "128"], "memory_bytes", 128 << 20),
        (["-m", "1G"], "memory_bytes", 1 << 30),
        (["-m", "1536k"], "memory_bytes", 1536 << 10),
        (["-m", "1.5G"], "memory_bytes", 3 << 29),
        (["-m", "size=2G,slots=2,maxmem=4G"], "memory_bytes", 2 << 30),
        (["-smp", "4"], "smp", SmpTopology(cpus=4, cores=4)),
        (["-smp", "cpus=4,sockets=2"], "smp", SmpTopology(cpus=4, sockets=2, cores=2)),
        (["-smp", "sockets=2,cores=2,threads=2"], "smp", SmpTopology(8, 2, 2, 2)),
        (["-machine", "q35,accel=tcg"], "machine", "q35"),
        (["-M", "type=pc-i440fx-7.2"], "machine", "pc-i440fx-7.2"),
        ([], "machine", "pc"),
        (["-S"], "paused", True),
        (["-sim-powerdown", "ignore"], "powerdown", "ignore"),
    ],
)
def test_parse_good_options(args: list[str], field: str, expected: object) -> None:
    # trioctl's -sandbox, accepted alongside every option.
    args = [
        *args,
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]
    options = parse_qemu_args(["-qmp", "unix:q.sock,server,nowait", *args])
    assert options.vm.qmp_path == "q.sock"
    assert getattr(options.vm, field) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-foo"], "-foo: invalid option"),
        (["--foo"], "--foo: invalid option"),
        (["-m"], "-m: requires an argument"),
        (["-m", "abc"], "-m abc: Parameter 'size' expects a non-negative number"),
        (["-m", "0"], "-m 0: memory size must be at least 1 MiB"),
        (["-smp", "x"], "-smp x: Parameter 'smp.cpus' expects integer"),
        (["-smp", "0"], "must be greater than zero"),
        (["-smp", "cpus=8,sockets=1,cores=2,threads=1"], "product of the hierarchy"),
        (["-name", "guest=a,colour=red"], "-name guest=a,colour=red: Invalid parameter 'colour'"),
        (["-sandbox", "maybe"], "-sandbox maybe: expected 'on' or 'off' first"),
        (["-sandbox", "on,spawn=sometimes"], "-sandbox: invalid option 'spawn=sometimes'"),
        (["-sandbox", "on,colour=red"], "-sandbox: invalid option 'colour=red'"),
        (["-qmp", "tcp:127.0.0.1:4444"], "only unix:PATH sockets are supported"),
        (["-qmp", "unix:q,server=off"], "the simulator only listens"),
        (["-qmp", "unix:q,server=on,wait=on"], "wait=on is not supported"),
        (["-qmp", "unix:q,server=maybe"], "Parameter 'server' expects 'on' or 'off'"),
        (["-qmp", "unix:q,server,bogus=1"], "Invalid parameter 'bogus'"),
        (["-qmp", "unix:a,server", "-qmp", "unix:b,server"], "serves one QMP monitor"),
        (["-display", "gtk"], "-display gtk: only 'none' is supported"),
        (["-sim-powerdown", "maybe"], "expected 'shutdown' or 'ignore'"),
        (["-sim-control", "q.ctl"], "only unix:PATH sockets"),
        (["disk.img"], "disk.img: disk images are not supported"),
        (["-machine", "accel=kvm"], "no machine type given"),
    ],
)
def test_parse_bad_options(args: list[str], message: str) -> None:
    argv = args if any(a == "-qmp" for a in args) else ["-qmp", "unix:q,server,nowait", *args]
    with pytest.raises(UsageError) as caught:
        parse_qemu_args(argv)
    assert message in str(caught.value)


def test_qmp_is_required() -> None:
    with pytest.raises(UsageError, match="-qmp unix:PATH,server=on,wait=off is required"):
        parse_qemu_args(["-name", "x"])


def test_parse_many() -> None:
    options = parse_many_args(["--dir", "d", "--count", "3", "--prefix", "web", "--paused"])
    assert options.vm_names() == ["web0", "web1", "web2"]
    assert options.vm_config("web1").qmp_path == os.path.join("d", "web1.qmp")
    assert options.vm_config("web1").paused
    assert options.control_path == os.path.join("d", "control.sock")
    for bad, message in [
        (["--dir", "d"], "the following arguments are required: --count"),
        (["--dir", "d", "--count", "0"], "--count must be at least 1"),
        (["--dir", "d", "--count", "2", "--bogus"], "unrecognized arguments: --bogus"),
        (["--dir", "d", "--count", "2", "--prefix", "a/b"], "not a valid name prefix"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_many_args(bad)


@pytest.mark.slow
def test_cli_usage_errors_exit_1_with_a_message() -> None:
    done = subprocess.run([*SIM, "-foo"], capture_output=True, timeout=10, check=False)
    assert done.returncode == 1
    assert done.stderr.decode() == "trioctl-sim: -foo: invalid option\n"
    done = subprocess.run(
        [*SIM, "many", "--count", "x"], capture_output=True, timeout=10, check=False
    )
    assert done.returncode == 1
    assert done.stderr.decode().startswith("trioctl-sim: many: ")
    done = subprocess.run([*SIM, "-version"], capture_output=True, timeout=10, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith(b"QEMU emulator version 7.2.0")


# -- the JSON stream parser -------------------------------------------------------------


def feed_all(parser: JsonStreamParser, *chunks: bytes) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        for item in parser.feed(chunk):
            out.append(item.value if isinstance(item, ParsedValue) else ("error", item.desc))
    return out


# Inputs and what QEMU 7.2 made of them (observed on qemu-system-x86_64 7.2).
QEMU_PARSES = [
    (b'{"execute":"x"} {"execute":"y"}', [{"execute": "x"}, {"execute": "y"}]),
    (b"[1,2]", [[1, 2]]),
    (b'"str"', ["str"]),
    (b"42", []),  # a number ends only at the next byte
    (b"42\n", [42]),
    (b"{'single':'quotes'}", [{"single": "quotes"}]),
    (b'{"id":12345678901234567890}', [{"id": 12345678901234567890}]),
    (b'{"id":"\\u00e9\\ud83d\\ude00"}', [{"id": "\u00e9\U0001f600"}]),
    (b"{bad json}", [("error", "JSON parse error, invalid keyword 'bad'")]),
    (b"}", [("error", "JSON parse error, expecting value")]),
    (b",", [("error", "JSON parse error, expecting value")]),
    (b'{"a":}', [("error", "JSON parse error, expecting value")]),
    (b"@", [("error", "JSON parse error, stray '@'")]),
    (b"\xff", [("error", "JSON parse error, stray '\ufffd'")]),
    (b'{"e":1,"e":2}', [("error", "JSON parse error, duplicate key")]),
    (b'"\x01"', [("error", "JSON parse error, stray '\"\x01'")]),
    (b'"\xc3"', [("error", "JSON parse error, invalid UTF-8 sequence in string")]),
    (b'"\\q"', [("error", "JSON parse error, invalid escape sequence in string")]),
    (b'"\\ud800"', [("error", "JSON parse error, \\ud800 is not a valid Unicode character")]),
    (b"01}", [("error", "JSON parse error, stray '01'"), ("error", "JSON parse error, expecting value")]),  # noqa: E501
    # After a lexer error, input up to a structural or control character is skipped.
    (b'@ 42 "x" {"a":1}', [("error", "JSON parse error, stray '@'"), {"a": 1}]),
    # An open object swallows what follows, until it closes.
    (b'{"a":1 {"b":2}}', [("error", "JSON parse error, expected separator in dict")]),
]  # fmt: skip


@pytest.mark.parametrize(("data", "expected"), QEMU_PARSES)
def test_parser_matches_qemu(data: bytes, expected: list[object]) -> None:
    assert feed_all(JsonStreamParser(), data) == expected


def test_parser_keywords_span_writes() -> None:
    # Seen on QEMU: "true", "nul", "l" sent separately form one keyword.
    assert feed_all(JsonStreamParser(), b"true", b"nul", b"l", b"{}") == [
        ("error", "JSON parse error, invalid keyword 'truenull'"),
        {},
    ]


def test_parser_nesting_and_size_limits() -> None:
    assert feed_all(JsonStreamParser(), b"[" * 1025) == [
        ("error", "JSON nesting depth limit exceeded")
    ]
    deep = b"[" * 1024 + b"]" * 1024
    assert len(feed_all(JsonStreamParser(), deep)) == 1
    parser = JsonStreamParser(max_pending=1000)
    parser.feed(b'"' + b"a" * 900)
    assert parser.pending_bytes == 901
    with pytest.raises(InputTooLarge):
        parser.feed(b"a" * 200)
    # Completed values do not count, however large.
    parser = JsonStreamParser(max_pending=1000)
    assert feed_all(parser, b'"' + b"a" * 5000 + b'"') == ["a" * 5000]
    assert parser.pending_bytes == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(
    values=st.lists(json_values, min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_parser_chunking_never_changes_results(values: list[Any], cuts: list[int]) -> None:
    wire = b"".join(json.dumps(v).encode() + b"\r\n" for v in values)
    points = sorted({min(c, len(wire)) for c in cuts})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    assert feed_all(JsonStreamParser(), *chunks) == values
    assert feed_all(JsonStreamParser(), *(wire[i : i + 1] for i in range(len(wire)))) == values


@given(st.binary(max_size=2048))
def test_parser_garbage_only_yields_results(data: bytes) -> None:
    parser = JsonStreamParser()
    for item in parser.feed(data) + parser.feed(b"\n"):
        assert isinstance(item, ParsedValue | ParseFailure)


# -- QMP, in-process ----------------------------------------------------------------------


@bounded(5)
async def test_greeting_and_negotiation(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (_, qmp_path, _), qmp_client(qmp_path, negotiate=False) as qmp:
        raw = await qmp.raw_line()
        assert json.loads(raw) == {
            "QMP": {
                "version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "trioctl-sim"},
                "capabilities": ["oob"],
            }
        }
        assert raw.startswith(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2')
        await qmp.send(b'{"execute": "query-status", "id": 3}')
        assert await qmp.raw_line() == (
            b'{"id": 3, "error": {"class": "CommandNotFound", '
            b'"desc": "Expecting capabilities negotiation with \'qmp_capabilities\'"}}'
        )
        await qmp.send(b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}')
        assert await qmp.raw_line() == b'{"return": {}}'
        assert await qmp.execute("qmp_capabilities") == (
            [],
            {
                "error": {
                    "class": "CommandNotFound",
                    "desc": "Capabilities negotiation is already complete, command ignored",
                }
            },
        )


@bounded(5)
async def test_capabilities_are_checked(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (_, qmp_path, _), qmp_client(qmp_path, negotiate=False) as qmp:
        await qmp.message()
        _, reply = await qmp.execute("qmp_capabilities", {"enable": ["bogus"]})
        assert reply["error"]["desc"] == "Parameter 'enable' does not accept value 'bogus'"
        assert await qmp.ok("qmp_capabilities") == {}


@pytest.mark.parametrize("request_id", [{"a": [1, None]}, [1, "two"], None, "x", 7, 2.5, True])
@bounded(5)
async def test_ids_are_echoed_verbatim(sock_dir: Path, request_id: Any) -> None:
    async with sim_vm(sock_dir) as (_, qmp_path, _), qmp_client(qmp_path) as qmp:
        _, reply = await qmp.execute("query-name", id=request_id)
        assert reply == {"return": {"name": "vm"}, "id": request_id}
        assert list(reply) == ["return", "id"]
        _, reply = await qmp.execute("no-such", id=request_id)
        assert list(reply) == ["id", "error"]
        assert reply["id"] == request_id


@bounded(5)
async def test_run_state_commands_and_events(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (_, qmp_path, _), qmp_client(qmp_path) as qmp:

        async def status() -> tuple[str, bool]:
            result = await qmp.ok("query-status")
            assert result["singlestep"] is False
            return result["status"], result["running"]

        assert await status() == ("running", True)
        events, reply = await qmp.execute("stop")
        assert [e["event"] for e in events] == ["STOP"] and reply == {"return": {}}
        assert "data" not in events[0]
        stamp = events[0]["timestamp"]
        assert set(stamp) == {"seconds", "microseconds"}
        assert abs(stamp["seconds"] + stamp["microseconds"] / 1e6 - time.time()) < 5
        assert await status() == ("paused", False)
        assert await qmp.ok("stop") == {}  # already paused: no event
        events, _ = await qmp.execute("cont")
        assert [e["event"] for e in events] == ["RESUME"]
        assert await qmp.ok("cont") == {}  # already running: no event
        events, _ = await qmp.execute("system_reset")
        assert [(e["event"], e["data"]) for e in events] == [
            ("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        ]
        assert await status() == ("running", True)
        await qmp.execute("stop")
        await qmp.execute("system_reset")  # a reset while paused leaves prelaunch, as QEMU 7.2
        assert await status() == ("prelaunch", False)


@bounded(5)
async def test_start_paused_is_prelaunch(sock_dir: Path) -> None:
    async with sim_vm(sock_dir, paused=True) as (vm, qmp_path, _), qmp_client(qmp_path) as qmp:
        assert (await qmp.ok("query-status"))["status"] == "prelaunch"
        assert await qmp.ok("stop") == {}  # nothing to stop
        assert vm.state().status == "prelaunch"
        events, _ = await qmp.execute("cont")
        assert [e["event"] for e in events] == ["RESUME"]
        assert (await qmp.ok("query-status"))["status"] == "running"


@bounded(5)
async def test_queries(sock_dir: Path) -> None:
    async with (
        sim_vm(sock_dir, smp=SmpTopology(cpus=4, sockets=2, cores=2)) as (_, qmp_path, _),
        qmp_client(qmp_path) as qmp,
    ):
        assert await qmp.ok("query-version") == {
            "qemu": {"micro": 0, "minor": 2, "major": 7},
            "package": "trioctl-sim",
        }
        assert await qmp.ok("query-name") == {"name": "vm"}
        cpus = await qmp.ok("query-cpus-fast")
        assert [c["cpu-index"] for c in cpus] == [0, 1, 2, 3]
        assert cpus[3]["props"] == {"core-id": 1, "thread-id": 0, "socket-id": 1}
        assert {tuple(c) for c in cpus} == {
            ("thread-id", "props", "qom-path", "cpu-index", "target")
        }
        assert cpus[0]["target"] == "x86_64"
        names = [c["name"] for c in await qmp.ok("query-commands")]
        for name in (
            "qmp_capabilities", "query-status", "stop", "cont", "system_reset",
            "system_powerdown", "quit", "query-version", "query-name", "query-cpus-fast",
            "query-commands", "x-trioctl-sim-fault",
        ):  # fmt: skip
            assert name in names


@bounded(5)
async def test_query_name_without_name(sock_dir: Path) -> None:
    async with sim_vm(sock_dir, name=None) as (_, qmp_path, _), qmp_client(qmp_path) as qmp:
        assert await qmp.ok("query-name") == {}


GE = "GenericError"
NO_ID = object()

# Requests and QEMU 7.2's replies to them (observed): request, id, class, desc.
QEMU_ERRORS: list[tuple[bytes, Any, str, str]] = [
    (b'{"execute":"foo","id":"x"}', "x", "CommandNotFound", "The command foo has not been found"),
    (b"[1,2]", NO_ID, GE, "QMP input must be a JSON object"),
    (b'"str"', NO_ID, GE, "QMP input must be a JSON object"),
    (b"{bad json}", NO_ID, GE, "JSON parse error, invalid keyword 'bad'"),
    (b'{"id":5}', 5, GE, "QMP input lacks member 'execute'"),
    (b'{"execute":"query-status","foo":1}', NO_ID, GE, "QMP input member 'foo' is unexpected"),
    (b'{"exec-oob":"query-status"}', NO_ID, GE, "QMP input member 'exec-oob' is unexpected"),
    (
        b'{"execute":"query-status","arguments":[1]}',
        NO_ID,
        GE,
        "QMP input member 'arguments' must be an object",
    ),
    (
        b'{"execute":"query-status","id":1,"arguments":5}',
        1,
        GE,
        "QMP input member 'arguments' must be an object",
    ),
    (b'{"execute":"query-status","arguments":{"x":1}}', NO_ID, GE, "Parameter 'x' is unexpected"),
    (b'{"execute":5}', NO_ID, GE, "QMP input member 'execute' must be a string"),
    (b"}", NO_ID, GE, "JSON parse error, expecting value"),
    # The simulator's own command, checked the QAPI way.
    (b'{"execute":"x-trioctl-sim-fault"}', NO_ID, GE, "Parameter 'mode' is missing"),
    (
        b'{"execute":"x-trioctl-sim-fault","arguments":{"mode":1}}',
        NO_ID,
        GE,
        "Invalid parameter type for 'mode', expected: string",
    ),
    (
        b'{"execute":"x-trioctl-sim-fault","arguments":{"mode":"explode"}}',
        NO_ID,
        GE,
        "Parameter 'mode' does not accept value 'explode'",
    ),
    (
        b'{"execute":"x-trioctl-sim-fault","arguments":{"mode":"slow","delay":-1}}',
        NO_ID,
        GE,
        "Parameter 'delay' expects a non-negative number",
    ),
]


@bounded(5)
async def test_error_replies(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (_, qmp_path, _), qmp_client(qmp_path) as qmp:
        for request, request_id, error_class, desc in QEMU_ERRORS:
            await qmp.send(request)
            expected: dict[str, Any] = {} if request_id is NO_ID else {"id": request_id}
            expected["error"] = {"class": error_class, "desc": desc}
            reply = await qmp.message()
            assert reply == expected, request
            assert list(reply) == list(expected), request  # QEMU's key order
        # The connection still works after all that.
        assert await qmp.ok("query-name") == {"name": "vm"}


@bounded(5)
async def test_input_is_a_stream_not_lines(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (_, qmp_path, _), qmp_client(qmp_path) as qmp:
        await qmp.send(b'{"execute":"query-name","id":1}{"execute":"query-name","id":2}')
        assert (await qmp.message())["id"] == 1
        assert (await qmp.message())["id"] == 2
        for byte in b'\n  {"execute": "query-name",\n "id": 3}':
            await qmp.send(bytes([byte]))
        assert await qmp.message() == {"return": {"name": "vm"}, "id": 3}


@bounded(5)
async def test_oversized_input_drops_the_connection(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (vm, qmp_path, _):
        async with qmp_client(qmp_path) as qmp:
            # The VM hangs up after 10 MiB of unfinished input, so the rest
            # of the write fails (EPIPE).
            with pytest.raises(trio.BrokenResourceError):
                await qmp.send(b'"' + b"a" * (12 * 1024 * 1024))
        async with qmp_client(qmp_path) as qmp:
            assert await qmp.ok("query-name") == {"name": "vm"}
        assert vm.alive


@bounded(5)
async def test_one_client_at_a_time(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (vm, qmp_path, _):
        async with qmp_client(qmp_path) as first:
            await first.execute("stop")
            stream = await trio.open_unix_socket(str(qmp_path))
            async with stream:
                second = Qmp(stream)
                # Connected (in the backlog) but not served: no greeting yet.
                assert await second.silent_for(0.2)
                assert vm.state().connected
                await first.stream.aclose()
                assert "QMP" in await second.message()
                # A fresh connection must negotiate again; the VM kept its state.
                _, reply = await second.execute("query-status")
                assert reply["error"]["class"] == "CommandNotFound"
                await second.ok("qmp_capabilities")
                assert (await second.ok("query-status"))["status"] == "paused"


@bounded(5)
async def test_terminate_sends_shutdown_only_to_a_negotiated_client(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (vm, qmp_path, control_path):
        async with qmp_client(qmp_path, negotiate=False) as qmp:
            await qmp.message()
            state = await control_request(str(control_path), "x-trioctl-sim-state")
            assert state["connected"] and not state["negotiated"]
            await vm.terminate()  # what SIGTERM does
            await qmp.expect_eof()  # no event: not negotiated
        assert vm.exit_code == 0 and not qmp_path.exists()
    async with sim_vm(sock_dir) as (vm, qmp_path, _), qmp_client(qmp_path) as qmp:
        await vm.terminate()
        event = await qmp.message()
        assert (event["event"], event["data"]) == (
            "SHUTDOWN",
            {"guest": False, "reason": "host-signal"},
        )
        await qmp.expect_eof()


@bounded(5)
async def test_powerdown_shuts_the_guest_down(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (vm, qmp_path, _), qmp_client(qmp_path) as qmp:
        start = trio.current_time()
        events, reply = await qmp.execute("system_powerdown", id=1)
        assert [e["event"] for e in events] == ["POWERDOWN"] and reply == {"return": {}, "id": 1}
        shutdown = await qmp.message()
        assert shutdown["event"] == "SHUTDOWN"
        assert shutdown["data"] == {"guest": True, "reason": "guest-shutdown"}
        assert 0.05 <= trio.current_time() - start < 2
        await qmp.expect_eof()
        assert vm.exit_code == 0
        assert not qmp_path.exists()
        assert vm.state().status == "shutdown"


@bounded(5)
async def test_powerdown_waits_for_a_paused_guest(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (_, qmp_path, _), qmp_client(qmp_path) as qmp:
        await qmp.execute("stop")
        events, _ = await qmp.execute("system_powerdown")
        assert [e["event"] for e in events] == ["POWERDOWN"]
        assert await qmp.silent_for(0.3)
        events, _ = await qmp.execute("cont")
        assert [e["event"] for e in events] == ["RESUME"]
        assert (await qmp.message())["event"] == "SHUTDOWN"
        await qmp.expect_eof()


@bounded(5)
async def test_powerdown_ignored(sock_dir: Path) -> None:
    async with (
        sim_vm(sock_dir, powerdown="ignore") as (vm, qmp_path, _),
        qmp_client(qmp_path) as qmp,
    ):
        events, _ = await qmp.execute("system_powerdown")
        assert [e["event"] for e in events] == ["POWERDOWN"]
        assert await qmp.silent_for(0.3)
        assert vm.alive


@bounded(5)
async def test_quit(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (vm, qmp_path, _), qmp_client(qmp_path) as qmp:
        events, reply = await qmp.execute("quit", id="q")
        assert [(e["event"], e["data"]) for e in events] == [
            ("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        ]
        assert reply == {"return": {}, "id": "q"}
        await qmp.expect_eof()
        assert vm.exit_code == 0
        assert not qmp_path.exists()


# -- faults, in-process -------------------------------------------------------------------


async def fault(control_path: Path, mode: str, **arguments: Any) -> None:
    assert (
        await control_request(str(control_path), "x-trioctl-sim-fault", {"mode": mode, **arguments})
        == {}
    )


@pytest.mark.parametrize("via", ["qmp", "control"])
@bounded(5)
async def test_fault_hang_then_clear(sock_dir: Path, via: str) -> None:
    async with sim_vm(sock_dir) as (vm, qmp_path, control_path), qmp_client(qmp_path) as qmp:
        if via == "qmp":
            assert await qmp.ok("x-trioctl-sim-fault", {"mode": "hang"}) == {}
        else:
            await fault(control_path, "hang")
        await qmp.send({"execute": "query-name", "id": 1})
        await qmp.send({"execute": "stop", "id": 2})
        assert await qmp.silent_for(0.3)
        # The control socket still answers, and tells the truth.
        state = await control_request(str(control_path), "x-trioctl-sim-state")
        assert state["fault"] == {"mode": "hang"}
        assert state["status"] == "running" and state["connected"]
        # A new connection would get no greeting either; clear the fault.
        await fault(control_path, "none")
        assert await qmp.message() == {"return": {"name": "vm"}, "id": 1}
        events, reply = await qmp.reply()
        assert [e["event"] for e in events] == ["STOP"] and reply["id"] == 2
        assert vm.state().fault.mode == "none"


@bounded(5)
async def test_fault_hang_blocks_the_greeting(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (_, qmp_path, control_path):
        await fault(control_path, "hang")
        async with qmp_client(qmp_path, negotiate=False) as qmp:
            assert await qmp.silent_for(0.2)
            await fault(control_path, "none")
            assert "QMP" in await qmp.message()


@pytest.mark.parametrize("via", ["qmp", "control"])
@bounded(5)
async def test_fault_slow(sock_dir: Path, via: str) -> None:
    async with sim_vm(sock_dir) as (_, qmp_path, control_path), qmp_client(qmp_path) as qmp:
        if via == "qmp":
            assert await qmp.ok("x-trioctl-sim-fault", {"mode": "slow", "delay": 0.2}) == {}
        else:
            await fault(control_path, "slow", delay=0.2)
        state = await control_request(str(control_path), "x-trioctl-sim-state")
        assert state["fault"] == {"mode": "slow", "delay": 0.2}
        start = trio.current_time()
        await qmp.send({"execute": "query-name", "id": 1})
        await qmp.send({"execute": "query-status", "id": 2})
        assert (await qmp.message())["id"] == 1
        assert (await qmp.message())["id"] == 2
        assert trio.current_time() - start >= 0.4  # in order, each delayed
        await fault(control_path, "none")
        state = await control_request(str(control_path), "x-trioctl-sim-state")
        assert state["fault"] == {"mode": "none"}
        assert await qmp.ok("query-name") == {"name": "vm"}


@pytest.mark.parametrize("via", ["qmp", "control"])
@bounded(5)
async def test_fault_drop(sock_dir: Path, via: str) -> None:
    async with sim_vm(sock_dir) as (vm, qmp_path, control_path):
        async with qmp_client(qmp_path) as qmp:
            await qmp.execute("stop")
            if via == "qmp":
                assert await qmp.ok("x-trioctl-sim-fault", {"mode": "drop"}) == {}
            else:
                await fault(control_path, "drop")
            await qmp.expect_eof()
        async with qmp_client(qmp_path) as qmp:
            assert (await qmp.ok("query-status"))["status"] == "paused"
        assert vm.alive and vm.state().fault.mode == "none"


@pytest.mark.parametrize("via", ["qmp", "control"])
@bounded(5)
async def test_fault_garbage(sock_dir: Path, via: str) -> None:
    async with sim_vm(sock_dir) as (_, qmp_path, control_path), qmp_client(qmp_path) as qmp:
        if via == "qmp":
            await qmp.send({"execute": "x-trioctl-sim-fault", "arguments": {"mode": "garbage"}})
            assert await qmp.message() == {"return": {}}
        else:
            await fault(control_path, "garbage")
        line = await qmp.raw_line()
        assert line + b"\r\n" == GARBAGE
        failure = JsonStreamParser().feed(line + b"\r\n")[0]
        assert isinstance(failure, ParseFailure)
        assert await qmp.ok("query-name") == {"name": "vm"}


@pytest.mark.parametrize("via", ["qmp", "control"])
@bounded(5)
async def test_fault_crash_in_process_ends_only_the_vm(sock_dir: Path, via: str) -> None:
    async with sim_vm(sock_dir) as (vm, qmp_path, control_path), qmp_client(qmp_path) as qmp:
        if via == "qmp":
            await qmp.send(
                {"execute": "x-trioctl-sim-fault", "arguments": {"mode": "crash", "exit-code": 9}}
            )
            assert await qmp.message() == {"return": {}}
        else:
            await fault(control_path, "crash", **{"exit-code": 9})
        await qmp.expect_eof()  # no SHUTDOWN event
        assert vm.exit_code == 9
        assert not qmp_path.exists()
        state = await control_request(str(control_path), "x-trioctl-sim-state")
        assert state["status"] == "crashed" and not state["alive"]
        with pytest.raises(QmpCommandError, match="is not running"):
            await fault(control_path, "hang")


@bounded(5)
async def test_control_socket_errors_and_clients(sock_dir: Path) -> None:
    async with sim_vm(sock_dir) as (_, _, control_path):
        with pytest.raises(QmpCommandError) as caught:
            await control_request(str(control_path), "x-nope")
        assert caught.value.error_class == "CommandNotFound"
        with pytest.raises(QmpCommandError, match="does not accept value 'boom'"):
            await fault(control_path, "boom")
        with pytest.raises(QmpCommandError, match="No VM named 'other'"):
            await fault(control_path, "none", vm="other")
        await fault(control_path, "none", vm="vm")
        with pytest.raises(QmpCommandError, match="Parameter 'x' is unexpected"):
            await control_request(str(control_path), "x-trioctl-sim-state", {"x": 1})
        # Several clients at once, several requests per line stream, ids echoed.
        streams = [await trio.open_unix_socket(str(control_path)) for _ in range(3)]
        try:
            for index, stream in enumerate(streams):
                await stream.send_all(
                    b"not json\n"
                    + json.dumps({"execute": "x-trioctl-sim-state", "id": index}).encode()
                    + b"\n"
                )
            for index, stream in enumerate(streams):
                data = b""
                while data.count(b"\n") < 2:
                    data += await stream.receive_some(65536)
                bad, good = (json.loads(line) for line in data.splitlines())
                assert bad["error"]["class"] == "GenericError"
                assert bad["error"]["desc"].startswith("JSON parse error")
                assert good["id"] == index and good["return"]["name"] == "vm"
        finally:
            for stream in streams:
                await stream.aclose()


# -- real processes -----------------------------------------------------------------------


@pytest.mark.slow
@bounded(10)
async def test_foreground_process_and_sigterm(sock_dir: Path, procs: Procs) -> None:
    qmp_path, pidfile, control_path = sock_dir / "f.qmp", sock_dir / "f.pid", sock_dir / "f.ctl"
    proc = procs.start(
        "-name", "fg", "-qmp", qmp_arg(qmp_path), "-pidfile", pidfile,
        "-sim-control", f"unix:{control_path}",
    )  # fmt: skip
    await wait_for_socket(control_path)
    assert pidfile.read_text() == f"{proc.pid}\n"
    assert pidfile.stat().st_mode & 0o777 == 0o600
    async with qmp_client(qmp_path) as qmp:
        assert await qmp.ok("query-name") == {"name": "fg"}
        state = await control_request(str(control_path), "x-trioctl-sim-state")
        assert state["pid"] == proc.pid and state["negotiated"]
        proc.send_signal(signal.SIGTERM)
        event = await qmp.message()
        assert event["event"] == "SHUTDOWN"
        assert event["data"] == {"guest": False, "reason": "host-signal"}
        await qmp.expect_eof()
    assert await wait_exit(proc) == 0
    assert proc.stderr is not None
    assert proc.stderr.read() == b"trioctl-sim: terminating on signal 15\n"
    assert not qmp_path.exists() and not pidfile.exists() and not control_path.exists()


@pytest.mark.slow
@bounded(10)
async def test_quit_ends_the_process(sock_dir: Path, procs: Procs) -> None:
    qmp_path = sock_dir / "q.qmp"
    proc = procs.start("-qmp", qmp_arg(qmp_path), "-S")
    await wait_for_socket(qmp_path)
    async with qmp_client(qmp_path) as qmp:
        assert (await qmp.ok("query-status"))["status"] == "prelaunch"
        events, _ = await qmp.execute("quit")
        assert [e["event"] for e in events] == ["SHUTDOWN"]
        await qmp.expect_eof()
    assert await wait_exit(proc) == 0
    assert not qmp_path.exists()


@pytest.mark.slow
@bounded(10)
async def test_daemonize(sock_dir: Path, procs: Procs) -> None:
    qmp_path, pidfile = sock_dir / "d.qmp", sock_dir / "d.pid"
    pid = procs.daemon(pidfile, "-name", "guest=dm", "-qmp", qmp_arg(qmp_path))
    # The parent returned only after the socket was bound and the pidfile written.
    assert qmp_path.exists()
    assert pid != os.getpid()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"trioctl.sim" in cmdline and b"-daemonize" in cmdline
    assert os.getsid(pid) == pid  # setsid: its own session
    async with qmp_client(qmp_path) as qmp:
        assert await qmp.ok("query-name") == {"name": "dm"}
    os.kill(pid, signal.SIGTERM)
    while qmp_path.exists() or pidfile.exists():  # it cleans up as it exits
        await trio.sleep(0.01)


@pytest.mark.slow
def test_daemonize_failures_exit_1(sock_dir: Path) -> None:
    missing = sock_dir / "missing"
    done = subprocess.run(
        [*SIM, "-qmp", qmp_arg(missing / "x.qmp"), "-daemonize"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.decode() == (
        f"trioctl-sim: -qmp unix:{missing}/x.qmp,server=on,wait=off: "
        f"Failed to bind socket to {missing}/x.qmp: No such file or directory\n"
    )
    done = subprocess.run(
        [*SIM, "-qmp", qmp_arg(sock_dir / "y.qmp"), "-pidfile", missing / "p", "-daemonize"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 1
    assert b"cannot create PID file: Could not create" in done.stderr
    assert not (sock_dir / "y.qmp").exists()


@pytest.mark.slow
@pytest.mark.parametrize("via", ["qmp", "control"])
@bounded(10)
async def test_crash_exits_the_process_with_the_code(
    sock_dir: Path, procs: Procs, via: str
) -> None:
    qmp_path, control_path = sock_dir / "c.qmp", sock_dir / "c.ctl"
    proc = procs.start("-qmp", qmp_arg(qmp_path), "-sim-control", f"unix:{control_path}")
    await wait_for_socket(control_path)
    async with qmp_client(qmp_path) as qmp:
        if via == "qmp":
            await qmp.send(
                {"execute": "x-trioctl-sim-fault", "arguments": {"mode": "crash", "exit-code": 7}}
            )
            assert await qmp.message() == {"return": {}}
        else:
            await fault(control_path, "crash", **{"exit-code": 7})
        await qmp.expect_eof()  # no SHUTDOWN
    assert await wait_exit(proc) == 7
    assert qmp_path.exists()  # a crashed QEMU leaves its socket file behind


@pytest.mark.slow
@bounded(10)
async def test_sigstop_is_a_real_hang(sock_dir: Path, procs: Procs) -> None:
    qmp_path, pidfile, control_path = sock_dir / "s.qmp", sock_dir / "s.pid", sock_dir / "s.ctl"
    pid = procs.daemon(pidfile, "-qmp", qmp_arg(qmp_path), "-sim-control", f"unix:{control_path}")
    async with qmp_client(qmp_path) as qmp:
        os.kill(pid, signal.SIGSTOP)
        try:
            await qmp.send({"execute": "query-status", "id": "late"})
            assert await qmp.silent_for(0.3)
            with trio.move_on_after(0.2) as scope:
                await control_request(str(control_path), "x-trioctl-sim-state")
            assert scope.cancelled_caught  # the whole process is stopped
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (await qmp.message())["id"] == "late"


# -- many VMs in one process --------------------------------------------------------------


@pytest.mark.slow
@bounded(15)
async def test_many_mode(sock_dir: Path, procs: Procs) -> None:
    vm_dir = sock_dir / "vms"
    proc = procs.start("many", "--dir", vm_dir, "--count", "50")
    control = str(vm_dir / "control.sock")
    await wait_for_socket(vm_dir / "control.sock")
    assert len(list(vm_dir.glob("vm*.qmp"))) == 50
    assert await control_request(control, "x-trioctl-sim-state") == {
        "count": 50, "alive": 50, "connected": 0, "pid": proc.pid,
    }  # fmt: skip

    async def talk(name: str) -> None:
        async with qmp_client(vm_dir / f"{name}.qmp") as qmp:
            assert await qmp.ok("query-name") == {"name": name}

    async with trio.open_nursery() as nursery:
        for index in (0, 7, 13, 21, 49):
            nursery.start_soon(talk, f"vm{index}")

    # State is per VM.
    async with qmp_client(vm_dir / "vm1.qmp") as qmp:
        await qmp.execute("stop")
    async with qmp_client(vm_dir / "vm2.qmp") as qmp:
        assert (await qmp.ok("query-status"))["status"] == "running"

    # A hang on vm3 leaves the others answering.
    await control_request(control, "x-trioctl-sim-fault", {"vm": "vm3", "mode": "hang"})
    async with qmp_client(vm_dir / "vm3.qmp", negotiate=False) as hung:
        assert await hung.silent_for(0.2)
        await talk("vm4")
        state = await control_request(control, "x-trioctl-sim-state", {"vm": "vm3"})
        assert state["fault"] == {"mode": "hang"} and state["connected"]
        await control_request(control, "x-trioctl-sim-fault", {"vm": "vm3", "mode": "none"})
        assert "QMP" in await hung.message()

    # A crash takes down one VM's socket only.
    with pytest.raises(QmpCommandError, match="Parameter 'vm' is missing"):
        await control_request(control, "x-trioctl-sim-fault", {"mode": "crash"})
    await control_request(control, "x-trioctl-sim-fault", {"vm": "vm5", "mode": "crash"})
    while (vm_dir / "vm5.qmp").exists():
        await trio.sleep(0.01)
    with pytest.raises(FileNotFoundError):
        await trio.open_unix_socket(str(vm_dir / "vm5.qmp"))
    await talk("vm6")
    summary = await control_request(control, "x-trioctl-sim-state")
    assert summary["alive"] == 49

    # Quitting one VM ends that VM; the process keeps serving the rest.
    async with qmp_client(vm_dir / "vm8.qmp") as qmp:
        await qmp.execute("quit")
        await qmp.expect_eof()
    await talk("vm9")
    assert proc.poll() is None

    proc.send_signal(signal.SIGTERM)
    assert await wait_exit(proc) == 0
    assert list(vm_dir.iterdir()) == []


# -- against real QEMU ----------------------------------------------------------------------


TRANSCRIPT: list[bytes] = [
    b'{"execute": "query-status", "id": 1}',
    b'{"execute": "qmp_capabilities", "id": {"a": [1]}}',
    b'{"execute": "qmp_capabilities"}',
    b'{"execute": "query-status", "id": [1, "x"]}',
    b'{"execute": "stop", "id": null}',
    b'{"execute": "query-status"}',
    b'{"execute": "stop"}',
    b'{"execute": "cont", "id": 2}',
    b'{"execute": "query-version"}',
    b'{"execute": "query-name"}',
    b'{"execute": "no-such-command", "id": "u"}',
    b'{"execute": "system_reset"}',
    b"{bad json}",
    b"[1, 2]",
    b'"str"',
    b"}",
    b'{"id": 5}',
    b'{"execute": "query-status", "foo": 1}',
    b'{"execute": "query-status", "arguments": [1]}',
    b'{"execute": "query-status", "arguments": {"x": 1}}',
    b'{"execute": 5}',
    b'{"execute": "quit", "id": 9}',
]


async def run_transcript(qmp_path: Path) -> list[Any]:
    """Greeting, then per request: the events and the reply; then EOF."""
    async with qmp_client(qmp_path, negotiate=False) as qmp:
        steps: list[Any] = [shape(await qmp.message())]
        for request in TRANSCRIPT:
            await qmp.send(request)
            events, reply = await qmp.reply()
            steps.append((request, [shape(e) for e in events], shape(reply)))
        await qmp.expect_eof()
    return steps


@pytest.mark.slow
@pytest.mark.qemu
@bounded(15)
async def test_transcript_matches_real_qemu(sock_dir: Path, procs: Procs, qemu_binary: str) -> None:
    common = ["-machine", "none", "-nodefaults", "-display", "none", "-name", "tr"]
    qemu_qmp, qemu_pid = sock_dir / "qemu.qmp", sock_dir / "qemu.pid"
    procs.pidfiles.append(qemu_pid)
    done = await trio.run_process(
        [qemu_binary, *common, "-qmp", qmp_arg(qemu_qmp), "-pidfile", str(qemu_pid), "-daemonize"],
        capture_stdout=True,
        capture_stderr=True,
    )
    assert done.returncode == 0, done.stderr
    sim_qmp = sock_dir / "sim.qmp"
    procs.daemon(sock_dir / "sim.pid", *common, "-qmp", qmp_arg(sim_qmp))

    qemu_steps = await run_transcript(qemu_qmp)
    sim_steps = await run_transcript(sim_qmp)
    assert sim_steps[0] == qemu_steps[0]
    for sim_step, qemu_step in zip(sim_steps[1:], qemu_steps[1:], strict=True):
        assert sim_step == qemu_step
    # Sanity: the script really exercised events and errors.
    assert any(events for _, events, _ in qemu_steps[1:])
    assert sum("error" in reply for _, _, reply in qemu_steps[1:]) >= 10
