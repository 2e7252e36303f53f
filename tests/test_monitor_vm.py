"""The monitor and the launcher against real QEMU and against the simulator.

The same behavioural suite runs on both backends. A hung QEMU is a
SIGSTOPped QEMU. Every test is bounded by ``fail_after``.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from trioctl import ConnectionLost, LaunchError, QmpCommandError
from trioctl._launcher import LaunchSpec, QemuProcess, build_argv, launch
from trioctl._monitor import open_monitor

from .helpers import launched, wait_until

BACKENDS = [pytest.param("qemu", marks=pytest.mark.qemu), "sim"]


@attrs.frozen
class Vm:
    proc: QemuProcess
    spec: LaunchSpec


@pytest.fixture(params=BACKENDS)
async def vm(request: pytest.FixtureRequest, sock_dir: Path) -> AsyncIterator[Vm]:
    spec = LaunchSpec(
        name="vm1",
        qmp_path=str(sock_dir / "vm1.qmp"),
        emulator=request.param,
    )
    async with launched(spec, sock_dir) as proc:
        yield Vm(proc, spec)


@pytest.mark.slow
async def test_negotiate_status_stop_cont(vm: Vm) -> None:
    with trio.fail_after(10):
        async with open_monitor(vm.spec.qmp_path) as monitor:
            assert monitor.greeting.version[0] >= 7
            status = await monitor.execute("query-status")
            assert status["status"] == "running"
            assert status["running"] is True
            with monitor.subscribe() as events:
                assert await monitor.execute("stop") == {}
                event = await events.receive_channel.receive()
                assert event.name == "STOP"
                assert (await monitor.execute("query-status"))["status"] == "paused"
                assert await monitor.execute("cont") == {}
                event = await events.receive_channel.receive()
                assert event.name == "RESUME"
            assert (await monitor.execute("query-status"))["running"] is True
            assert (await monitor.execute("query-name")) == {"name": "vm1"}


@pytest.mark.slow
async def test_unknown_command(vm: Vm) -> None:
    with trio.fail_after(10):
        async with open_monitor(vm.spec.qmp_path) as monitor:
            with pytest.raises(QmpCommandError) as info:
                await monitor.execute("no-such-command")
            assert info.value.error_class == "CommandNotFound"


@pytest.mark.slow
async def test_sigstop_deadline_then_sigcont_recovers(vm: Vm) -> None:
    with trio.fail_after(15):
        async with open_monitor(vm.spec.qmp_path) as monitor:
            assert vm.proc.send_signal(signal.SIGSTOP)
            # The deadline itself is exact in virtual time (test_monitor.py).
            with trio.move_on_after(1) as scope:
                await monitor.execute("query-status")
            assert scope.cancelled_caught
            assert vm.proc.stopped()
            vm.proc.send_signal(signal.SIGCONT)
            assert (await monitor.execute("query-status"))["status"] == "running"
            # The reply to the cancelled command came late and was dropped.
            await wait_until(lambda: monitor.statistics().replies_dropped >= 1)
            assert monitor.statistics().replies_dropped == 1


@pytest.mark.slow
async def test_sigkill_fails_every_waiter(vm: Vm) -> None:
    failures: list[Exception] = []
    with trio.fail_after(10):
        async with open_monitor(vm.spec.qmp_path) as monitor:
            vm.proc.send_signal(signal.SIGSTOP)

            async def call() -> None:
                try:
                    await monitor.execute("query-status")
                except ConnectionLost as exc:
                    failures.append(exc)

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(call)
                await wait_until(lambda: monitor.statistics().pending == 3)
                vm.proc.send_signal(signal.SIGKILL)
    assert len(failures) == 3


@pytest.mark.slow
async def test_kill_of_stopped_process_is_fast(vm: Vm) -> None:
    vm.proc.send_signal(signal.SIGSTOP)
    with trio.fail_after(20):
        await wait_until(vm.proc.stopped)
        start = trio.current_time()
        await vm.proc.kill(grace=30)
    assert trio.current_time() - start < 10  # SIGKILL at once, not after the 30 s grace
    assert vm.proc.exited()


@pytest.mark.slow
async def test_kill_running_process_uses_sigterm(vm: Vm) -> None:
    with trio.fail_after(5):
        await vm.proc.kill(grace=3)
    assert vm.proc.exited()


@pytest.mark.slow
async def test_quit_exits_and_pidfd_reports_it(vm: Vm) -> None:
    with trio.fail_after(10):
        async with open_monitor(vm.spec.qmp_path) as monitor:
            await monitor.execute("quit")
            await vm.proc.wait()
    assert vm.proc.exited()
    assert not vm.proc.send_signal(0)


@pytest.mark.slow
async def test_reattach(vm: Vm) -> None:
    pid = vm.proc.pid
    again = QemuProcess.attach(pid, vm.proc.start_ticks)
    try:
        assert not again.exited()
    finally:
        again.close()
    with pytest.raises(ProcessLookupError):
        QemuProcess.attach(pid, vm.proc.start_ticks + 1)


@pytest.mark.slow
@pytest.mark.parametrize("emulator", BACKENDS)
async def test_launch_failure_reports_stderr(emulator: str, sock_dir: Path) -> None:
    spec = LaunchSpec(
        name="bad",
        qmp_path=str(sock_dir / "bad.qmp"),
        emulator=emulator,
        extra_args=("-no-such-option",),
    )
    with trio.fail_after(20), pytest.raises(LaunchError, match="no-such-option"):
        await launch(spec, run_dir=sock_dir)


@pytest.mark.slow
async def test_missing_emulator(sock_dir: Path) -> None:
    spec = LaunchSpec(
        name="x",
        qmp_path=str(sock_dir / "x.qmp"),
        emulator=str(sock_dir / "missing-binary"),
    )
    with trio.fail_after(5), pytest.raises(LaunchError, match="cannot run"):
        await launch(spec, run_dir=sock_dir)


def test_argv_is_a_list_without_shell() -> None:
    spec = LaunchSpec(
        name="vm; rm -rf /",
        qmp_path="/run/x.qmp",
        emulator="qemu",
        paused=True,
        extra_args=("-snapshot",),
    )
    argv = build_argv(spec)
    assert argv[argv.index("-name") + 1] == "guest=vm; rm -rf /"
    assert argv[argv.index("-qmp") + 1] == "unix:/run/x.qmp,server=on,wait=off"
    assert "-S" in argv and argv[-1] == "-snapshot"
    # Detached by the launcher, not by QEMU: -daemonize dies under the sandbox.
    assert "-daemonize" not in argv and "-pidfile" not in argv
    assert argv[argv.index("-sandbox") + 1] == (
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    )


@pytest.mark.slow
async def test_kill_of_process_stopped_during_the_grace_is_fast(vm: Vm) -> None:
    # The process ignores SIGTERM while stopped: kill() must notice the stop
    # and send SIGKILL instead of waiting out the whole grace.
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(vm.proc.kill, 30.0)
            vm.proc.send_signal(signal.SIGSTOP)
            start = trio.current_time()
            await vm.proc.wait()
        assert trio.current_time() - start < 10  # not the 30 s grace
