"""Smoke run of ``python -m bench.bench_idle`` with a few sessions: it opens
them from a process of its own, reads the daemon's RSS before and after, and
stops every process it started. Figures are not asserted beyond being there
(they belong to docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
async def test_idle_sessions_report_memory_per_session(sock_dir: Path) -> None:
    env = dict(os.environ, TMPDIR=str(sock_dir))
    argv = [sys.executable, "-m", "bench.bench_idle", "--sessions", "50", "--window", "0.2"]
    with trio.fail_after(90):
        done = await trio.run_process(
            argv, cwd=str(REPO), env=env, check=False, capture_stdout=True, capture_stderr=True
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    result = json.loads(done.stdout)
    assert result["sessions"] == 50
    assert result["max_clients"] >= 50
    assert result["rss_before_mib"] > 0 and result["rss_after_mib"] > 0
    assert isinstance(result["kb_per_session"], float)
    assert result["handshake"]["count"] == 10
    assert "tracemalloc" not in result
    # The daemon and the sessions' process are gone with the run's directory.
    assert not any(p.name.startswith("tb-") for p in sock_dir.iterdir())
