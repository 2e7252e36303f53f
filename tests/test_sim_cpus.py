"""The simulator's vCPUs: ``query-cpus-fast`` answers as QEMU 7.2 does.

QEMU's ``-machine none`` has no CPUs: ``query-cpus-fast`` returns ``[]``
there (checked against the real binary); other machine types list the
``-smp`` vCPUs.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from trioctl.sim import SmpTopology, VMConfig, open_simulated_vm


async def _cpus(qmp_path: Path) -> Any:
    stream = await trio.open_unix_socket(str(qmp_path))
    async with stream:
        buffer = b""

        async def message() -> Any:
            nonlocal buffer
            while b"\n" not in buffer:
                chunk = await stream.receive_some()
                assert chunk, "the monitor closed the connection"
                buffer += chunk
            line, _, buffer = buffer.partition(b"\n")
            return json.loads(line)

        assert "QMP" in await message()
        for command in ("qmp_capabilities", "query-cpus-fast"):
            await stream.send_all(json.dumps({"execute": command}).encode() + b"\n")
            reply = await message()
        return reply["return"]


@pytest.mark.parametrize(("machine", "cpus"), [("none", []), ("pc", [0, 1]), ("q35", [0, 1])])
async def test_machine_none_has_no_cpus(sock_dir: Path, machine: str, cpus: list[int]) -> None:
    qmp_path = sock_dir / "vm.qmp"
    config = VMConfig(qmp_path=str(qmp_path), machine=machine, smp=SmpTopology(cpus=2, cores=2))
    with trio.fail_after(10):
        async with open_simulated_vm(config):
            assert [cpu["cpu-index"] for cpu in await _cpus(qmp_path)] == cpus


@pytest.mark.qemu
@pytest.mark.slow
async def test_real_qemu_machine_none_has_no_cpus(sock_dir: Path, qemu_binary: str) -> None:
    qmp_path, pidfile = sock_dir / "qemu.qmp", sock_dir / "qemu.pid"
    argv = [qemu_binary, "-machine", "none", "-nodefaults", "-display", "none"]
    argv += ["-qmp", f"unix:{qmp_path},server=on,wait=off", "-pidfile", str(pidfile)]
    with trio.fail_after(30):
        done = await trio.run_process([*argv, "-daemonize"], capture_stderr=True, check=False)
        assert done.returncode == 0, done.stderr
        try:
            assert await _cpus(qmp_path) == []
        finally:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
