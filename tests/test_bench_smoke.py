"""Smoke runs of the benchmark suite, so that it never rots.

Each scenario runs smoke-sized (``python -m bench SCENARIO --short``) as a
subprocess, in both modes where it has two, and must finish, write its JSON,
markdown and PNG, and show the few properties that hold whatever the machine's
speed (healthy probes answered under the storm, a hung domain destroyed, the
legacy restart not served while a QEMU hangs...). Timing goals are not
asserted: they belong to the real runs in docs/benchmarks.md.

The bench's temporary directory is put under the test's own (``TMPDIR``), so
whatever happens every process it started is found by that path on its
command line and killed at the end.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _processes_under(path: Path) -> list[int]:
    mark = str(path).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if mark in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            pass
    return found


@pytest.fixture
def bench_tmp(sock_dir: Path) -> Iterator[Path]:
    """TMPDIR for the bench; afterwards, nothing started under it survives."""
    try:
        yield sock_dir
    finally:
        for pid in _processes_under(sock_dir):
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass


async def _stop_bench(process: trio.Process) -> None:
    """On timeout: SIGTERM (the bench cleans up), SIGKILL if it takes too long."""
    process.terminate()
    with trio.move_on_after(30):
        await process.wait()
        return
    process.kill()


async def run_bench(scenario: str, tmp: Path, *extra: str) -> dict[str, Any]:
    """Run ``python -m bench SCENARIO --short`` and return its JSON result."""
    out = tmp / "results"
    env = dict(os.environ, TMPDIR=str(tmp))
    argv = [sys.executable, "-m", "bench", scenario, "--short", "--out", str(out), *extra]
    result = await trio.run_process(
        argv,
        cwd=str(REPO),
        env=env,
        check=False,
        capture_stdout=True,
        capture_stderr=True,
        deliver_cancel=_stop_bench,
    )
    log = result.stderr.decode(errors="replace")
    assert result.returncode == 0, log
    for suffix in (".json", ".md", ".png"):
        assert (out / f"{scenario}{suffix}").stat().st_size > 0, suffix
    assert (out / f"{scenario}.png").read_bytes()[:8] == PNG_MAGIC
    markdown = (out / f"{scenario}.md").read_text()
    assert markdown.startswith(f"## {scenario}: ")
    assert f"![{scenario}]({scenario}.png)" in markdown
    data: dict[str, Any] = json.loads((out / f"{scenario}.json").read_text())
    assert data["scenario"] == scenario
    assert data["short"] is True
    # Every process the bench started is gone (its work dir is under tmp).
    assert _processes_under(tmp) == []
    assert not any(p.name.startswith("tb-") for p in tmp.iterdir())
    return data


async def test_storm(bench_tmp: Path) -> None:
    with trio.fail_after(60):
        data = await run_bench("storm", bench_tmp)
    modes = data["results"]["modes"]
    assert set(modes) == {"default", "legacy"}
    default = modes["default"]
    for probe in ("list", "info_hung", "info_healthy", "monitor_healthy"):
        idle, storm = default["idle"][probe], default["storm"][probe]
        assert idle["count"] > 0 and idle["ok"] == idle["count"], (probe, idle)
        assert storm["count"] > 0 and storm["ok"] == storm["count"], (probe, storm)
    # The hammer's clients were all busy on the hung domains.
    assert default["hammer"]["calls"] + default["hammer"]["in_flight_at_end"] >= 6
    assert len(default["samples"]["storm"]["list"]) == default["storm"]["list"]["count"]
    # Four probes against the first issue's targets and against issue 14's.
    goals = [g["goal"] for g in data["results"]["goals"]]
    assert len(goals) == 8 and sum(g.startswith("issue 14: ") for g in goals) == 4, goals


async def test_destroy(bench_tmp: Path) -> None:
    with trio.fail_after(60):
        data = await run_bench("destroy", bench_tmp)
    for mode, variants in data["results"]["modes"].items():
        for variant, v in variants.items():
            assert v["destroy_outcomes"] and all(o == "ok" for o in v["destroy_outcomes"]), (
                mode,
                variant,
                v["destroy_outcomes"],
            )
            assert v["list_during"]["count"] > 0
    quiet = data["results"]["modes"]["default"]["quiet"]["rounds"]
    # The call that held the hung domain's job learns that it was destroyed.
    assert all(r["in_flight_call"]["outcome"] == "DOMAIN_DESTROYED" for r in quiet)


async def test_restart(bench_tmp: Path) -> None:
    with trio.fail_after(90):
        data = await run_bench("restart", bench_tmp)
    modes = data["results"]["modes"]
    for variant, v in modes["default"].items():
        assert v["first_call_s"] > 0, variant
        assert v["listed"] == v["n"]
        assert v["healthy_answered"] == v["n"] - v["k"], variant
    # Legacy reconnects serially before serving: a hung QEMU blocks it.
    for variant, v in modes["legacy"].items():
        assert "first_call_s" not in v, variant
        assert v["healthy_answered"] == 0


async def test_startup(bench_tmp: Path) -> None:
    # Against this same checkout: both sides of the alternation run.
    with trio.fail_after(90):
        data = await run_bench("startup", bench_tmp, "--against", str(REPO))
    results = data["results"]
    assert len(results["sides"]) == 2
    spawns = results["spawns"]
    assert len(spawns) == results["rounds"] * 4
    for spawn in spawns:
        assert spawn["first_call_s"] > 0 and spawn["cpu_s"] > 0 and spawn["rss_kib"] > 0, spawn
        assert spawn["decoded_s"] >= spawn["first_call_s"]
        assert spawn["listed"] == (0 if spawn["kind"] == "empty" else results["n"])
    assert len(results["goals"]) == 1


async def test_stop(bench_tmp: Path) -> None:
    with trio.fail_after(60):
        data = await run_bench("stop", bench_tmp)
    grace = data["results"]["sizes"]["grace_s"]
    for mode, m in data["results"]["modes"].items():
        for r in m["rounds"]:
            assert r["exited"], mode
            assert r["calls_sent"] == data["results"]["sizes"]["calls"]
            # Bounded by the grace, not by the hung calls (generous: shared CI);
            # the calls had the grace less the stop's reserve (Server.drain).
            assert grace - min(0.3, grace / 4) <= r["stop_s"] < grace + 5, (mode, r["stop_s"])


async def test_throughput(bench_tmp: Path) -> None:
    with trio.fail_after(60):
        data = await run_bench("throughput", bench_tmp)
    default = data["results"]["modes"]["default"]
    for server in ("echo", "daemon_raw", "daemon_client"):
        for connections in ("1", "16"):
            assert default[server][connections]["calls_per_s"] > 0, (server, connections)
    assert default["daemon_raw"]["1"]["ratio_to_echo"] > 0
    assert default["daemon_raw"]["1"]["server_cpu_us_per_call"] >= 0


async def test_scale(bench_tmp: Path) -> None:
    with trio.fail_after(60):
        data = await run_bench("scale", bench_tmp)
    n = data["results"]["sizes"]["n"]
    for mode, m in data["results"]["modes"].items():
        for phase in ("first", "restart"):
            r = m[phase]
            assert r["all_ok_s"] >= r["first_call_s"] > 0, (mode, phase)
            assert r["rss_mib"] > 0
            assert r["list"]["count"] == 20
            assert r["open_files"] >= n  # one monitor socket per domain


async def test_python_m_bench_help_and_unknown_scenario() -> None:
    with trio.fail_after(30):
        shown = await trio.run_process(
            [sys.executable, "-m", "bench", "--help"],
            cwd=str(REPO),
            capture_stdout=True,
            capture_stderr=True,
        )
        for scenario in ("storm", "destroy", "restart", "stop", "throughput", "scale"):
            assert scenario.encode() in shown.stdout
        unknown = await trio.run_process(
            [sys.executable, "-m", "bench", "nosuch"],
            cwd=str(REPO),
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
        assert unknown.returncode == 2
        assert b"unknown scenario nosuch" in unknown.stderr


async def test_sigterm_stops_everything(bench_tmp: Path) -> None:
    """Interrupted mid-run, the bench still stops every process it started."""
    env = dict(os.environ, TMPDIR=str(bench_tmp))
    argv = [sys.executable, "-m", "bench", "storm", "--short", "--out", str(bench_tmp / "r")]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    argv,
                    cwd=str(REPO),
                    env=env,
                    check=False,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    deliver_cancel=_stop_bench,
                )
            )
            # Wait until a daemon and its VMs run (the bench's children and theirs).
            while len(_processes_under(bench_tmp)) < 4:
                await trio.sleep(0.05)
            process.terminate()
        assert process.returncode == 130
    assert _processes_under(bench_tmp) == []
    assert not any(p.name.startswith("tb-") for p in bench_tmp.iterdir())


async def test_bench_readers(bench_tmp: Path) -> None:
    """``python -m bench.bench_readers --quick``: the lane serves every write."""
    out = bench_tmp / "readers.json"
    env = dict(os.environ, TMPDIR=str(bench_tmp))
    argv = [sys.executable, "-m", "bench.bench_readers", "--quick", "--json", str(out)]
    with trio.fail_after(120):
        result = await trio.run_process(
            argv,
            cwd=str(REPO),
            env=env,
            check=False,
            capture_stdout=True,
            capture_stderr=True,
            deliver_cancel=_stop_bench,
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert "| lane | 1 | 10/10 |" in result.stdout.decode()
    figures = {r["mode"]: r for r in json.loads(out.read_text())}
    assert set(figures) == {"one-queue", "lane"}
    assert figures["lane"]["writes"] == {"ok": 10}
    assert figures["lane"]["reads"].get("JOB_QUEUE_FULL", 0) == 0
    assert _processes_under(bench_tmp) == []
