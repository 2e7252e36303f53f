"""The daemon and the many-VMs simulator raise the cyclic GC's thresholds
(see trioctl._util.GC_THRESHOLDS and docs/benchmarks.md, scale)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trioctl._cli import _daemon_cmd
from trioctl._util import GC_THRESHOLDS, tune_gc
from trioctl.sim import _process


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def test_tune_gc_sets_the_thresholds() -> None:
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    # Young collections much rarer than Python's default, never disabled.
    assert GC_THRESHOLDS[0] >= 10_000 and gc.isenabled()


def test_daemon_tunes_gc_before_its_loop_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, ...]] = []

    class FakeTrio:
        @staticmethod
        def run(*_args: Any, **_kwargs: Any) -> None:
            seen.append(gc.get_threshold())

    monkeypatch.setattr(_daemon_cmd, "trio", FakeTrio)
    monkeypatch.setattr(_daemon_cmd, "setup_logging", lambda config: None)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    status = _daemon_cmd.daemon_main(None, "127.0.0.1:0", state, "sim", None, False, None)
    assert status == 0
    assert seen == [GC_THRESHOLDS]


def test_many_vms_simulator_tunes_gc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []

    def fake_run(serve: object, daemonize: bool) -> int:
        seen.append(gc.get_threshold())
        return 0

    monkeypatch.setattr(_process, "_run", fake_run)
    assert _process.main(["many", "--dir", str(tmp_path), "--count", "2"]) == 0
    assert seen == [GC_THRESHOLDS]


def test_single_vm_simulator_keeps_default_gc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, ...]] = []

    def fake_run(serve: object, daemonize: bool) -> int:
        seen.append(gc.get_threshold())
        return 0

    monkeypatch.setattr(_process, "_run", fake_run)
    _process.main(["-qmp", f"unix:{tmp_path / 'q.sock'},server=on,wait=off"])
    assert seen == [(700, 10, 10)]
