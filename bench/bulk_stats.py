"""Bulk stats and scrapes with half the fleet hung (issue 15's figures).

``python -m bench.bulk_stats [--count 1000] [--hung 500] [--rounds 5]``

1,000 simulated domains in the simulator's many-VMs mode (one process), one
daemon with its defaults and a 30 s monitor deadline. Measured, with none
hung, then with ``--hung`` of them hung (the simulator's ``hang`` fault: the
QMP side stops answering, as a SIGSTOPped QEMU):

* ``connect.get_all_domain_stats`` (NOWAIT) wall time, seen by the client;
* ``GET /metrics`` wall time and size;

first right after the hang (the monitors still look fine, so the hung ones
are asked and given up at the NOWAIT deadline), then during a storm: 5
clients keep a ``domain.get_stats`` in flight on every hung domain, so each
hung domain's job is held (the load that stalls libvirt's collectors).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import trio

from trioctl import Client, TrioctlError, connect
from trioctl.sim import control_request

from ._procs import MODES, Registry, start_daemon, start_many_sim, write_many_domains
from ._stats import summarize_values


async def http_get(port: int, path: str, token: str | None) -> tuple[int, bytes]:
    """One plain HTTP/1.1 GET on 127.0.0.1: (status, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def _timings(client: Client, port: int, token: str, rounds: int) -> dict[str, Any]:
    bulk, server, scrape = [], [], []
    fresh = skipped = size = 0
    fresh_per_round = []
    reasons: dict[str, int] = {}
    for _ in range(rounds):
        t0 = time.perf_counter()
        got = await client.get_all_domain_stats()
        bulk.append(time.perf_counter() - t0)
        server.append(got.elapsed_seconds)
        fresh, skipped = got.fresh, got.skipped
        fresh_per_round.append(fresh)
        reasons = {}
        for record in got.domains:
            key = record.skipped or "fresh"
            reasons[key] = reasons.get(key, 0) + 1
        t0 = time.perf_counter()
        status, body = await http_get(port, "/metrics", token)
        scrape.append(time.perf_counter() - t0)
        assert status == 200, (status, body[:200])
        size = len(body)
    return {
        "bulk": summarize_values(bulk),
        "bulk_max_ms": round(max(bulk) * 1000, 1),
        "bulk_in_daemon_max_ms": round(max(server) * 1000, 1),
        "fresh": fresh,
        "fresh_per_round": fresh_per_round,
        "skipped": skipped,
        "reasons": reasons,
        "scrape": summarize_values(scrape),
        "scrape_max_ms": round(max(scrape) * 1000, 1),
        "metrics_bytes": size,
    }


async def _storm(url: str, token: str, hung: list[str], stop: trio.Event) -> None:
    async with connect(url, token) as client:

        async def one(name: str) -> None:
            while not stop.is_set():
                try:
                    await client.get_stats(name)
                except TrioctlError:
                    await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            for name in hung:
                nursery.start_soon(one, name)
            await stop.wait()
            nursery.cancel_scope.cancel()


async def main(count: int, hung_count: int, rounds: int) -> dict[str, Any]:
    registry = Registry()
    try:
        state = registry.new_dir("bulk")
        sim = await start_many_sim(registry, state, count, "vm")
        write_many_domains(state, [sim])
        daemon = await start_daemon(
            registry,
            state,
            MODES["default"],
            extra={"driver.monitor_timeout": 30, "server.max_client_requests": 200},
        )
        out: dict[str, Any] = {"count": count, "hung": hung_count}
        async with connect(daemon.url, daemon.token) as client:
            while sum(1 for d in await client.list_domains() if d.monitor.value == "ok") < count:
                await trio.sleep(0.2)
            out["none_hung"] = await _timings(client, daemon.port, daemon.token, rounds)
            hung = list(sim.names[:hung_count])
            for name in hung:
                await control_request(
                    str(sim.control_path), "x-trioctl-sim-fault", {"vm": name, "mode": "hang"}
                )
            out["just_hung"] = await _timings(client, daemon.port, daemon.token, rounds)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                per = (len(hung) + 4) // 5
                for i in range(5):
                    nursery.start_soon(_storm, daemon.url, daemon.token, hung[i::5], stop)
                # Until every hung domain's job is held.
                with trio.move_on_after(30):
                    while True:
                        jobs = sum(1 for d in await client.list_domains() if d.job is not None)
                        if jobs >= hung_count:
                            break
                        await trio.sleep(0.2)
                out["storm_jobs_held"] = jobs
                out["storm_clients"] = 5
                out["storm_calls_per_client"] = per
                out["storm"] = await _timings(client, daemon.port, daemon.token, rounds)
                stop.set()
        await daemon.stop()
        return out
    finally:
        registry.cleanup()


def run() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk_stats")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--hung", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = trio.run(main, args.count, args.hung, args.rounds)
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    run()
