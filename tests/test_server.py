"""The WebSocket JSON-RPC service end to end, over real sockets.

Every procedure on the simulator and on real QEMU, every JSON-RPC error case,
the auth matrix, limits, and an independent client (the ``websockets``
library's). Each test is bounded by ``fail_after``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

import trioctl
from trioctl import (
    AccessDenied,
    InvalidParams,
    MethodNotFound,
    NoDomain,
    OperationInvalid,
)
from trioctl._client import connect
from trioctl._models import DomainState, MonitorState
from trioctl._procedures import Role
from trioctl._server import Tokens

from .helpers import exchange, no_reply_within, raw_ws, running_daemon, wait_until

BACKENDS = [pytest.param("qemu", marks=pytest.mark.qemu), "sim"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_procedure(sock_dir: Path, backend: str) -> None:
    with trio.fail_after(60):
        async with (
            running_daemon(sock_dir, driver__backend=backend) as daemon,
            connect(daemon.url, daemon.token) as client,
            connect(daemon.admin_url, daemon.token) as admin,
        ):
            version = await client.get_version()
            assert version.daemon == trioctl.__version__
            assert version.backend == backend

            await client.subscribe(["vm1"])
            info = await client.define({"name": "vm1"})
            assert info.emulator == backend
            assert info.state is DomainState.SHUTOFF
            assert [d.name for d in await client.list_domains()] == ["vm1"]
            assert await client.list_domains(DomainState.RUNNING) == []

            info = await client.start("vm1")
            assert (info.state, info.monitor) == (DomainState.RUNNING, MonitorState.OK)
            assert (await client.lookup("vm1")).pid == info.pid
            assert (await client.get_info("vm1")).state is DomainState.RUNNING
            assert (await client.get_stats("vm1")).status == "running"
            assert (await client.suspend("vm1")).state is DomainState.PAUSED
            assert (await client.resume("vm1")).state is DomainState.RUNNING
            assert (await client.reset("vm1")).state is DomainState.RUNNING
            assert await client.monitor_command("vm1", "query-name") == {"name": "vm1"}
            with pytest.raises(trioctl.MonitorError) as info_err:
                await client.monitor_command("vm1", "nope")
            assert info_err.value.data["error_class"] == "CommandNotFound"

            pools = await admin.get_threadpool()
            assert (pools.min_workers, pools.max_workers, pools.prio_workers) == (5, 20, 5)
            pools = await admin.set_threadpool(max_workers=30)
            assert pools.max_workers == 30
            with pytest.raises(InvalidParams, match="min_workers"):
                await admin.set_threadpool(min_workers=40)
            limits = await admin.set_client_limits(max_client_requests=7)
            assert limits.max_client_requests == 7
            assert (await admin.get_client_limits()).clients == 2
            clients = await admin.list_clients()
            assert {c.endpoint for c in clients} == {"api", "admin"}
            assert await admin.list_jobs() == []
            stats = await admin.get_server_stats()
            assert stats.calls["domain.start"] == 1
            assert stats.errors["MONITOR_ERROR"] == 1
            assert stats.latency["low"].count >= 1

            if backend == "sim":
                assert (await client.shutdown("vm1")).state is DomainState.SHUTOFF
                await client.start("vm1", paused=True)
            info = await client.destroy("vm1")
            assert (info.state, info.reason) == (DomainState.SHUTOFF, "destroyed")
            await client.undefine("vm1")
            with pytest.raises(NoDomain):
                await client.get_info("vm1")

            details = []
            with trio.move_on_after(5):
                async for event in client.events():
                    details.append(event.detail)
                    if event.detail == "undefined":
                        break
            assert details[0] == "defined"
            assert "started" in details
            assert "destroyed" in details
            await client.unsubscribe()
            other = next(c for c in clients if c.endpoint == "api")
            await admin.disconnect_client(other.id)
            with pytest.raises(trioctl.DaemonConnectionLost):
                await client.get_version()
            # Failing at once still checkpoints: a retry loop cannot hold the loop.
            with trio.testing.assert_checkpoints(), pytest.raises(trioctl.DaemonConnectionLost):
                await client.get_version()


async def test_errors_keep_their_class_and_data(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon, connect(daemon.url, daemon.token) as c:
            with pytest.raises(NoDomain, match="nope") as err:
                await c.get_info("nope")
            assert err.value.data["domain"] == "nope"
            with pytest.raises(InvalidParams) as bad:
                await c.define({"name": "bad name", "vcpus": "x"})
            assert any("vcpus" in e for e in bad.value.data["errors"])
            with pytest.raises(InvalidParams, match="unknown key 'surprise'"):
                await c.call("domain.get_info", {"name": "x", "surprise": 1})
            with pytest.raises(MethodNotFound):
                await c.call("admin.list_jobs")  # admin procedures live on /admin
            with pytest.raises(MethodNotFound):
                await c.call("no.such")
            await c.define({"name": "vm"})
            with pytest.raises(OperationInvalid, match="not running"):
                await c.suspend("vm")


async def test_json_rpc_error_cases(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon, raw_ws(daemon.url, daemon.token) as ws:
            reply = await exchange(ws, "{not json")
            assert reply["error"]["code"] == -32700
            assert reply["id"] is None
            reply = await exchange(ws, "5")
            assert reply["error"]["code"] == -32600
            reply = await exchange(ws, '{"jsonrpc": "2.0", "id": 1}')
            assert (reply["error"]["code"], reply["id"]) == (-32600, 1)
            reply = await exchange(ws, '{"jsonrpc": "2.0", "id": 2, "method": "x.y"}')
            assert reply["error"]["code"] == -32601
            assert reply["error"]["data"]["reason"] == "METHOD_NOT_FOUND"
            reply = await exchange(
                ws, '{"jsonrpc": "2.0", "id": 3, "method": "domain.get_info", "params": {}}'
            )
            assert reply["error"]["code"] == -32602
            assert reply["error"]["data"]["errors"] == ["required field missing @ $.name"]
            reply = await exchange(
                ws, '{"jsonrpc": "2.0", "id": 4, "method": "domain.get_info", "params": [1]}'
            )
            assert reply["error"]["code"] == -32602
            # A notification gets no reply, not even for an unknown method.
            await ws.send_message('{"jsonrpc": "2.0", "method": "connect.get_version"}')
            await ws.send_message('{"jsonrpc": "2.0", "method": "nope"}')
            reply = await exchange(
                ws, '{"jsonrpc": "2.0", "id": 5, "method": "connect.get_version"}'
            )
            assert reply["id"] == 5
            assert reply["result"]["protocol"] == 1
            # A mixed batch: one reply array, notifications left out.
            batch = json.dumps(
                [
                    {"jsonrpc": "2.0", "id": "a", "method": "connect.get_version"},
                    {"jsonrpc": "2.0", "method": "connect.get_version"},
                    {
                        "jsonrpc": "2.0",
                        "id": "b",
                        "method": "domain.get_info",
                        "params": {"name": "x"},
                    },
                    7,
                ]
            )
            replies = await exchange(ws, batch)
            assert [r.get("id") for r in replies] == ["a", "b", None]
            assert replies[1]["error"]["data"]["reason"] == "NO_DOMAIN"
            assert replies[2]["error"]["code"] == -32600
            await ws.send_message("[]")
            assert (json.loads(await ws.get_message()))["error"]["code"] == -32600
            # An all-notification batch: nothing at all.
            await ws.send_message('[{"jsonrpc": "2.0", "method": "connect.get_version"}]')
            assert await no_reply_within(ws, 0.3)
            # The connection is still fine after all that.
            reply = await exchange(
                ws, '{"jsonrpc": "2.0", "id": 9, "method": "connect.list_domains"}'
            )
            assert reply["result"] == {"domains": []}


async def test_auth_matrix(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon:
            assert daemon.tokens_file is not None
            assert os.stat(daemon.tokens_file).st_mode & 0o077 == 0  # owner only
            tokens = {
                "read": "r" * 20,
                "write": "w" * 20,
                "admin": daemon.token,
            }
            daemon.server.tokens = Tokens({t: Role[r.upper()] for r, t in tokens.items() if t})
            for token in (None, "x" * 20):
                with pytest.raises(trioctl.ConnectionRejected) as rej:
                    async with raw_ws(daemon.url, token):
                        pass
                assert rej.value.status == 401
            with pytest.raises(trioctl.ConnectionRejected) as rej:
                async with raw_ws(daemon.admin_url, tokens["write"]):
                    pass
            assert rej.value.status == 403
            async with connect(daemon.url, tokens["read"]) as reader:
                assert (await reader.list_domains()) == []
                with pytest.raises(AccessDenied, match="write"):
                    await reader.define({"name": "x"})
            async with connect(daemon.url, tokens["write"]) as writer:
                await writer.define({"name": "x"})
            assert [d.name for d in daemon.driver.list_domains()] == ["x"]


async def test_token_file_is_found_automatically(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon:
            async with connect(daemon.url, tokens_file=daemon.tokens_file) as client:
                assert (await client.get_version()).protocol == 1


async def test_max_clients_and_oversize_message(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, server__max_clients=2, server__max_message_size=1000) as d,
            raw_ws(d.url, d.token),
            raw_ws(d.url, d.token) as second,
        ):
            with pytest.raises(trioctl.ConnectionRejected) as rej:
                async with raw_ws(d.url, d.token):
                    pass
            assert rej.value.status == 503
            await second.send_message("x" * 2000)
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await second.get_message()
            reason = closed.value.reason
            assert reason is not None
            assert reason.code == 1009


@pytest.mark.slow
async def test_sixth_request_waits(sock_dir: Path) -> None:
    # max_client_requests = 5 (libvirt's default): five calls stuck on a hung
    # domain fill the client's slots; the sixth is not even read until one ends.
    with trio.fail_after(30):
        async with running_daemon(sock_dir, driver__monitor_timeout=10) as daemon:
            async with connect(daemon.url, daemon.token) as client:
                for name in ("h1", "h2", "h3", "h4", "h5"):
                    await client.define({"name": name})
                    await client.start(name)
                pids = [d.pid for d in await client.list_domains()]
            async with raw_ws(daemon.url, daemon.token) as ws:
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)  # type: ignore[arg-type]
                for i, name in enumerate(("h1", "h2", "h3", "h4", "h5")):
                    await ws.send_message(
                        json.dumps(
                            {
                                "jsonrpc": "2.0",
                                "id": i,
                                "method": "domain.get_stats",
                                "params": {"name": name},
                            }
                        )
                    )
                await ws.send_message(
                    '{"jsonrpc": "2.0", "id": 99, "method": "connect.get_version"}'
                )

                def in_flight() -> int:
                    return max(
                        (s.in_flight for s in daemon.server.list_clients().clients), default=0
                    )

                await wait_until(lambda: in_flight() == 5)
                assert await no_reply_within(ws, 0.5)  # the sixth is not served meanwhile
                assert in_flight() == 5
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]
                ids = set()
                for _ in range(6):
                    ids.add(json.loads(await ws.get_message())["id"])
                assert ids == {0, 1, 2, 3, 4, 99}


def _websockets_client(url: str, token: str, requests: list[dict[str, Any]]) -> list[Any]:
    from websockets.sync.client import connect as ws_connect

    out = []
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        for request in requests:
            ws.send(json.dumps(request))
            out.append(json.loads(ws.recv(timeout=10)))
    return out


async def test_independent_client_gets_the_same_answers(sock_dir: Path) -> None:
    requests: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": 1, "method": "connect.get_version"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "domain.define",
            "params": {"definition": {"name": "w", "uuid": "8c4f2f4e-7b0e-4bb8-9d36-3b9c2f3e0a11"}},
        },
        {"jsonrpc": "2.0", "id": 3, "method": "domain.get_info", "params": {"name": "w"}},
        {"jsonrpc": "2.0", "id": 4, "method": "domain.get_info", "params": {"name": "zz"}},
    ]
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon:
            assert daemon.token is not None
            theirs = await trio.to_thread.run_sync(
                _websockets_client, daemon.url, daemon.token, requests
            )
            async with raw_ws(daemon.url, daemon.token) as ws:
                ours = [await exchange(ws, json.dumps(r)) for r in requests[:1] + requests[2:]]
    assert theirs[0] == ours[0]
    assert theirs[2] == ours[1]
    assert theirs[3] == ours[2]
    assert theirs[3]["error"]["data"]["reason"] == "NO_DOMAIN"
