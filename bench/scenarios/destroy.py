"""destroy: how long ``domain.destroy`` of a hung domain takes, and how
``connect.list_domains`` answers meanwhile.

Per mode, a daemon with N domains; then, for each round, a fresh domain (the
victim) is started, SIGSTOPped and kept busy; after a short settle, it is
destroyed while another connection lists the domains back to back (one call
at a time, no pause). Two variants:

* ``quiet``: one ``monitor_command`` in flight on the victim, holding its job
  (the situation the libvirt reference measured);
* ``storm``: the victim and K-1 other hung domains hammered by C clients, as
  in the storm scenario (in legacy mode the worker pool is then exhausted).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from trioctl import TrioctlError

from .._conn import connect
from .._context import Context, Scenario
from .._load import (
    HammerProcess,
    InFlight,
    hang,
    keep_in_flight,
    outcome_of,
    start_domains,
    start_hammer,
    stop_hammer,
    wait_monitors,
)
from .._procs import Daemon, Mode, start_daemon
from .._reference import LIBVIRT
from .._report import Goal, Panel, Report, Table, fmt_ms, fmt_s, mode_color, sample_series
from .._stats import OK, Sample, summarize, summarize_values

__all__ = ["SCENARIO"]

LIST_INTERVAL = 0.0
"""Pause between two list calls: none, so that the calls cover the destroy."""
#: A list call during a destroy slower than this counts as stalled.
STALL_MS = 100.0


async def _list_loop(url: str, token: str, out: list[Sample], origin: float) -> None:
    """List domains back to back until cancelled; a call
    cut short by the cancellation is recorded as ``UNFINISHED``."""
    async with connect(url, token) as client:
        while True:
            t0 = time.perf_counter()
            outcome = OK
            try:
                await client.list_domains()
            except TrioctlError as exc:
                outcome = outcome_of(exc)
            except trio.Cancelled:
                out.append(Sample(t0 - origin, time.perf_counter() - t0, "UNFINISHED"))
                raise
            out.append(Sample(t0 - origin, time.perf_counter() - t0, outcome))
            await trio.sleep(LIST_INTERVAL)


def _overlapping(samples: list[Sample], window: list[float]) -> list[Sample]:
    """The calls that were in progress at some point of ``window`` (start, end)."""
    start, end = window
    return [s for s in samples if s.t < end and s.t + s.latency > start]


async def _round(
    ctx: Context,
    daemon: Daemon,
    variant: str,
    index: int,
    others: list[str],
    clients: int,
    state: Path,
) -> dict[str, Any]:
    reg, say = ctx.registry, ctx.progress.say
    victim = f"{variant}{index}"
    give_up = ctx.options.give_up
    async with connect(daemon.url, daemon.token) as client:
        pids = await start_domains(client, reg, [victim], ctx.emulator)
        with trio.fail_after(30):
            await wait_monitors(client, [victim])
        pid = pids[victim]
        hang([pid])
        in_flight = InFlight()
        hammer: HammerProcess | None = None
        samples: list[Sample] = []
        result: dict[str, Any] = {"victim": victim}
        async with trio.open_nursery() as nursery:
            if variant == "quiet":
                await nursery.start(
                    keep_in_flight, daemon.url, daemon.token, [(victim, "query-status")], in_flight
                )
                settle = 0.2 if ctx.options.short else 0.5
            else:
                hammer = await start_hammer(
                    reg, daemon.url, daemon.token, [victim, *others], clients, state
                )
                settle = 1.0 if ctx.options.short else 2.0
            await trio.sleep(settle)
            origin = time.perf_counter()
            list_scope = trio.CancelScope()

            async def lister() -> None:
                with list_scope:
                    await _list_loop(daemon.url, daemon.token, samples, origin)

            nursery.start_soon(lister)
            await trio.sleep(0.3)
            t0 = time.perf_counter()
            outcome = OK
            with trio.move_on_after(give_up) as scope:
                try:
                    await client.destroy(victim)
                except TrioctlError as exc:
                    outcome = outcome_of(exc)
            t1 = time.perf_counter()
            if scope.cancelled_caught:
                outcome = "PROBE_TIMEOUT"
            await trio.sleep(0.3)
            list_scope.cancel()
            if hammer is not None:
                result["hammer"] = await stop_hammer(hammer)
            nursery.cancel_scope.cancel()
        reg.kill_vms({pid})
        window = [round(t0 - origin, 4), round(t1 - origin, 4)]
        result.update(
            destroy_s=round(t1 - t0, 4),
            outcome=outcome,
            list_during=summarize(_overlapping(samples, window)),
            list_all=summarize(samples),
            destroy_window=window,
            samples=[s.to_json() for s in samples],
        )
        if in_flight.ended:
            _start, end, how = in_flight.ended[0]
            result["in_flight_call"] = {"outcome": how, "ended_after_destroy_s": round(end - t0, 4)}
        say(
            f"{variant} round {index + 1}: destroy {fmt_s(t1 - t0)} ({outcome}); list during "
            f"destroy max {fmt_ms(result['list_during']['max_ms'])}"
        )
        return result


async def _run_mode(ctx: Context, mode: Mode, sizes: dict[str, Any]) -> dict[str, Any]:
    reg, say = ctx.registry, ctx.progress.say
    state = reg.new_dir("destroy")
    daemon = await start_daemon(reg, state, mode, backend=ctx.options.backend)
    variants: dict[str, Any] = {}
    try:
        names = [f"vm{i}" for i in range(sizes["n"])]
        async with connect(daemon.url, daemon.token) as client:
            say(f"starting {len(names)} domains ({ctx.emulator})")
            pids = await start_domains(client, reg, names, ctx.emulator)
            with trio.fail_after(60):
                await wait_monitors(client, names)
        for variant in sizes["variants"]:
            others: list[str] = []
            if variant == "storm":
                others = names[: sizes["k"] - 1]
                hang([pids[n] for n in others])
                say(f"storm variant: {len(others)} other domains hung, {sizes['clients']} clients")
            rounds = []
            for index in range(sizes["rounds"][variant]):
                rounds.append(
                    await _round(ctx, daemon, variant, index, others, sizes["clients"], state)
                )
            variants[variant] = {
                "rounds": rounds,
                "destroy": summarize_values(r["destroy_s"] for r in rounds),
                "destroy_outcomes": [r["outcome"] for r in rounds],
                "list_during": summarize(
                    s
                    for r in rounds
                    for s in _overlapping(
                        [Sample.from_json(x) for x in r["samples"]], r["destroy_window"]
                    )
                ),
            }
    finally:
        reg.kill_vms()
        await daemon.stop(grace=5)
    return variants


async def run(ctx: Context) -> dict[str, Any]:
    sizes: dict[str, Any] = {
        "n": ctx.pick(ctx.options.n, 4, 2),
        "k": ctx.pick(ctx.options.k, 4, 2),
        "clients": ctx.pick(ctx.options.clients, 30, 6),
        "variants": ["quiet", "storm"],
        "rounds": {
            "quiet": ctx.pick(ctx.options.rounds, 5, 1),
            "storm": ctx.pick(ctx.options.rounds, 3, 1),
        },
    }
    if not 1 <= sizes["k"] <= sizes["n"] + 1:
        raise ValueError("destroy needs 1 <= k <= n + 1 (the victim and k-1 other hung domains)")
    modes: dict[str, Any] = {}
    for mode in ctx.modes:
        ctx.progress.prefix = f"destroy/{mode.name}"
        modes[mode.name] = await _run_mode(ctx, mode, sizes)
    return {"sizes": sizes, "modes": modes}


def report(results: dict[str, Any]) -> Report:
    sizes, modes = results["sizes"], results["modes"]
    rows: list[list[object]] = []
    for mode, variants in modes.items():
        for variant, v in variants.items():
            d, during = v["destroy"], v["list_during"]
            got = {r["in_flight_call"]["outcome"] for r in v["rounds"] if "in_flight_call" in r}
            rows.append(
                [
                    mode,
                    variant,
                    f"{fmt_ms(d['p50_ms'])} / {fmt_ms(d['max_ms'])}",
                    ", ".join(sorted(set(v["destroy_outcomes"]))),
                    f"{during['count']} calls: {fmt_ms(during['p50_ms'])} / "
                    f"{fmt_ms(during['max_ms'])}",
                    ", ".join(f"{k} {n}" for k, n in during["errors"].items()) or "none",
                    ", ".join(sorted(got)) or "-",
                ]
            )
    rows.append(["libvirt 9.0", "reference", LIBVIRT["destroy"], None, LIBVIRT["destroy_list_max"]])
    header = [
        "mode",
        "variant",
        "destroy p50 / max",
        "destroy outcome",
        "list during destroy p50 / max",
        "list errors",
        "call in flight got",
    ]
    panels = [
        [_panel(mode, variant, data[variant]["rounds"]) for mode, data in modes.items()]
        for variant in sizes["variants"]
    ]
    return Report(
        f"{sizes['n']} other domains; each round destroys a fresh SIGSTOPped domain. "
        f"quiet: one monitor call in flight on it ({sizes['rounds']['quiet']} rounds); "
        f"storm: it and {sizes['k'] - 1} other hung domains hammered by {sizes['clients']} "
        f"clients ({sizes['rounds']['storm']} rounds). A second connection lists the "
        "domains back to back throughout (one call at a time, no pause).",
        [Table(header, rows)],
        _goals(modes.get("default")),
        panels,
        share_y=True,
    )


def _goals(data: dict[str, Any] | None) -> list[Goal]:
    """Destroy < 0.5 s and no list call stalled during it (default mode)."""
    found: list[Goal] = []
    for variant, v in (data or {}).items():
        worst = v["destroy"]["max_ms"]
        failed = [o for o in v["destroy_outcomes"] if o != OK]
        notes = [f"missed by {worst - 500:.0f} ms"] if worst is not None and worst >= 500 else []
        notes += [f"failed: {', '.join(failed)}"] if failed else []
        found.append(
            Goal(
                f"destroy of a hung domain < 0.5 s ({variant})",
                "< 0.5 s (libvirt 11-12 s)",
                f"max {fmt_ms(worst)} over {len(v['rounds'])} rounds, "
                f"median {fmt_ms(v['destroy']['p50_ms'])}",
                worst is not None and worst < 500 and not failed,
                "; ".join(notes),
            )
        )
        during = v["list_during"]
        stalled = during["max_ms"] is not None and during["max_ms"] > STALL_MS
        errors = sum(during["errors"].values())
        found.append(
            Goal(
                f"list never stalled during destroy ({variant})",
                f"every list call < {STALL_MS:g} ms, none failed (libvirt: blocked 11.6 s)",
                f"{during['count']} calls, max {fmt_ms(during['max_ms'])}, {errors} failed",
                not stalled and errors == 0 and during["count"] > 0,
                f"slowest {fmt_ms(during['max_ms'])}" if stalled else "",
            )
        )
    return found


def _panel(mode: str, variant: str, rounds: list[dict[str, Any]]) -> Panel:
    """List latency around each round's destroy, aligned on its start."""
    series, spans = [], []
    for r in rounds:
        start, end = r["destroy_window"]
        samples = [Sample.from_json(x) for x in r["samples"]]
        series.append(sample_series(samples, mode_color(mode), offset=-start))
        spans.append((0.0, end - start))
    times = ", ".join(fmt_s(r["destroy_s"]) or "" for r in rounds)
    return Panel(
        f"{mode}, {variant}: destroy took {times}",
        series,
        xlabel="s since destroy was sent (grey: until it returned)",
        ylabel="list latency, ms",
        spans=spans,
    )


SCENARIO = Scenario(
    name="destroy",
    summary="destroy of a hung domain, and list latency while it runs",
    default_modes=("default", "legacy"),
    run=run,
    report=report,
)
