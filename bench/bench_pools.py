"""Jobs per second through the worker pools, beside bare Trio memory channels.

Run from the repository root::

    python -m bench.bench_pools            # about 10-20 s
    python -m bench.bench_pools --quick    # one short round, a smoke test

Four pairs are measured in the same process, interleaved round by round so
that a noisy machine disturbs both sides of a ratio alike; each figure is the
median of the rounds:

* ``run()`` round trip, one caller at a time (submit, run on a worker, result
  back to the caller), for HIGH and LOW, against a bare round trip: a worker
  task receiving the job on one memory channel and sending the result back on
  another.
* ``submit_nowait()`` bursts of fire-and-forget jobs until all completed, for
  HIGH and LOW, against a bare one-way pipeline: as many consumer tasks as the
  pools have general workers (20), draining one memory channel of the burst's
  size and running each job.

One more line, for the RPC layer's budget: ``Dispatcher.call()`` with a
domain job (take the domain's job, run on a worker, release), against the same
bare round trip.

The job is a coroutine that returns at once (no checkpoint), so the figures
are the dispatch overhead alone. The goal: pools >= 0.5 x the bare channel.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import trio

from trioctl import (
    Dispatcher,
    DomainJobs,
    JobKind,
    PoolLimits,
    Priority,
    WorkerPools,
    open_worker_pools,
)

BATCH = 500  # jobs per burst; below max_pending, so no burst is refused
DOMAINS = [f"vm{i}" for i in range(8)]
CONSUMERS = PoolLimits().max_workers  # bare consumer tasks, as many as general workers


async def noop() -> int:
    return 1


# -- bare memory channels ------------------------------------------------------------


async def bare_round_trip(n: int) -> float:
    """A caller sends each job to a worker task and waits for its result."""
    req_send, req_recv = trio.open_memory_channel[Callable[[], Awaitable[int]]](0)
    res_send, res_recv = trio.open_memory_channel[int](0)

    async def worker() -> None:
        async with res_send:
            async for fn in req_recv:
                await res_send.send(await fn())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        start = time.perf_counter()
        async with req_send:
            for _ in range(n):
                await req_send.send(noop)
                await res_recv.receive()
        elapsed = time.perf_counter() - start
    return n / elapsed


async def bare_one_way(n: int, consumers: int) -> float:
    """Bursts of BATCH jobs through one channel to ``consumers`` tasks that run them."""
    send, recv = trio.open_memory_channel[Callable[[], Awaitable[int]]](BATCH)
    done = 0
    batch_done = trio.Event()

    async def consumer() -> None:
        async for fn in recv:
            await fn()
            nonlocal done
            done += 1
            if done % BATCH == 0:
                batch_done.set()

    async with trio.open_nursery() as nursery:
        for _ in range(consumers):
            nursery.start_soon(consumer)
        start = time.perf_counter()
        async with send:
            for _ in range(n // BATCH):
                batch_done = trio.Event()
                for _ in range(BATCH):
                    send.send_nowait(noop)
                await batch_done.wait()
        elapsed = time.perf_counter() - start
    return (n // BATCH * BATCH) / elapsed


# -- the pools -------------------------------------------------------------------------


async def pools_round_trip(pools: WorkerPools, priority: Priority, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await pools.run(priority, noop)
    return n / (time.perf_counter() - start)


async def dispatch_round_trip(dispatcher: Dispatcher, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        await dispatcher.call(
            Priority.LOW,
            noop,
            domain=DOMAINS[i % len(DOMAINS)],
            kind=JobKind.QUERY,
            procedure="domain.get_stats",
            client="bench",
        )
    return n / (time.perf_counter() - start)


async def pools_bursts(pools: WorkerPools, priority: Priority, n: int) -> float:
    done = 0
    batch_done = trio.Event()

    async def job() -> None:
        nonlocal done
        done += 1
        if done % BATCH == 0:
            batch_done.set()

    start = time.perf_counter()
    for _ in range(n // BATCH):
        batch_done = trio.Event()
        for _ in range(BATCH):
            pools.submit_nowait(priority, job)
        await batch_done.wait()
    return (n // BATCH * BATCH) / (time.perf_counter() - start)


# -- driver ------------------------------------------------------------------------------


async def measure(rounds: int, n_trip: int, n_burst: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    async with open_worker_pools(PoolLimits()) as pools:
        dispatcher = Dispatcher(pools, DomainJobs())
        for _ in range(2):  # warm up: workers grown, code paths hot
            await pools_round_trip(pools, Priority.LOW, 1000)
            await pools_bursts(pools, Priority.HIGH, 2 * BATCH)
            await bare_round_trip(1000)
        for _ in range(rounds):
            add("bare round trip", await bare_round_trip(n_trip))
            add("run() HIGH", await pools_round_trip(pools, Priority.HIGH, n_trip))
            add("run() LOW", await pools_round_trip(pools, Priority.LOW, n_trip))
            add("call() LOW + domain job", await dispatch_round_trip(dispatcher, n_trip))
            add("bare one-way", await bare_one_way(n_burst, CONSUMERS))
            add("submit_nowait() HIGH", await pools_bursts(pools, Priority.HIGH, n_burst))
            add("submit_nowait() LOW", await pools_bursts(pools, Priority.LOW, n_burst))
        stats = pools.statistics()
        assert stats.failed == 0 and stats.rejected == 0, stats
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one short round (smoke test)")
    args = parser.parse_args(argv)
    rounds, n_trip, n_burst = (1, 2000, 5 * BATCH) if args.quick else (args.rounds, 20_000, 40_000)

    print(f"python {sys.version.split()[0]}, trio {trio.__version__}")
    print(f"{rounds} rounds; {n_trip} round trips and {n_burst} burst jobs per round; medians")
    started = time.perf_counter()
    results = trio.run(measure, rounds, n_trip, n_burst)
    med = {name: statistics.median(values) for name, values in results.items()}

    print()
    print(f"{'measurement':<26}{'jobs/s':>12}{'ratio':>9}   baseline")
    pairs = [
        ("bare round trip", None),
        ("run() HIGH", "bare round trip"),
        ("run() LOW", "bare round trip"),
        ("call() LOW + domain job", "bare round trip"),
        ("bare one-way", None),
        ("submit_nowait() HIGH", "bare one-way"),
        ("submit_nowait() LOW", "bare one-way"),
    ]
    worst = float("inf")
    for name, base in pairs:
        if base is None:
            print(f"{name:<26}{med[name]:>12,.0f}")
            continue
        ratio = med[name] / med[base]
        if not name.startswith("call()"):  # the goal is about the pools alone
            worst = min(worst, ratio)
        print(f"{name:<26}{med[name]:>12,.0f}{ratio:>9.2f}   {base}")
    print()
    print(
        f"lowest pools ratio {worst:.2f} (goal >= 0.5); took {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
