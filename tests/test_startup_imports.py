"""What the daemon imports to start, and how (issue 14 goal 5: the empty
daemon's start-up; figures in docs/benchmarks.md, restart)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio.testing

from trioctl._cli._imports import no_gc_while_importing
from trioctl._util import wait_all_tasks_blocked


def test_wait_all_tasks_blocked_is_trios() -> None:
    # Taken from trio's core so that trio.testing (and pytest) are never
    # imported by the daemon: it must stay the very function trio.testing has.
    assert wait_all_tasks_blocked is trio.testing.wait_all_tasks_blocked


def test_no_gc_while_importing_freezes_and_restores_the_collector() -> None:
    was = gc.isenabled()
    try:
        gc.enable()
        with no_gc_while_importing():
            assert not gc.isenabled()
            made: list[list[int]] = [[]]  # a container the GC tracks
        assert gc.isenabled()
        # What the block made is frozen: no collection scans it again.
        assert gc.get_freeze_count() > 0
        assert not any(o is made for o in gc.get_objects())
        with pytest.raises(ImportError), no_gc_while_importing():
            raise ImportError("a failed import")
        assert gc.isenabled()
        gc.disable()
        with no_gc_while_importing():
            assert not gc.isenabled()
        assert not gc.isenabled()  # left as it was: off
    finally:
        gc.unfreeze()
        if was:
            gc.enable()
        else:
            gc.disable()


@pytest.mark.slow
def test_daemon_command_imports_no_test_code(tmp_path: Path) -> None:
    # A fresh interpreter, as `python -m trioctl daemon` starts (up to
    # --print-config, which loads every module the daemon runs with): nothing
    # of pytest even though it is installed here, nor the Prometheus client
    # (imported at the first scrape of /metrics); the imports frozen and the
    # collector on again.
    code = (
        "import atexit, gc, json, sys\n"
        "atexit.register(lambda: print(json.dumps({'gc': gc.isenabled(), "
        "'frozen': gc.get_freeze_count(), 'modules': sorted(sys.modules)}), file=sys.stderr))\n"
        f"sys.argv = ['trioctl', 'daemon', '--print-config', '--state-dir', {str(tmp_path)!r}]\n"
        "from trioctl._cli import main\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(proc.stderr.strip().splitlines()[-1])
    assert seen["gc"] is True and seen["frozen"] > 10_000
    modules = set(seen["modules"])
    assert {"trioctl._daemon", "trioctl._server", "trioctl._driver"} <= modules
    assert not {m for m in modules if m == "pytest" or m.startswith(("_pytest", "trio.testing"))}
    assert not {m for m in modules if m.startswith("prometheus_client")}
