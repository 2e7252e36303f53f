"""Plain HTTP on the WebSocket listener: GET /metrics and the console's files."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
import wsproto
import wsproto.events as wse
from hypothesis import given, strategies as st
from prometheus_client.parser import text_string_to_metric_families

import trioctl
from trioctl._client import connect
from trioctl._http import PrefixedStream, own_origin
from trioctl._procedures import Role
from trioctl._tokens import Tokens

from .helpers import running_daemon

DOCS = Path(__file__).resolve().parent.parent / "docs" / "monitoring.md"
READ = "r" * 24


async def http(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        lines = [f"{method} {path} HTTP/1.1"]
        given = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
        lines += [f"{k}: {v}" for k, v in given.items()]
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *rest = head.decode().split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in rest)}
    return int(status_line.split()[1]), fields, body


@pytest.mark.slow
async def test_metrics_parse_back_and_are_documented(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon:
            async with connect(daemon.url, daemon.token) as client:
                await client.define({"name": "m1"})
                await client.start("m1")
                await client.get_stats("m1")
                with pytest.raises(trioctl.NoDomain):
                    await client.get_info("nope")
                status, fields, body = await http(daemon.port, "GET", "/metrics")
            assert status == 200
            assert fields["content-type"].startswith("text/plain; version=")
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            documented = set(re.findall(r"`(trioctl_[a-z_]+)`", DOCS.read_text()))
            assert set(families) <= documented, set(families) - documented
            assert set(documented) <= set(families), documented - set(families)

            def value(name: str, **labels: str) -> float:
                for family in families.values():
                    for sample in family.samples:
                        if sample.name == name and sample.labels == labels:
                            return float(sample.value)
                raise AssertionError(f"no {name} {labels}")

            assert value("trioctl_uptime_seconds") > 0
            assert value("trioctl_domains", state="running") == 1
            assert value("trioctl_domains_monitor", monitor="ok") == 1
            assert value("trioctl_calls_total", procedure="domain.get_stats") == 1
            assert value("trioctl_errors_total", reason="NO_DOMAIN") == 1
            assert value("trioctl_clients", endpoint="api") == 1
            assert value("trioctl_call_duration_seconds_count", procedure="domain.start") == 1
            assert value("trioctl_pool_limit", limit="max_workers") >= 1


async def test_metrics_access(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon:
            assert daemon.token is not None
            daemon.server.tokens = Tokens({READ: Role.READ, daemon.token: Role.ADMIN})
            port = daemon.port
            bearer = {"Authorization": f"Bearer {READ}"}
            # Loopback peer, loopback Host, no token: the default allows it.
            assert (await http(port, "GET", "/metrics"))[0] == 200
            assert (await http(port, "GET", "/metrics", {"Host": f"localhost:{port}"}))[0] == 200
            # A DNS name in Host (a rebinding page) needs a token.
            status, fields, _ = await http(port, "GET", "/metrics", {"Host": "evil.example"})
            assert status == 401 and fields["www-authenticate"].startswith("Bearer")
            assert (await http(port, "GET", "/metrics", {"Host": "evil.example", **bearer}))[
                0
            ] == 200
            # A wrong token is refused even from loopback.
            wrong = {"Authorization": "Bearer " + "x" * 24}
            assert (await http(port, "GET", "/metrics", wrong))[0] == 401
            assert (await http(port, "POST", "/metrics", bearer))[0] == 405
            assert (await http(port, "GET", "/nope"))[0] == 404


async def test_metrics_token_only(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir, server__metrics_access="token") as daemon:
            daemon.server.tokens = Tokens({READ: Role.READ})
            assert (await http(daemon.port, "GET", "/metrics"))[0] == 401
            bearer = {"Authorization": f"Bearer {READ}"}
            assert (await http(daemon.port, "GET", "/metrics", bearer))[0] == 200


async def test_console_files_and_its_origin(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon:
            port = daemon.port
            status, fields, body = await http(port, "GET", "/")
            assert status == 200 and fields["content-type"].startswith("text/html")
            assert b"/console.js" in body
            assert "script-src 'self'" in fields["content-security-policy"]
            for name, kind in (("/console.js", "text/javascript"), ("/console.css", "text/css")):
                status, fields, body = await http(port, "GET", name)
                assert status == 200 and fields["content-type"].startswith(kind) and body
            token = daemon.token
            assert token is not None
            cases = [
                # (Host, Origin, status): the page's own origin is allowed
                # when the Host is an address or localhost.
                (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", 101),
                (f"localhost:{port}", f"http://localhost:{port}", 101),
                (f"127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}", 403),
                (f"evil.example:{port}", f"http://evil.example:{port}", 403),
            ]
            for host, origin, expected in cases:
                assert (host, await ws_status(port, host, origin, token)) == (host, expected)


async def ws_status(port: int, host: str, origin: str, token: str) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        request = wse.Request(
            host=host,
            target="/",
            extra_headers=[(b"origin", origin.encode())],
            subprotocols=["trioctl.v1", f"bearer.{token}"],
        )
        await stream.send_all(ws.send(request))
        while data := await stream.receive_some():
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wse.AcceptConnection):
                    return 101
                if isinstance(event, wse.RejectConnection):
                    return event.status_code
    return 0


async def test_get_version_names_the_role(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon:
            assert daemon.token is not None
            daemon.server.tokens = Tokens({READ: Role.READ, daemon.token: Role.ADMIN})
            async with connect(daemon.url, READ) as reader:
                assert (await reader.get_version()).role == "read"
            async with connect(daemon.url, daemon.token) as admin:
                assert (await admin.get_version()).role == "admin"


@given(
    prefix=st.binary(max_size=64),
    rest=st.binary(max_size=64),
    sizes=st.lists(st.integers(1, 80), min_size=1, max_size=40),
)
def test_prefixed_stream_gives_back_every_byte_in_order(
    prefix: bytes, rest: bytes, sizes: list[int]
) -> None:
    async def main() -> bytes:
        left, right = trio.testing.memory_stream_pair()
        await left.send_all(rest)
        await left.aclose()
        stream = PrefixedStream(right, prefix, "peer")
        got = b""
        for size in itertools.cycle(sizes):
            chunk = await stream.receive_some(size)
            if not chunk:
                return got
            assert len(chunk) <= size
            got += chunk
        raise AssertionError("unreachable")

    assert trio.run(main) == prefix + rest


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("https://[::1]:8443", "[::1]:8443", True),
        ("http://localhost:8080", "localhost:8080", True),
        ("http://10.0.0.5:16509", "10.0.0.5:16509", True),
        ("http://vmhost:16509", "vmhost:16509", False),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
        ("http://127.0.0.1:8080", "", False),
        ("null", "127.0.0.1:8080", False),
    ],
)
def test_own_origin(origin: str, host: str, allowed: bool) -> None:
    assert own_origin(origin, host) is allowed


async def test_websocket_head_in_small_pieces(sock_dir: Path) -> None:
    """The head read before the handshake may arrive a few bytes at a time."""
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon:
            assert daemon.token is not None
            stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
            async with stream:
                ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                head = ws.send(
                    wse.Request(
                        host="127.0.0.1",
                        target="/",
                        extra_headers=[(b"authorization", f"Bearer {daemon.token}".encode())],
                    )
                )
                for i in range(0, len(head), 7):
                    await stream.send_all(head[i : i + 7])
                    await trio.lowlevel.checkpoint()
                accepted = False
                while not accepted and (data := await stream.receive_some()):
                    ws.receive_data(data)
                    accepted = any(isinstance(e, wse.AcceptConnection) for e in ws.events())
                assert accepted
            # An oversized head is refused without a reply: EOF, or a reset
            # (the server closed with the rest of it unread).
            stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
            async with stream:
                try:
                    await stream.send_all(b"GET / HTTP/1.1\r\nX: " + b"a" * 40000)
                    assert await stream.receive_some() == b""
                except trio.BrokenResourceError:
                    pass
