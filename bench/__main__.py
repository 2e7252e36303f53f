"""The stuck-VM benchmark suite.

    python -m bench SCENARIO [SCENARIO ...] [options]     (from a checkout's root)
    python -m bench all --short                           every scenario, smoke-sized
    python -m bench --render bench/results/storm.json     tables and plot again

Scenarios: storm, destroy, restart, stop, throughput, scale, qmp (see
docs/benchmarks.md). Each starts its own daemon processes (the simulator by
default, ``--backend qemu`` for real QEMU), talks to them only through the
public client API, runs the default and the legacy mode where the difference
matters, prints progress on stderr, and writes ``SCENARIO.json``,
``SCENARIO.md`` and ``SCENARIO.png`` into ``--out`` (default
``bench/results/``). Every process it started is stopped when it ends, Ctrl-C
and SIGTERM included.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from . import _render
from ._context import Context, Options, Scenario
from ._output import Progress, machine_info, write_json
from ._procs import MODES, Registry
from .scenarios import SCENARIOS

__all__ = ["main", "render"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Stuck-VM benchmarks of the trioctl daemon.",
        epilog="scenarios: " + "; ".join(f"{s.name}: {s.summary}" for s in SCENARIOS.values()),
    )
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="a scenario name, or all")
    p.add_argument("--short", action="store_true", help="smoke-sized: seconds, few domains")
    p.add_argument("--duration", type=float, help="measurement window, seconds")
    p.add_argument("--idle", type=float, help="storm: idle baseline, seconds (default: --duration)")
    p.add_argument("--backend", choices=("sim", "qemu"), default="sim")
    p.add_argument(
        "--mode",
        default=None,
        help="default, legacy, libvirt9, both (default+legacy), all, or a comma list "
        "(default: both where the difference matters)",
    )
    p.add_argument("--n", type=int, help="domains")
    p.add_argument("--k", type=int, help="hung domains")
    p.add_argument("--clients", type=int, help="hammer clients")
    p.add_argument("--rounds", type=int, help="repetitions (destroy, stop, throughput)")
    p.add_argument("--interval", type=float, default=0.05, help="probe interval, s (0.05)")
    p.add_argument(
        "--give-up", type=float, default=60.0, help="a probe abandons a call after this, s (60)"
    )
    p.add_argument("--hammer-call", choices=("monitor", "stats"), default="monitor")
    p.add_argument(
        "--hammer-pause", type=float, default=0.0, help="hammer clients sleep after an error, s"
    )
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--against",
        type=Path,
        metavar="CHECKOUT",
        help="startup: also run the daemon of this checkout, alternating (before/after)",
    )
    p.add_argument("--render", type=Path, metavar="JSON", help="redo the .md and .png of a result")
    return p


def _modes(spec: str | None, scenario: Scenario) -> list[str]:
    if spec is None or spec == "both":
        return list(scenario.default_modes) if spec is None else ["default", "legacy"]
    if spec == "all":
        return list(MODES)
    names = [m.strip() for m in spec.split(",") if m.strip()]
    for name in names:
        if name not in MODES:
            raise SystemExit(f"python -m bench: unknown mode {name!r} (known: {', '.join(MODES)})")
    return names


async def _guarded(scenario: Scenario, ctx: Context) -> dict[str, Any]:
    """Run the scenario; SIGTERM or SIGHUP cancels it like Ctrl-C."""
    signalled = False

    async def watch(nursery: trio.Nursery) -> None:
        nonlocal signalled
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
            async for _ in signals:
                signalled = True
                nursery.cancel_scope.cancel()
                return

    result: dict[str, Any] = {}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery)
            result = await scenario.run(ctx)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The watcher never fails: the scenario's own exception, bare.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    if signalled:
        raise KeyboardInterrupt
    return result


def run_one(
    scenario: Scenario, options: Options, mode_spec: str | None, argv: Sequence[str]
) -> int:
    modes = [MODES[m] for m in _modes(mode_spec, scenario)]
    progress = Progress(quiet=options.quiet)
    registry = Registry(keep=options.keep)
    ctx = Context(options, modes, registry, progress)
    started = time.time()
    t0 = time.monotonic()
    progress.prefix = scenario.name
    names = f"modes {', '.join(m.name for m in modes)}; " if modes else ""
    progress.say(f"{names}work dir {registry.root}")
    try:
        results = trio.run(_guarded, scenario, ctx)
    except KeyboardInterrupt:
        progress.prefix = scenario.name
        progress.say("interrupted; stopping every process started")
        return 130
    except Exception:
        progress.prefix = scenario.name
        progress.say("failed:\n" + traceback.format_exc())
        return 1
    finally:
        registry.cleanup()
    results["goals"] = [g.to_json() for g in scenario.report(results).goals]
    data = {
        "scenario": scenario.name,
        "command": "python -m bench " + shlex.join(argv),
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "short": options.short,
        "backend": options.backend,
        "machine": machine_info(),
        "modes": {m.name: {"settings": dict(m.settings), "about": m.about} for m in modes},
        "results": results,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    json_path = options.out / f"{scenario.name}.json"
    write_json(json_path, data)
    render(json_path)
    progress.prefix = scenario.name
    progress.say(f"done in {data['elapsed_s']} s: {json_path} (.md, .png)")
    for goal in results.get("goals", []):
        mark = {True: "met", False: "MISSED", None: "not measured"}[goal["met"]]
        progress.say(f"goal {mark}: {goal['goal']}: {goal['measured']}")
    return 0


def render(json_path: Path) -> None:
    """Write ``NAME.md`` and ``NAME.png`` beside a result file."""
    data = json.loads(json_path.read_text())
    scenario = SCENARIOS[data["scenario"]]
    report = scenario.report(data["results"])
    png = json_path.with_suffix(".png")
    _render.plot(report, png)
    text = _render.markdown(scenario.name, scenario.summary, data, report, png.name)
    json_path.with_suffix(".md").write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(args_list)
    if args.render is not None:
        render(args.render)
        return 0
    names = args.scenarios
    if names == ["all"]:
        names = list(SCENARIOS)
    if not names:
        _parser().print_help()
        return 2
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(
            f"python -m bench: unknown scenario {', '.join(unknown)} "
            f"(known: {', '.join(SCENARIOS)}, all)",
            file=sys.stderr,
        )
        return 2
    options = Options(
        short=args.short,
        backend=args.backend,
        duration=args.duration,
        idle=args.idle,
        n=args.n,
        k=args.k,
        clients=args.clients,
        rounds=args.rounds,
        interval=args.interval,
        give_up=args.give_up,
        hammer_call=args.hammer_call,
        hammer_pause=args.hammer_pause,
        out=args.out,
        keep=args.keep,
        quiet=args.quiet,
        against=args.against,
    )
    status = 0
    for name in names:
        code = run_one(SCENARIOS[name], options, args.mode, args_list)
        if code == 130:
            return code
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
