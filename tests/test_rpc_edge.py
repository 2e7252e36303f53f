"""The RPC edge against strangers: batches, floods, handshakes, browsers.

Each finding of issue 11 as a test over real local sockets, against a daemon
run in-process (so its descriptors are this process's ``/proc/self/fd``).
Raw clients speak WebSocket through wsproto directly, so a test decides
exactly what is sent and when, and whether anything is ever read. Every test
is bounded by ``fail_after``; floods have fixed counts and wait on conditions,
never on sleeps.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import wsproto
import wsproto.events as wse

import trioctl
from trioctl import procfs
from trioctl._client import connect
from trioctl._procedures import Role
from trioctl._server import Server, Tokens

from .helpers import exchange, raw_ws, running_daemon, wait_until


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    return procfs.read_stat(os.getpid()).rss_kib * 1024


class RawClient:
    """A WebSocket client over wsproto: handshake, frames out, frames in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)

    @classmethod
    async def handshake(
        cls,
        port: int,
        path: str = "/",
        *,
        token: str | None = None,
        origin: str | None = None,
        subprotocols: list[str] | None = None,
    ) -> tuple[RawClient, int, str | None]:
        """Open and handshake; (client, HTTP status, selected subprotocol)."""
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(stream)
        headers = []
        if token is not None:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        await stream.send_all(
            client.ws.send(
                wse.Request(
                    host="127.0.0.1",
                    target=path,
                    extra_headers=headers,
                    subprotocols=subprotocols or [],
                )
            )
        )
        while True:
            data = await stream.receive_some()
            if not data:
                return client, 0, None
            client.ws.receive_data(data)
            for event in client.ws.events():
                if isinstance(event, wse.AcceptConnection):
                    return client, 101, event.subprotocol
                if isinstance(event, wse.RejectConnection):
                    return client, event.status_code, None

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(wse.Message(data=text)))

    async def receive_text(self) -> str:
        parts: list[str] = []
        while True:
            for event in self.ws.events():
                if isinstance(event, wse.TextMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        return "".join(parts)
                elif isinstance(event, wse.Ping):
                    await self.stream.send_all(self.ws.send(event.response()))
                elif isinstance(event, wse.CloseConnection):
                    raise EOFError("closed")
            data = await self.stream.receive_some()
            if not data:
                raise EOFError("EOF")
            self.ws.receive_data(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


def call(method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        message["params"] = params
    return message


# -- batches ----------------------------------------------------------------------------


async def test_batches_up_to_max_batch_are_answered_whatever_max_client_requests(
    sock_dir: Path,
) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir, server__max_client_requests=2) as daemon:
            async with raw_ws(daemon.url, daemon.token) as ws:
                for size in (1, 5, 6, 100):
                    batch = [call("connect.get_version", id=i) for i in range(size)]
                    replies = await exchange(ws, json.dumps(batch))
                    assert sorted(r["id"] for r in replies) == list(range(size))
                    assert all(r["result"]["protocol"] == 1 for r in replies)
                # Over the bound: still an array (JSON-RPC 2.0 section 6), one
                # error per item with its id, nothing run, the session goes on.
                batch = [
                    call("domain.define", {"definition": {"name": f"b{i}"}}, i) for i in range(101)
                ]
                replies = await exchange(ws, json.dumps([*batch, 5, {"jsonrpc": "2.0"}]))
                assert [r["id"] for r in replies] == [*range(101), None, None]
                for reply in replies:
                    assert reply["error"]["code"] == -32600
                    assert reply["error"]["data"] == {
                        "reason": "LIMIT_EXCEEDED",
                        "limit": "max_batch",
                        "max_batch": 100,
                    }
                assert daemon.driver.list_domains() == []
                reply = await exchange(ws, json.dumps(call("connect.list_domains", id=7)))
                assert reply == {"jsonrpc": "2.0", "result": {"domains": []}, "id": 7}


async def test_batch_calls_run_under_the_session_call_limit(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir, server__max_client_requests=3) as daemon:
            running = peak = 0
            real = daemon.server._invoke

            async def counting(*args: Any) -> Any:
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                try:
                    await trio.sleep(0.01)
                    return await real(*args)
                finally:
                    running -= 1

            daemon.server._invoke = counting  # type: ignore[method-assign,assignment]
            async with raw_ws(daemon.url, daemon.token) as ws:
                batch = [call("connect.get_version", id=i) for i in range(40)]
                for _ in range(3):
                    await ws.send_message(json.dumps(batch))
                for _ in range(3):
                    assert len(json.loads(await ws.get_message())) == 40
            assert peak == 3


async def test_oversized_batch_costs_one_error_and_others_are_unaffected(sock_dir: Path) -> None:
    item = json.dumps(call("nope", id=1))
    huge = "[" + ",".join([item] * 60_000) + "]"  # about 2.4 MB
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir) as daemon,
            connect(daemon.url, daemon.token) as other,
            raw_ws(daemon.url, daemon.token) as ws,
        ):
            await ws.send_message(huge)
            # Another client is served meanwhile.
            assert (await other.get_version()).protocol == 1
            reply = json.loads(await ws.get_message())
            assert reply["error"]["data"]["reason"] == "LIMIT_EXCEEDED"
            assert len(json.dumps(reply)) < 1000
            assert (await other.get_version()).protocol == 1


@pytest.mark.slow
async def test_client_that_never_reads_holds_bounded_memory(sock_dir: Path) -> None:
    limit = 64 * 1024
    with trio.fail_after(60):
        async with running_daemon(sock_dir, server__max_output_bytes=limit) as daemon:
            assert daemon.token is not None
            client, status, _ = await RawClient.handshake(daemon.port, token=daemon.token)
            assert status == 101
            before = rss_bytes()
            # Batches of invalid items (no call, all reply) and of real calls.
            junk = json.dumps([{"x": i} for i in range(100)])
            calls = json.dumps([call("connect.list_domains", id=i) for i in range(100)])
            sent = 0
            with trio.move_on_after(5):
                while True:
                    await client.send_text(junk if sent % 2 else calls)
                    sent += 1
            session = next(iter(daemon.server._sessions.values()))
            # The client's sends block: the server stopped reading.
            assert sent < 5000
            reply_size = max(len(junk), len(calls)) * 2
            assert session.outbox.size <= limit + reply_size
            assert session.in_flight <= daemon.server.max_client_requests
            assert rss_bytes() - before < 64 * 1024 * 1024
            await client.aclose()
            await wait_until(lambda: not daemon.server._sessions, 5)


# -- sessions end with their peer ----------------------------------------------------------


@pytest.mark.slow
async def test_batch_and_leave_cycles_leave_no_session(sock_dir: Path) -> None:
    with trio.fail_after(120):
        async with running_daemon(sock_dir) as daemon:
            assert daemon.token is not None
            daemon.server.tokens = Tokens({"r" * 20: Role.READ, daemon.token: Role.ADMIN})
            batch = json.dumps([call("connect.list_domains", id=i) for i in range(6)])
            for cycle in range(500):
                client, status, _ = await RawClient.handshake(daemon.port, token="r" * 20)
                assert status == 101
                await client.send_text(batch)
                if cycle % 2:
                    # A polite close frame, then gone without waiting.
                    await client.stream.send_all(client.ws.send(wse.CloseConnection(code=1000)))
                await client.aclose()
            await wait_until(lambda: not daemon.server._sessions, 5)
            async with connect(daemon.admin_url, daemon.token) as admin:
                assert [c.endpoint for c in await admin.list_clients()] == ["admin"]


async def test_a_peer_that_leaves_while_its_calls_are_stuck_is_reaped(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir, server__max_client_requests=1) as daemon:
            assert daemon.token is not None
            gate = trio.Event()
            real = daemon.server._invoke

            async def stuck(*args: Any) -> Any:
                await gate.wait()
                return await real(*args)

            daemon.server._invoke = stuck  # type: ignore[method-assign,assignment]
            baseline = fd_count()
            client, _, _ = await RawClient.handshake(daemon.port, token=daemon.token)
            # A batch bigger than max_client_requests, then more: the reader
            # is stopped, waiting for a slot, when the peer goes away.
            for _ in range(3):
                await client.send_text(
                    json.dumps([call("connect.get_version", id=i) for i in range(6)])
                )
            await wait_until(lambda: len(daemon.server._sessions) == 1, 5)
            await client.aclose()
            await wait_until(lambda: not daemon.server._sessions and fd_count() <= baseline)


# -- before the handshake ------------------------------------------------------------------


@pytest.mark.slow
async def test_connect_and_close_flood_returns_to_baseline(sock_dir: Path) -> None:
    with trio.fail_after(120):
        async with running_daemon(sock_dir) as daemon:
            async with connect(daemon.url, daemon.token) as client:
                await client.get_version()
                baseline = fd_count()
                served = 0
                done = trio.Event()

                async def keep_calling() -> None:
                    nonlocal served
                    while not done.is_set():
                        await client.get_version()
                        served += 1

                async def flood(n: int) -> None:
                    for _ in range(n):
                        stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
                        await stream.aclose()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(keep_calling)
                    async with trio.open_nursery() as flooders:
                        for _ in range(20):
                            flooders.start_soon(flood, 100)  # 2,000 in all
                    done.set()
                assert served > 0
                with trio.fail_after(5):
                    while fd_count() > baseline:
                        await trio.sleep(0.02)
                assert daemon.server._anonymous == 0
                assert (await client.get_version()).protocol == 1
            async with connect(daemon.url, daemon.token) as fresh:
                assert (await fresh.get_version()).protocol == 1


async def test_anonymous_connections_are_bounded(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(
            sock_dir, server__max_anonymous_clients=2, server__handshake_timeout=30
        ) as daemon:
            silent = [await trio.open_tcp_stream("127.0.0.1", daemon.port) for _ in range(2)]
            await wait_until(lambda: daemon.server._anonymous == 2, 5)
            third = await trio.open_tcp_stream("127.0.0.1", daemon.port)
            with trio.fail_after(10):
                # The oldest stalled handshake is closed at once (not after the
                # 30 s handshake timeout), not the newcomer.
                assert await silent[0].receive_some() == b""
            assert daemon.server.anonymous_refused == 1
            assert daemon.server._anonymous == 2
            for stream in [*silent, third]:
                await stream.aclose()
            await wait_until(lambda: daemon.server._anonymous == 0, 2)
            async with connect(daemon.url, daemon.token) as client:
                assert (await client.get_version()).protocol == 1


async def test_admin_is_served_when_max_clients_is_full(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, server__max_clients=2) as daemon,
            raw_ws(daemon.url, daemon.token),
            raw_ws(daemon.url, daemon.token),
        ):
            with pytest.raises(trioctl.ConnectionRejected) as rejected:
                async with raw_ws(daemon.url, daemon.token):
                    pass
            assert rejected.value.status == 503
            assert rejected.value.body == "too many clients (max_clients)"
            async with connect(daemon.admin_url, daemon.token) as admin:
                assert len(await admin.list_clients()) == 3


class FakeListener(trio.abc.Listener[trio.abc.Stream]):
    """accept() fails with EMFILE ``failures`` times, then gives one silent
    in-memory connection, then waits forever."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        if self.calls == self.failures + 1:
            return trio.testing.memory_stream_pair()[1]
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass


async def test_running_out_of_fds_pauses_accepting_and_logs_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    from trioctl._config import load_config

    config = load_config(None, overrides={"driver.state_dir": "/nonexistent"})
    server = Server(config.server, None, None, tokens=None)  # type: ignore[arg-type]
    listener = FakeListener(failures=200)
    taken: list[int] = []
    real_take = server._take_reserve

    def take() -> bool:
        # The reserve comes back only after a while: as if connections closed.
        taken.append(1)
        return len(taken) > 20 and real_take()

    server._take_reserve = take  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="trioctl._server"):
        async with trio.open_nursery() as nursery:
            real_take()
            nursery.start_soon(server._accept_loop, listener, nursery)
            await trio.sleep(60)
            nursery.cancel_scope.cancel()
    server._give_back_reserve()
    lost = [r for r in caplog.records if "out of file descriptors" in r.getMessage()]
    back = [r for r in caplog.records if "available again" in r.getMessage()]
    # 200 failed accepts, one episode: one line each way, not one per accept.
    assert listener.calls == 202
    assert len(lost) == len(back) == server.fd_pauses == 1
    assert not server.fds_exhausted
    assert taken and not server._reserve


# -- browsers ------------------------------------------------------------------------------

TOKEN = "t" * 24


@pytest.mark.parametrize("auth", [True, False])
async def test_origin_and_subprotocol_matrix(sock_dir: Path, auth: bool) -> None:
    allowed = "https://ui.example:8443"
    with trio.fail_after(30):
        async with running_daemon(
            sock_dir, auth__required=auth, server__allowed_origins=[allowed]
        ) as daemon:
            if auth:
                daemon.server.tokens = Tokens({TOKEN: Role.ADMIN})
            both = ["trioctl.v1", f"bearer.{TOKEN}"]
            wrong = ["trioctl.v1", "bearer.wrong-token-xxxxxxxx"]
            evil = "https://evil.example"
            cases: list[tuple[str, dict[str, Any], int, str | None]] = [
                # (path, handshake options, status, selected subprotocol)
                ("/", {"subprotocols": both}, 101, "trioctl.v1"),
                ("/admin", {"subprotocols": both}, 101, "trioctl.v1"),
                ("/", {"token": TOKEN}, 101, None),
                ("/", {"token": TOKEN, "subprotocols": ["trioctl.v1"]}, 101, "trioctl.v1"),
                ("/", {"subprotocols": [f"bearer.{TOKEN}"]}, 400, None),
                (
                    "/",
                    {"subprotocols": wrong},
                    401 if auth else 101,
                    "trioctl.v1",
                ),
                ("/", {"subprotocols": ["trioctl.v1"]}, 401 if auth else 101, "trioctl.v1"),
                (
                    "/",
                    {"origin": allowed, "subprotocols": ["trioctl.v1", f"bearer.{TOKEN}"]},
                    101,
                    "trioctl.v1",
                ),
                ("/", {"origin": "HTTPS://UI.example:8443", "token": TOKEN}, 101, None),
                ("/", {"origin": evil, "token": TOKEN}, 403, None),
                ("/admin", {"origin": evil, "token": TOKEN}, 403, None),
                ("/admin", {"origin": evil}, 403, None),
                (
                    "/",
                    {"origin": "null", "subprotocols": ["trioctl.v1", f"bearer.{TOKEN}"]},
                    403,
                    None,
                ),
                ("/", {"origin": "https://ui.example", "token": TOKEN}, 403, None),
            ]
            for path, options, status, selected in cases:
                client, got, subprotocol = await RawClient.handshake(daemon.port, path, **options)
                try:
                    assert (path, options, got) == (path, options, status)
                    if got == 101:
                        assert subprotocol == selected
                        await client.send_text(json.dumps(call("connect.get_version")))
                        reply = json.loads(await client.receive_text())
                        assert "result" in reply or path == "/admin"
                finally:
                    await client.aclose()


# -- positional params and discovery ----------------------------------------------------


@pytest.mark.slow
async def test_positional_params(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon, raw_ws(daemon.url, daemon.token) as ws:
            reply = await exchange(ws, json.dumps(call("connect.get_version", [])))
            assert reply["result"]["protocol"] == 1
            reply = await exchange(ws, json.dumps(call("domain.define", [{"name": "p1"}])))
            assert reply["result"]["name"] == "p1"
            reply = await exchange(ws, json.dumps(call("domain.get_info", ["p1"])))
            assert reply["result"]["state"] == "shutoff"
            reply = await exchange(ws, json.dumps(call("domain.start", ["p1", True])))
            assert reply["result"]["state"] == "paused"
            reply = await exchange(ws, json.dumps(call("domain.get_info", ["p1", 2])))
            assert reply["error"]["data"]["reason"] == "INVALID_PARAMS"
            assert reply["error"]["data"]["order"] == ["name"]
            reply = await exchange(ws, json.dumps(call("connect.get_version", [1])))
            assert reply["error"]["code"] == -32602
            reply = await exchange(ws, json.dumps(call("domain.destroy", ["p1"])))
            assert reply["result"]["state"] == "shutoff"


async def test_rpc_discover_returns_the_committed_document(sock_dir: Path) -> None:
    committed = json.loads(
        (Path(__file__).resolve().parent.parent / "schemas" / "openrpc.json").read_text()
    )
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon:
            for url in (daemon.url, daemon.admin_url):
                async with raw_ws(url, daemon.token) as ws:
                    reply = await exchange(ws, json.dumps(call("rpc.discover")))
                    assert reply["result"] == committed
                    reply = await exchange(ws, json.dumps(call("rpc.discover", [])))
                    assert reply["result"] == committed
                    reply = await exchange(ws, json.dumps(call("rpc.discover", [1])))
                    assert reply["error"]["code"] == -32602
                    reply = await exchange(ws, json.dumps(call("rpc.other")))
                    assert reply["error"]["code"] == -32601


# -- the client library --------------------------------------------------------------------


async def test_connect_raises_only_trioctl_errors(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon:
            with pytest.raises(trioctl.ConnectionRejected) as rejected:
                async with connect(daemon.url, "x" * 20):
                    pass
            assert rejected.value.status == 401
            assert rejected.value.body == "a valid bearer token is required"
            assert "\n" not in rejected.value.message
            assert isinstance(rejected.value, trioctl.ConnectError)
            with pytest.raises(trioctl.ConnectError, match="not a ws"):
                async with connect("http://127.0.0.1:1/", "x" * 20):
                    pass
            async with connect(daemon.admin_url, daemon.token) as admin:
                async with connect(daemon.url, daemon.token) as client:
                    (other,) = [c for c in await admin.list_clients() if c.endpoint == "api"]
                    await admin.disconnect_client(other.id)
                    with pytest.raises(trioctl.DaemonConnectionLost) as lost:
                        await client.get_version()
                    assert not isinstance(lost.value, trioctl.MonitorError)
        # Nothing listens there now.
        with pytest.raises(trioctl.ConnectError) as refused:
            async with connect(daemon.url, "x" * 20):
                pass
        assert isinstance(refused.value.__cause__, OSError)

        # A peer that accepts TCP and never answers the handshake.
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        try:
            with pytest.raises(trioctl.ConnectTimeout):
                async with connect(f"ws://127.0.0.1:{port}/", "x" * 20, connect_timeout=0.3):
                    pass
        finally:
            for listener in listeners:
                await listener.aclose()


@pytest.mark.slow
async def test_close_never_raises_the_pong_error(sock_dir: Path) -> None:
    # A server that pings all the time: pings reach the client while it closes.
    import trio_websocket

    async def pinger(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.ping()
        except trio_websocket.ConnectionClosed:
            pass

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, pinger, "127.0.0.1", 0, None
            )
            url = f"ws://127.0.0.1:{server.port}/"
            # Each close meets a ping (then the close takes its 1 s bound, as the
            # pong error ended trio-websocket's reader); none raises.
            for _ in range(5):
                async with trioctl._client.open_websocket(url, None) as ws:
                    await ws.send_message("x")
            nursery.cancel_scope.cancel()


# -- outside tester's findings --------------------------------------------------------------


async def test_twenty_stalled_handshakes_renewed_do_not_lock_out_clients(sock_dir: Path) -> None:
    """20+ half-sent requests, renewed as soon as they are closed: the CLI's
    calls and /admin are still served (the oldest stalled one is evicted)."""
    with trio.fail_after(30):
        async with running_daemon(sock_dir, server__handshake_timeout=30) as daemon:

            async def stall_and_renew() -> None:
                while True:
                    stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
                    async with stream:
                        await stream.send_all(b"GET / HTTP/1.1\r\n")
                        with contextlib.suppress(trio.BrokenResourceError):
                            while await stream.receive_some():
                                pass
                    await trio.sleep(0.05)

            async with trio.open_nursery() as attackers:
                for _ in range(25):
                    attackers.start_soon(stall_and_renew)
                await wait_until(lambda: daemon.server._anonymous == 20, 10)
                for _ in range(3):
                    async with connect(daemon.url, daemon.token) as client:
                        assert await client.list_domains() == []
                    async with connect(daemon.admin_url, daemon.token) as admin:
                        assert (await admin.get_server_stats()).uptime_seconds >= 0
                assert daemon.server.anonymous_refused > 0
                attackers.cancel_scope.cancel()


async def test_two_origin_headers_are_refused(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(
            sock_dir, server__allowed_origins=["https://ok.example"]
        ) as daemon:
            for origins, status in (
                (["https://ok.example"], b" 101 "),
                (["https://ok.example", "https://evil.example"], b" 400 "),
                (["https://ok.example", "https://ok.example"], b" 400 "),
            ):
                stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
                head = (
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n"
                    + f"Authorization: Bearer {daemon.token}\r\n".encode()
                    + b"".join(f"Origin: {o}\r\n".encode() for o in origins)
                    + b"\r\n"
                )
                await stream.send_all(head)
                reply = await stream.receive_some()
                assert reply.startswith(b"HTTP/1.1" + status), reply
                await stream.aclose()


async def test_read_clients_cannot_take_the_write_reserve(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(
            sock_dir, server__max_clients=4, server__reserved_write_clients=2
        ) as daemon:
            assert daemon.token is not None
            read, write = "r" * 20, "w" * 20
            daemon.server.tokens = Tokens(
                {read: Role.READ, write: Role.WRITE, daemon.token: Role.ADMIN}
            )
            assert daemon.server.max_read_clients == 2
            held = [await RawClient.handshake(daemon.port, token=read) for _ in range(2)]
            assert [status for _, status, _ in held] == [101, 101]
            refused, status, _ = await RawClient.handshake(daemon.port, token=read)
            assert status == 503
            await refused.aclose()
            # Writers (and admins) still get the reserved slots.
            async with connect(daemon.url, write) as writer:
                assert await writer.list_domains() == []
                async with connect(daemon.url, daemon.token) as admin:
                    assert await admin.list_domains() == []
            for client, _, _ in held:
                await client.aclose()
            await wait_until(lambda: not daemon.server._sessions, 5)
            again, status, _ = await RawClient.handshake(daemon.port, token=read)
            assert status == 101
            await again.aclose()


async def test_a_frame_declaring_more_than_max_message_size_is_closed_with_1009(
    sock_dir: Path,
) -> None:
    """trio-websocket counts the payload as it comes: a header declaring 1 GiB
    is closed with 1009 once max_message_size bytes of it have come, without
    waiting for (or holding) the rest."""
    with trio.fail_after(30):
        async with running_daemon(sock_dir, server__max_message_size=1000) as daemon:
            stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
            async with stream:
                await stream.send_all(
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n"
                    + f"Authorization: Bearer {daemon.token}\r\n\r\n".encode()
                )
                reply = b""
                while b"\r\n\r\n" not in reply:
                    reply += await stream.receive_some()
                assert reply.startswith(b"HTTP/1.1 101 ")
                # A masked text frame header declaring 2**30 bytes (mask 0).
                header = bytes([0x81, 0x80 | 127]) + (2**30).to_bytes(8, "big") + b"\0\0\0\0"
                await stream.send_all(header + b"a" * 1500)
                received = reply.split(b"\r\n\r\n", 1)[1]
                with contextlib.suppress(trio.BrokenResourceError):
                    while len(received) < 4:
                        chunk = await stream.receive_some()
                        if not chunk:
                            break
                        received += chunk
                assert received[0] == 0x88  # a close frame
                assert int.from_bytes(received[2:4], "big") == 1009


# -- frames wsproto refuses, and frames too big (issue 14's outside trial) -------------


async def _open_raw(port: int, token: str | None) -> tuple[trio.SocketStream, bytes]:
    """A raw TCP stream after a WebSocket handshake; the bytes read past it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += await stream.receive_some()
    assert reply.startswith(b"HTTP/1.1 101 ")
    return stream, reply.split(b"\r\n\r\n", 1)[1]


async def _until_eof(stream: trio.SocketStream, received: bytes) -> bytes:
    """Everything the daemon sends until it closes the connection."""
    with contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some():
            received += chunk
    return received


def _protocol_errors(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "fields", {}).get("event") == "client_protocol_error"
    ]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        # A masked text frame (mask 0) whose payload is not UTF-8.
        (bytes([0x81, 0x84]) + b"\0\0\0\0" + b"\xff\xfe{}", 1007),
        # A client frame without a mask (RFC 6455 section 5.1).
        (bytes([0x81, 0x02]) + b"{}", 1002),
    ],
    ids=["invalid-utf8", "unmasked"],
)
async def test_a_frame_wsproto_refuses_gets_a_close_frame_and_a_log_line(
    sock_dir: Path, caplog: pytest.LogCaptureFixture, frame: bytes, code: int
) -> None:
    """trio-websocket took wsproto's verdict for a close from the peer and
    dropped the connection with no close frame, and nothing was logged."""
    caplog.set_level(logging.INFO, logger="trioctl")
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon, connect(daemon.url, daemon.token) as other:
            stream, received = await _open_raw(daemon.port, daemon.token)
            async with stream:
                await stream.send_all(frame)
                received = await _until_eof(stream, received)
            assert received[0] == 0x88  # a close frame, then the end
            assert int.from_bytes(received[2:4], "big") == code
            assert len(received) == 2 + received[1]
            [line] = _protocol_errors(caplog)
            assert line["code"] == code and line["client"].startswith("c") and line["detail"]
            assert (await other.get_version()).protocol == 1


async def test_a_frame_declaring_a_terabyte_is_closed_with_1009_at_its_header(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the header is sent: the daemon answers at once with 1009 (it
    used to wait for max_message_size bytes of payload, and an unmasked one
    was dropped silently)."""
    caplog.set_level(logging.INFO, logger="trioctl")
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon:
            for mask in (0x80, 0):
                stream, received = await _open_raw(daemon.port, daemon.token)
                async with stream:
                    header = bytes([0x81, mask | 127]) + (2**40).to_bytes(8, "big")
                    await stream.send_all(header + (b"\0\0\0\0" if mask else b""))
                    received = await _until_eof(stream, received)
                assert received[0] == 0x88
                assert int.from_bytes(received[2:4], "big") == 1009
                assert b"1099511627776" in received
            lines = _protocol_errors(caplog)
            assert [line["code"] for line in lines] == [1009, 1009]
            assert all("max_message_size" in line["detail"] for line in lines)
            await wait_until(lambda: not daemon.server._sessions, 5)


async def test_fragments_adding_up_past_max_message_size_are_closed_with_1009(
    sock_dir: Path,
) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir, server__max_message_size=1000) as daemon:
            stream, received = await _open_raw(daemon.port, daemon.token)
            async with stream:
                # Text frame of 600 (not final), then a continuation of 600.
                first = bytes([0x01, 0x80 | 126]) + (600).to_bytes(2, "big") + b"\0" * 4
                more = bytes([0x80, 0x80 | 126]) + (600).to_bytes(2, "big") + b"\0" * 4
                await stream.send_all(first + b"a" * 600 + more)
                received = await _until_eof(stream, received)
            assert int.from_bytes(received[2:4], "big") == 1009


async def test_a_large_invalid_batch_never_holds_the_loop_for_all_its_items(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 5,000 items over max_batch: still one answer per item (JSON-RPC
    2.0 section 6), but decoded, answered and encoded a step of rpc.STEP
    items at a time, other tasks running between the steps. Counted in work
    done per task step (decoded elements, answers built, ids encoded), not
    in time."""
    from trioctl._sansio import rpc

    work = 0

    class Steps(trio.abc.Instrument):
        most = 0
        start = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.start = work

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            self.most = max(self.most, work - self.start)

    def counted(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal work
            work += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(rpc._DECODER, "raw_decode", counted(rpc._DECODER.raw_decode))
    monkeypatch.setattr(rpc._ENCODER, "encode", counted(rpc._ENCODER.encode))
    monkeypatch.setattr(rpc.Invalid, "response", counted(rpc.Invalid.response))
    batch = json.dumps([call("nope", id=i) for i in range(5000)])
    with trio.fail_after(60):
        async with running_daemon(sock_dir) as daemon, raw_ws(daemon.url, daemon.token) as ws:
            steps = Steps()
            trio.lowlevel.add_instrument(steps)
            try:
                replies = await exchange(ws, batch)
            finally:
                trio.lowlevel.remove_instrument(steps)
            assert [r["id"] for r in replies] == list(range(5000))
            assert {r["error"]["data"]["reason"] for r in replies} == {"LIMIT_EXCEEDED"}
            assert work >= 15_000
            assert steps.most <= 2_000  # rpc.STEP is 1,000
