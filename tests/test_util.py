"""``trioctl._util``: group unwrapping and reply waiters by id."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
import trio
import trio.testing

from trioctl._util import ReplyWaiters, exception_leaves, open_service_nursery, raise_unwrapped


def _raised(group: BaseExceptionGroup[BaseException]) -> BaseException:
    try:
        raise_unwrapped(group)
    except BaseException as exc:
        return exc
    raise AssertionError("raise_unwrapped returned")


def test_a_lone_exception_comes_out_bare_with_its_own_cause() -> None:
    cause = KeyError("k")
    try:
        raise ValueError("v") from cause
    except ValueError as exc:
        lone = exc
    raised = _raised(BaseExceptionGroup("g", [lone]))
    assert raised is lone
    assert raised.__cause__ is cause and raised.__suppress_context__


def test_a_lone_group_comes_out_as_it_was_raised() -> None:
    inner = ExceptionGroup("inner", [ValueError(1), KeyError(2)])
    assert _raised(BaseExceptionGroup("outer", [inner])) is inner


def test_several_exceptions_stay_in_their_group() -> None:
    group = BaseExceptionGroup("g", [ValueError(1), KeyboardInterrupt()])
    raised = _raised(group)
    assert raised is group and raised.__cause__ is None


def test_leaves_depth_first() -> None:
    a, b, c = ValueError("a"), KeyError("b"), OSError("c")
    group = BaseExceptionGroup("g", [a, ExceptionGroup("h", [b, ExceptionGroup("i", [c])])])
    assert exception_leaves(group) == [a, b, c]
    assert exception_leaves(a) == [a]


async def test_service_nursery_hands_back_what_the_body_raised() -> None:
    cause = OSError("under")
    with pytest.raises(RuntimeError) as info:
        async with open_service_nursery():
            raise RuntimeError("body") from cause
    assert info.value.__cause__ is cause


def _unwrapped_in_a_handler(make: Callable[[], BaseException]) -> type[BaseException]:
    """Raise ``make()`` in a group, unwrap it where the group is handled (as
    a service nursery does), catch it, and drop it; its type."""
    try:
        try:
            raise BaseExceptionGroup("g", [make()])
        except BaseExceptionGroup as group:
            raise_unwrapped(group)
    except BaseException as exc:
        context, kind = exc.__context__, type(exc)
    else:
        raise AssertionError("raise_unwrapped returned")
    assert context is None  # its own (none), not the group
    return kind


@pytest.mark.parametrize("make", [lambda: ValueError("v"), trio.Cancelled._create])
def test_unwrapping_leaves_no_reference_cycle(make: Callable[[], BaseException]) -> None:
    """The lone exception, its group and the frames of its traceback are freed
    by reference counting alone: the cyclic collector finds nothing."""
    gc.collect()
    gc.disable()
    try:
        assert _unwrapped_in_a_handler(make) is type(make())
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_service_nursery_leaves_no_reference_cycle() -> None:
    """Cancelled out of a service nursery (a domain's supervision at stop)."""
    gc.collect()
    gc.disable()
    try:
        with trio.CancelScope() as scope:
            async with open_service_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        del nursery
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_replies_reach_their_callers_by_id(autojump_clock: trio.testing.MockClock) -> None:
    waiters = ReplyWaiters[str]()
    got: dict[int, str] = {}

    async def caller(request_id: int) -> None:
        with waiters.expect(request_id) as reply:
            got[request_id] = await reply.wait()

    async with trio.open_nursery() as nursery:
        for request_id in (1, 2, 3):
            nursery.start_soon(caller, request_id)
        await trio.testing.wait_all_tasks_blocked()
        assert len(waiters) == 3
        assert waiters.deliver(2, "two") and waiters.deliver(1, "one")
        assert not waiters.deliver(2, "again")  # already answered
        assert not waiters.deliver("3", "a string id")
        await trio.testing.wait_all_tasks_blocked()
        assert got == {1: "one", 2: "two"} and len(waiters) == 1
        nursery.cancel_scope.cancel()
    assert len(waiters) == 0  # the cancelled caller is forgotten
    assert not waiters.deliver(3, "late")


async def test_fail_ends_every_wait_with_its_own_error() -> None:
    waiters = ReplyWaiters[str]()
    errors: list[BaseException] = []

    async def caller(request_id: int) -> None:
        with waiters.expect(request_id) as reply:
            try:
                await reply.wait()
            except ConnectionError as exc:
                errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, 1)
        nursery.start_soon(caller, 2)
        await trio.testing.wait_all_tasks_blocked()
        waiters.fail(lambda: ConnectionError("lost"))
    assert [str(e) for e in errors] == ["lost", "lost"] and errors[0] is not errors[1]
    assert len(waiters) == 0


async def test_a_reply_that_came_first_is_returned_at_a_checkpoint() -> None:
    waiters = ReplyWaiters[str]()
    with waiters.expect(7) as reply:
        assert waiters.deliver(7, "seven")  # before anyone waits
        assert await reply.wait() == "seven"
        with trio.CancelScope() as scope:
            scope.cancel()
            await reply.wait()  # a checkpoint, as Event.wait: the cancel wins
        assert scope.cancelled_caught


async def test_one_task_waits_for_a_reply() -> None:
    waiters = ReplyWaiters[str]()
    with waiters.expect(1) as reply:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reply.wait)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await reply.wait()
            # The first waiter still gets its reply.
            assert waiters.deliver(1, "one")
