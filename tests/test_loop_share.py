"""The loop's share under a flood (issue 14, goal 3), in virtual time.

Clients whose calls fail and that retry at once take as much of the one
event loop as it gives them. A session whose last call failed takes a turn
before its next message (``_Turns`` in ``trioctl._server``, the error lane):
one such message starts per pass of the scheduler. A probe's call is then
served within a bounded number of the flood's calls, however many clients
flood.
Counted in calls, not in seconds: the WebSocket endpoint runs over in-memory
streams under ``autojump_clock``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
import trio_websocket

from trioctl._server import _Turns

from .test_server_virtual_time import memory_server

FAILING_CALL = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "domain.get_info", "params": {"name": "none"}}
)
PROBE_CALL = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "connect.list_domains"})


async def _flood_and_probe(sock_dir: Path, flooders: int, per_pass: int) -> list[int]:
    """Flood with ``flooders`` clients retrying a failing call at once; probe
    ten times; return, per probe, the flood's calls answered meanwhile."""
    counts: list[int] = []
    async with memory_server(sock_dir, keepalive_interval=0) as (server, listener):
        server.turns.per_pass = per_pass

        def answered() -> int:
            return sum(s.calls for s in server._sessions.values())

        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                stream = await listener.connect()
                ws = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]
                while True:
                    await ws.send_message(FAILING_CALL)
                    assert "NO_DOMAIN" in str(await ws.get_message())

            for _ in range(flooders):
                nursery.start_soon(flood)
            stream = await listener.connect()
            probe = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]
            # The flood never sleeps, so virtual time stands still: wait in calls.
            while answered() < 5 * flooders:  # the flood is in full swing
                await trio.lowlevel.checkpoint()
            for _ in range(10):
                before = answered()
                await probe.send_message(PROBE_CALL)
                reply = json.loads(str(await probe.get_message()))
                assert reply["id"] == 7 and reply["result"] == {"domains": []}
                counts.append(answered() - before - 1)
                while answered() < before + 3 * flooders:
                    await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    return counts


@pytest.mark.parametrize("flooders", [10, 40])
async def test_a_probe_is_served_within_a_bounded_number_of_flood_calls(
    autojump_clock: trio.testing.MockClock, sock_dir: Path, flooders: int
) -> None:
    counts = await _flood_and_probe(sock_dir, flooders, per_pass=1)
    # Each of the probe's steps (the client's and the server's) waits for a
    # pass, and each pass starts one flood call: a bound that does not grow
    # with the number of flooders (measured: 7-10 with 10, 11-13 with 40).
    assert max(counts) <= 16, counts


async def test_without_turns_the_probe_waits_behind_every_flooder(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    """The same flood with turns that never run out: each of the probe's
    steps waits for a step of every flooder, so the test above can fail."""
    counts = await _flood_and_probe(sock_dir, 40, per_pass=10_000)
    assert min(counts) > 16, counts


async def test_turns_go_in_order_and_a_cancelled_waiter_leaves() -> None:
    turns = _Turns(per_pass=1)
    order: list[str] = []
    async with trio.open_nursery() as nursery:
        turns.nursery = nursery
        # This pass's turn is taken, and the ticker held back: whoever asks
        # now waits, in order.
        turns.used = 1
        turns._ticking = True

        async def take(name: str) -> None:
            await turns.take()
            order.append(name)

        cancelled = trio.CancelScope()

        async def abandoned() -> None:
            with cancelled:
                await take("abandoned")

        for task in (partial(take, "first"), partial(take, "second"), abandoned):
            nursery.start_soon(task)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "third")
        await trio.testing.wait_all_tasks_blocked()
        assert turns.waiting() == 4 and order == []
        cancelled.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert turns.waiting() == 3
        turns._ticking = False
        turns._start_ticker()  # one turn per pass from here on
    assert order == ["first", "second", "third"]
    assert turns.waiting() == 0
    assert turns.waited == 4


async def test_turns_are_free_outside_a_server() -> None:
    turns = _Turns(per_pass=1)
    for _ in range(5):
        with trio.fail_after(1):
            await turns.take()
