"""The loop's share under a flood (issue 14, goal 3), in virtual time.

Clients whose calls fail and that retry at once take as much of the one
event loop as it gives them. A session whose last call failed takes a turn
before its next message (``_Turns`` in ``trioctl._server``, the error lane):
one at a time, when the loop has nothing else to run. A probe's call is then
served within a bounded number of the flood's calls, however many clients
flood.
Counted in calls, not in seconds: the WebSocket endpoint runs over in-memory
streams under ``autojump_clock``.
"""

from __future__ import annotations

import gc
import itertools
import json
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
import trio_websocket

from trioctl._client import Client
from trioctl._errors import TrioctlError
from trioctl._server import _LANE_SHARE, _Turns

from .test_server_virtual_time import memory_server

FAILING_CALL = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "domain.get_info", "params": {"name": "none"}}
)
# A request the server refuses before running it (jsonrpc "1.0": Invalid
# Request), and a message that is not JSON at all.
INVALID_CALL = json.dumps(
    {"jsonrpc": "1.0", "id": 1, "method": "domain.get_info", "params": {"name": "none"}}
)
NOT_JSON = "{nope"
PROBE_CALL = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "connect.list_domains"})


async def _flood_and_probe(
    sock_dir: Path,
    flooders: int,
    *,
    lane: bool = True,
    call: str = FAILING_CALL,
    error: str = "NO_DOMAIN",
) -> list[int]:
    """Flood with ``flooders`` clients retrying a failing call at once; probe
    ten times; return, per probe, the flood's calls answered meanwhile."""
    counts: list[int] = []
    async with memory_server(sock_dir, keepalive_interval=0) as (server, listener):
        if not lane:

            async def no_turn() -> None:
                await trio.lowlevel.checkpoint()

            server.turns.take = no_turn  # type: ignore[method-assign]

        flood_replies = 0

        def answered() -> int:
            return flood_replies

        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                nonlocal flood_replies
                stream = await listener.connect()
                ws = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]
                while True:
                    await ws.send_message(call)
                    assert error in str(await ws.get_message())
                    flood_replies += 1

            for _ in range(flooders):
                nursery.start_soon(flood)
            stream = await listener.connect()
            probe = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]
            # Virtual time stands still while the flood runs (with the lane,
            # its keeper is woken at each idle moment before the clock could
            # jump): wait in calls, at idle moments (or at every pass when
            # nothing ever idles).
            pause = trio.testing.wait_all_tasks_blocked if lane else trio.lowlevel.checkpoint
            while answered() < 5 * flooders:  # the flood is in full swing
                await pause()
            for _ in range(10):
                before = answered()
                await probe.send_message(PROBE_CALL)
                reply = json.loads(str(await probe.get_message()))
                assert reply["id"] == 7 and reply["result"] == {"domains": []}
                counts.append(answered() - before - 1)
                while answered() < before + 3 * flooders:
                    await pause()
            nursery.cancel_scope.cancel()
    return counts


@pytest.mark.parametrize("flooders", [10, 40])
async def test_a_probe_is_served_within_a_bounded_number_of_flood_calls(
    autojump_clock: trio.testing.MockClock, sock_dir: Path, flooders: int
) -> None:
    counts = await _flood_and_probe(sock_dir, flooders)
    # The flood's calls start only while the loop has nothing else to run,
    # one at a time: a bound that does not grow with the number of flooders.
    assert max(counts) <= 4, counts


@pytest.mark.parametrize(
    ("call", "error"),
    [(INVALID_CALL, "INVALID_REQUEST"), (NOT_JSON, "PARSE_ERROR")],
    ids=["invalid-request", "parse-error"],
)
async def test_requests_refused_before_they_run_take_the_error_lane_too(
    autojump_clock: trio.testing.MockClock, sock_dir: Path, call: str, error: str
) -> None:
    """A flood of Invalid Requests or of text that is not JSON fails as
    surely as calls that fail: it waits for its turns like them (without the
    lane, the probe waits behind every flooder, as in the test below)."""
    counts = await _flood_and_probe(sock_dir, 40, call=call, error=error)
    assert max(counts) <= 4, counts


async def test_without_turns_the_probe_waits_behind_every_flooder(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    """The same flood with no error lane: each of the probe's steps waits
    for a step of every flooder, so the test above can fail."""
    counts = await _flood_and_probe(sock_dir, 40, lane=False)
    assert min(counts) > 16, counts


async def test_turns_go_in_order_and_a_cancelled_waiter_leaves() -> None:
    turns = _Turns()
    order: list[str] = []
    async with trio.open_nursery() as nursery:
        turns.nursery = nursery
        turns._keeping = True  # the keeper held back: whoever asks now waits

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
        nursery.start_soon(turns._keep)  # one turn each time the loop idles
    assert order == ["first", "second", "third"]
    assert turns.waiting() == 0
    assert turns.waited == 3


async def test_a_turn_waits_for_the_loop_to_idle_or_for_the_patience() -> None:
    """Real time: a loop that is never idle stops virtual time too."""
    turns = _Turns(patience=0.05)
    async with trio.open_nursery() as nursery:
        turns.nursery = nursery
        start = trio.current_time()
        with trio.fail_after(5):
            await turns.take()  # an idle loop: at once
        assert trio.current_time() - start < 0.05

        async def busy() -> None:
            while True:
                await trio.lowlevel.checkpoint()

        nursery.start_soon(busy)
        start = trio.current_time()
        with trio.fail_after(5):
            await turns.take()  # never idle: after the patience
        assert trio.current_time() - start >= 0.05
        nursery.cancel_scope.cancel()


async def test_turns_take_at_most_their_share_of_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each turn keeps the loop busy for 1 ms (the clock jumps while it runs,
    nothing idles): the next turn comes 1 ms * (1 - share) / share after it
    ended, so three flooders together get the lane's share of the loop's
    time, not every idle moment of it (which kept the daemon's process busy
    all the time, and so scheduled by the host as a busy one)."""
    turns = _Turns()
    granted: list[float] = []
    async with trio.open_nursery() as nursery:
        turns.nursery = nursery

        async def flooder() -> None:
            for _ in range(5):
                await turns.take()
                granted.append(trio.current_time())
                autojump_clock.jump(0.001)  # the turn's call: 1 ms of the loop

        for _ in range(3):
            nursery.start_soon(flooder)
    assert len(granted) == 15 and turns.waited == 15
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(granted)]
    rest = 0.001 * (1 - _LANE_SHARE) / _LANE_SHARE  # 3 ms
    assert min(gaps) >= round(0.001 + rest, 6), gaps


async def test_a_rest_is_at_most_the_patience(autojump_clock: trio.testing.MockClock) -> None:
    """A turn that kept the loop busy a long time does not make the next
    failing message wait more than the patience for its rest."""
    turns = _Turns(patience=0.05, share=0.25)
    granted: list[float] = []
    async with trio.open_nursery() as nursery:
        turns.nursery = nursery
        for _ in range(2):
            await turns.take()
            granted.append(trio.current_time())
            autojump_clock.jump(1.0)  # far longer than the patience
        nursery.cancel_scope.cancel()
    # The measurement stops at the patience: the rest is capped at it too.
    assert granted[1] - granted[0] <= 1.0 + 0.05 + 1e-6


def test_the_share_is_checked() -> None:
    for share in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="share"):
            _Turns(share=share)


async def test_turns_are_free_outside_a_server() -> None:
    turns = _Turns()
    for _ in range(5):
        with trio.fail_after(1):
            await turns.take()


async def test_one_failure_does_not_put_a_client_in_the_lane_two_in_a_row_do(
    sock_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A client whose one call failed goes on without a turn; from its second
    failure in a row its next message takes one; a success ends that."""
    async with memory_server(sock_dir, keepalive_interval=0) as (server, listener):
        async with trio.open_nursery() as nursery:
            stream = await listener.connect()
            ws = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]

            async def call(text: str) -> str:
                await ws.send_message(text)
                return str(await ws.get_message())

            assert "NO_DOMAIN" in await call(FAILING_CALL)
            assert '"domains"' in await call(PROBE_CALL)
            assert server.turns.waited == 0  # one failure: no turn
            assert "NO_DOMAIN" in await call(FAILING_CALL)
            assert "NO_DOMAIN" in await call(FAILING_CALL)
            assert server.turns.waited == 0
            assert "NO_DOMAIN" in await call(FAILING_CALL)  # after two in a row: a turn
            assert server.turns.waited == 1
            assert '"domains"' in await call(PROBE_CALL)  # its turn, then out of the lane
            assert server.turns.waited == 2
            assert '"domains"' in await call(PROBE_CALL)
            assert server.turns.waited == 2
            nursery.cancel_scope.cancel()


async def _garbage_after(sock_dir: Path, text: str, calls: int, *, client: bool = False) -> int:
    """Objects the cyclic collector finds after ``calls`` calls of ``text``
    (reference counting alone frees everything else); with ``client``, made
    through trioctl's own client."""
    request = json.loads(text)
    async with memory_server(sock_dir, keepalive_interval=0) as (_server, listener):
        async with trio.open_nursery() as nursery:
            stream = await listener.connect()
            ws = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]
            trioctl_client = Client(ws, 16)
            if client:
                nursery.start_soon(trioctl_client._reader)

            async def one() -> None:
                if not client:
                    await ws.send_message(text)
                    await ws.get_message()
                    return
                try:
                    await trioctl_client.call(request["method"], request.get("params"))
                except TrioctlError:
                    pass

            await one()  # warm up (first-use caches)
            gc.collect()
            gc.disable()
            try:
                for _ in range(calls):
                    await one()
                found = gc.collect()
            finally:
                gc.enable()
            nursery.cancel_scope.cancel()
    return found


async def test_a_failed_call_leaves_no_reference_cycle(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    """A failed call's error kept its traceback in the reply, and the
    traceback the frame that held the reply: a cycle of about 45 objects per
    failed call. Under a flood of failing calls those filled the collector's
    young generation every half second, and each collection (tens of
    milliseconds) stalled every client: the storm's p99 (docs/benchmarks.md,
    storm). Now a failure is freed like a success, by reference counting."""
    calls = 50
    ok = await _garbage_after(sock_dir, PROBE_CALL, calls)
    failed = await _garbage_after(sock_dir, FAILING_CALL, calls)
    # Not one object per call (before: about 45 per call).
    assert failed - ok < calls, (failed, ok)


async def test_a_failed_call_leaves_no_reference_cycle_in_the_client(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    """The client's side of the same: the error a reply carries was raised
    from the response that held it, whose frame the traceback kept: a cycle
    per failed call in every client (the bench's hammer, an embedding
    application retrying)."""
    calls = 50
    ok = await _garbage_after(sock_dir, PROBE_CALL, calls, client=True)
    failed = await _garbage_after(sock_dir, FAILING_CALL, calls, client=True)
    assert failed - ok < calls, (failed, ok)
