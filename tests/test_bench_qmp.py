"""Smoke run of ``python -m bench qmp --short`` against a real QEMU: the three
clients all complete round trips, and the files are written. Rates are not
asserted (they belong to docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


async def test_qmp_scenario_measures_three_clients(sock_dir: Path, qemu_binary: str) -> None:
    out = sock_dir / "results"
    env = dict(os.environ, TMPDIR=str(sock_dir))
    argv = [sys.executable, "-m", "bench", "qmp", "--short", "--out", str(out)]
    with trio.fail_after(60):
        done = await trio.run_process(
            argv, cwd=str(REPO), env=env, check=False, capture_stdout=True, capture_stderr=True
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    data = json.loads((out / "qmp.json").read_text())
    clients = data["results"]["clients"]
    assert set(clients) == {"trioctl", "qemu.qmp", "raw"}
    for client, figures in clients.items():
        for inflight in ("1", "32"):
            assert figures[inflight]["per_s"] > 0, (client, inflight)
    assert [g["met"] in (True, False) for g in data["results"]["goals"]] == [True, True]
    markdown = (out / "qmp.md").read_text()
    assert markdown.startswith("## qmp: ")
    assert "| raw blocking socket | 32 in flight |" in markdown
    assert (out / "qmp.png").read_bytes()[:4] == b"\x89PNG"
    # QEMU was stopped with the run's temporary directory.
    assert not any(p.name.startswith("tb-") for p in sock_dir.iterdir())
