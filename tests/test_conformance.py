"""Conformance with a client stack nobody here wrote: jsonrpcclient builds and
parses the messages, the ``websockets`` package carries them (its synchronous
client, in a worker thread). Batches of 1, 5, 6, 100 and 101 items with the
daemon's default ``max_client_requests`` (5), mixed valid and invalid items,
positional and named params, notifications, ``rpc.discover``, and the browser
handshake (``trioctl.v1`` + ``bearer.<token>``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from jsonrpcclient import Error, Ok, notification, parse, request

from .helpers import running_daemon

websockets_sync = pytest.importorskip("websockets.sync.client")


def open_peer(url: str, token: str | None, *, browser: bool = False) -> Any:
    """A ``websockets`` connection (use it in ``with``)."""
    if browser:
        return websockets_sync.connect(
            url, subprotocols=["trioctl.v1", f"bearer.{token}"], open_timeout=10
        )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return websockets_sync.connect(url, additional_headers=headers, open_timeout=10)


class Peer:
    """A blocking JSON-RPC peer over ``websockets``; run it in a thread."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def send(self, message: Any) -> None:
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def receive(self, timeout: float = 10) -> Any:
        return json.loads(self.ws.recv(timeout=timeout))

    def exchange(self, message: Any) -> Any:
        self.send(message)
        return self.receive()

    def nothing_within(self, timeout: float) -> bool:
        try:
            self.ws.recv(timeout=timeout)
        except TimeoutError:
            return True
        return False


def conversation(url: str, admin_url: str, token: str, schemas: Path) -> None:
    with open_peer(url, token) as ws:
        peer = Peer(ws)
        # Batches around max_client_requests (5) and max_batch (100).
        for size in (1, 5, 6, 100):
            batch = [request("connect.get_version", id=i) for i in range(size)]
            responses = list(parse(peer.exchange(batch)))
            assert len(responses) == size
            assert all(isinstance(r, Ok) and r.result["protocol"] == 1 for r in responses)
            assert sorted(r.id for r in responses) == list(range(size))
        too_big = [request("connect.get_version", id=i) for i in range(101)]
        answers = list(parse(peer.exchange(too_big)))
        assert [a.id for a in answers] == list(range(101))
        for answer in answers:
            assert isinstance(answer, Error)
            assert answer.code == -32600
            assert answer.data == {
                "reason": "LIMIT_EXCEEDED",
                "limit": "max_batch",
                "max_batch": 100,
            }

        # Named and positional params, mixed with invalid items and a notification.
        # (The items of a batch run concurrently, in no set order.)
        defined = parse(peer.exchange(request("domain.define", params=({"name": "cf"},), id=0)))
        assert isinstance(defined, Ok)
        mixed = [
            request("domain.lookup", params={"name": "cf"}, id="named"),
            request("domain.get_info", params=("cf",), id="positional"),
            request("connect.get_version", params=(), id="empty"),
            request("domain.get_info", params=("cf", "extra"), id="too-many"),
            {"jsonrpc": "2.0", "method": 1, "id": "bad"},
            notification("connect.list_domains"),
            request("no.such", id="missing"),
            request("domain.get_info", params={"name": "nope"}, id="nodomain"),
        ]
        replies = peer.exchange(mixed)
        by_id = {reply["id"]: reply for reply in replies}
        assert len(replies) == 7  # the notification is not answered
        assert by_id["named"]["result"]["name"] == "cf"
        assert by_id["positional"]["result"]["name"] == "cf"
        assert by_id["empty"]["result"]["protocol"] == 1
        assert by_id["too-many"]["error"]["code"] == -32602
        assert by_id["bad"]["error"]["code"] == -32600
        assert by_id["missing"]["error"]["code"] == -32601
        assert by_id["nodomain"]["error"]["data"]["reason"] == "NO_DOMAIN"

        # Notifications alone: nothing comes back, single or batched.
        peer.send(notification("connect.get_version"))
        peer.send([notification("connect.get_version"), notification("connect.list_domains")])
        assert peer.nothing_within(0.3)

        # Discovery: the committed OpenRPC document.
        discovered = parse(peer.exchange(request("rpc.discover", id="d")))
        assert isinstance(discovered, Ok)
        assert discovered.result == json.loads((schemas / "openrpc.json").read_text())
        names = [m["name"] for m in discovered.result["methods"]]
        assert "domain.get_info" in names and "events.event" in names

    # A browser: no Authorization header, the token as a subprotocol.
    with open_peer(admin_url, token, browser=True) as ws:
        browser = Peer(ws)
        assert browser.ws.subprotocol == "trioctl.v1"
        listed = parse(browser.exchange(request("admin.list_clients", id=1)))
        assert isinstance(listed, Ok)


async def test_an_independent_client_stack(sock_dir: Path) -> None:
    schemas = Path(__file__).resolve().parent.parent / "schemas"
    with trio.fail_after(60):
        async with running_daemon(sock_dir) as daemon:
            assert daemon.token is not None
            assert daemon.config.server.max_client_requests == 5
            await trio.to_thread.run_sync(
                conversation, daemon.url, daemon.admin_url, daemon.token, schemas
            )
