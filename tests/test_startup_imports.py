"""What the daemon imports to start, and how (issue 14 goal 5: the empty
daemon's start-up; figures in docs/benchmarks.md, restart)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest
import trio.testing

from trioctl._cli._imports import no_gc_while_importing
from trioctl._util import wait_all_tasks_blocked


def test_wait_all_tasks_blocked_is_trios() -> None:
    # Taken from trio's core so that trio.testing (and pytest) are never
    # imported by the daemon: it must stay the very function trio.testing has.
    assert wait_all_tasks_blocked is trio.testing.wait_all_tasks_blocked


def test_no_gc_while_importing_restores_the_collector() -> None:
    was = gc.isenabled()
    try:
        gc.enable()
        with no_gc_while_importing():
            assert not gc.isenabled()
        assert gc.isenabled()
        with pytest.raises(ImportError), no_gc_while_importing():
            raise ImportError("a failed import")
        assert gc.isenabled()
        gc.disable()
        with no_gc_while_importing():
            assert not gc.isenabled()
        assert not gc.isenabled()  # left as it was: off
    finally:
        if was:
            gc.enable()
        else:
            gc.disable()


@pytest.mark.slow
def test_daemon_command_imports_no_test_code() -> None:
    # A fresh interpreter, as `python -m trioctl daemon` starts: everything the
    # daemon command imports, and nothing of pytest even though it is
    # installed here; the collector is on again afterwards.
    code = (
        "import gc, json, sys\n"
        "import trioctl._cli._main, trioctl._cli._daemon_cmd\n"
        "print(json.dumps({'gc': gc.isenabled(), 'modules': sorted(sys.modules)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, timeout=60
    ).stdout
    seen = json.loads(out)
    assert seen["gc"] is True
    modules = set(seen["modules"])
    assert "trioctl._daemon" in modules and "trioctl._server" in modules
    assert not {m for m in modules if m == "pytest" or m.startswith(("_pytest", "trio.testing"))}
    # Nor the Prometheus client: imported at the first scrape of /metrics.
    assert not {m for m in modules if m.startswith("prometheus_client")}
