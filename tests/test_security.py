"""Write is not root: one regression test per attack of issue 10 on
definitions and monitor commands (docs/security.md).

Attacks found on real QEMU are replayed on real QEMU (``qemu`` mark). Each
test is bounded by ``fail_after``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import assume, given, strategies as st

from trioctl import AccessDenied, InvalidParams, MonitorError
from trioctl._client import Client, connect
from trioctl._daemon import DaemonHandle
from trioctl._driver import DriverConfig, open_driver
from trioctl._launcher import LaunchSpec, build_argv
from trioctl._models import Disk, DomainDefinition, DomainState, Nic, structure
from trioctl._policy import WRITE_MONITOR_COMMANDS, monitor_command_allowed
from trioctl._procedures import Role
from trioctl._server import Tokens

from .helpers import make_image, running_daemon

READ, WRITE = "r" * 24, "w" * 24


@asynccontextmanager
async def clients(daemon: DaemonHandle) -> AsyncIterator[tuple[Client, Client]]:
    """A write client and an admin client of ``daemon``."""
    assert daemon.token is not None
    daemon.server.tokens = Tokens({READ: Role.READ, WRITE: Role.WRITE, daemon.token: Role.ADMIN})
    async with connect(daemon.url, WRITE) as writer, connect(daemon.url, daemon.token) as admin:
        yield writer, admin


# -- emulators by name ---------------------------------------------------------------------


async def test_write_cannot_choose_a_binary(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon, clients(daemon) as (writer, admin):
            for client in (writer, admin):
                with pytest.raises(InvalidParams, match=r"never a path|not '/bin/cat'"):
                    await client.define({"name": "cat", "emulator": "/bin/cat"})
                with pytest.raises(InvalidParams, match="known: qemu, sim"):
                    await client.define({"name": "cat", "emulator": "cat"})
            assert daemon.driver.list_domains() == []


async def test_configured_emulator_names(sock_dir: Path, qemu_binary: str) -> None:
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, driver__emulators={"q2": qemu_binary}) as daemon,
            clients(daemon) as (writer, _admin),
        ):
            assert daemon.driver.emulators == {"q2": qemu_binary, "qemu": qemu_binary, "sim": "sim"}
            info = await writer.define({"name": "a", "emulator": "q2"})
            assert info.emulator == "q2"


# -- extra_args ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.qemu
async def test_extra_args_admin_only_and_tainting(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proof = sock_dir / "proof"
    attack = {
        "name": "evil",
        "emulator": "qemu",
        "extra_args": ["-incoming", f"exec:id > {proof}"],
    }
    caplog.set_level(logging.WARNING, logger="trioctl")
    with trio.fail_after(60):
        async with running_daemon(sock_dir) as daemon, clients(daemon) as (writer, admin):
            with pytest.raises(AccessDenied, match=r"extra_args.*admin"):
                await writer.define(attack)
            assert daemon.driver.list_domains() == []
            # The admin may, and the run is tainted (libvirt's custom-argv).
            await admin.define({"name": "raw", "emulator": "qemu", "extra_args": ["-S"]})
            info = await writer.start("raw")
            assert info.taints == ["custom-argv"]
            assert (await writer.get_info("raw")).taints == ["custom-argv"]
            assert "tainted (custom-argv)" in caplog.text
            # A write client may redefine it only without the raw options.
            with pytest.raises(AccessDenied):
                await writer.define({"name": "raw", "emulator": "qemu", "extra_args": ["-S"]})
            await writer.destroy("raw")
            assert (await writer.get_info("raw")).taints == []
    assert not proof.exists()


# -- machine -------------------------------------------------------------------------------


async def test_machine_is_a_plain_name_from_the_allow_list(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, driver__machines=["none", "pc-q35-*"]) as daemon,
            clients(daemon) as (writer, admin),
        ):
            for client in (writer, admin):
                for machine in ("none,kernel=/etc/shadow", "type=none", "pc,accel=kvm", "None"):
                    with pytest.raises(InvalidParams, match="plain machine type"):
                        await client.define({"name": "m", "machine": machine})
                with pytest.raises(InvalidParams, match="allow-list"):
                    await client.define({"name": "m", "machine": "pc"})
            assert daemon.driver.list_domains() == []
            assert (await writer.define({"name": "m", "machine": "pc-q35-7.2"})).name == "m"


# -- monitor commands ----------------------------------------------------------------------


def test_monitor_allow_list() -> None:
    for command in ("query-status", "query-named-block-nodes", *WRITE_MONITOR_COMMANDS):
        assert monitor_command_allowed(command)
    for command in (
        "human-monitor-command",
        "migrate",
        "chardev-add",
        "blockdev-add",
        "device_add",
        "object-add",
        "getfd",
        "quit",
        "query-",
        "qmp_capabilities",
        "x-query-foo",
    ):
        assert not monitor_command_allowed(command)


@pytest.mark.slow
@pytest.mark.qemu
async def test_monitor_commands_by_role(sock_dir: Path) -> None:
    victim = sock_dir / "victim"
    victim.write_text("precious\n")
    attacks: list[tuple[str, dict[str, Any] | None]] = [
        ("migrate", {"uri": f"exec:id > {sock_dir / 'proof'}"}),
        (
            "chardev-add",
            {"id": "c0", "backend": {"type": "file", "data": {"out": str(victim)}}},
        ),
        ("human-monitor-command", {"command-line": "info version"}),
        ("quit", None),
    ]
    with trio.fail_after(60):
        async with running_daemon(sock_dir) as daemon, clients(daemon) as (writer, admin):
            await writer.define({"name": "vm", "emulator": "qemu"})
            pid = (await writer.start("vm")).pid
            for command, arguments in attacks:
                with pytest.raises(AccessDenied, match=f"'{command}' needs the admin role"):
                    await writer.monitor_command("vm", command, arguments)
            async with connect(daemon.url, READ) as reader:
                with pytest.raises(AccessDenied):
                    await reader.monitor_command("vm", "query-status")
            # The write role's own commands work and do not taint.
            assert (await writer.monitor_command("vm", "query-status"))["status"] == "running"
            await writer.monitor_command("vm", "stop")
            await writer.monitor_command("vm", "cont")
            info = await writer.get_info("vm")
            assert (info.pid, info.state, info.taints) == (pid, DomainState.RUNNING, [])
            assert victim.read_text() == "precious\n"
            assert not (sock_dir / "proof").exists()
            # The admin may send anything; the run is tainted until it exits.
            version = await admin.monitor_command(
                "vm", "human-monitor-command", {"command-line": "info version"}
            )
            assert "7." in version
            assert (await writer.get_info("vm")).taints == ["custom-monitor"]
            await admin.monitor_command(
                "vm", "chardev-add", {"id": "c1", "backend": {"type": "null", "data": {}}}
            )
            assert (await writer.get_info("vm")).taints == ["custom-monitor"]
            await writer.destroy("vm")
            await writer.start("vm")
            assert (await writer.get_info("vm")).taints == []
            await writer.destroy("vm")


# -- files: storage directories --------------------------------------------------------------


async def test_files_outside_the_storage_dirs_are_refused(sock_dir: Path, storage: Path) -> None:
    inside = make_image(storage)
    (storage / "escape").symlink_to("/etc/passwd")
    (storage / "a,b").mkdir()
    (storage / "comma").symlink_to(storage / "a,b")
    (storage / "sub").mkdir()
    outside = make_image(sock_dir, "outside.img")
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            clients(daemon) as (writer, admin),
        ):
            for client in (writer, admin):
                for path, why in [
                    (str(outside), "outside the storage directories"),
                    ("/etc/shadow", "outside the storage directories"),
                    (str(storage / "escape"), "symbolic link leading out of them"),
                    (f"{storage}/sub/../disk.img", "without '.', '..'"),
                    (f"{storage}/./disk.img", "without '.', '..'"),
                    (f"{storage}//disk.img", "without '.', '..'"),
                    ("disk.img", "absolute path"),
                    (f"{inside},format=qcow2", "must not contain ','"),
                    (str(storage), "outside the storage directories"),
                    (str(storage / "comma" / "x.img"), "leads through a name containing ','"),
                ]:
                    with pytest.raises(InvalidParams, match=why):
                        await client.define({"name": "d", "disks": [{"path": path}]})
                for field in ("kernel", "initrd"):
                    with pytest.raises(InvalidParams, match=r"outside|need"):
                        await client.define(
                            {"name": "d", "machine": "pc", "kernel": "/etc/shadow", field: "/x"}
                        )
            assert daemon.driver.list_domains() == []


async def test_no_storage_dirs_no_files(sock_dir: Path, storage: Path) -> None:
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon, clients(daemon) as (writer, _admin):
            with pytest.raises(InvalidParams, match="no storage directories are configured"):
                await writer.define({"name": "d", "disks": [{"path": str(make_image(storage))}]})


async def test_symlink_swapped_after_define_is_refused_at_start(
    sock_dir: Path, storage: Path
) -> None:
    image = make_image(storage)
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            clients(daemon) as (writer, _admin),
        ):
            await writer.define({"name": "d", "disks": [{"path": str(image)}]})
            image.unlink()
            with pytest.raises(InvalidParams, match="No such file"):
                await writer.start("d")
            image.symlink_to("/etc/passwd")
            with pytest.raises(InvalidParams, match="symbolic link leading out") as refused:
                await writer.start("d")
            assert "/etc/passwd" not in refused.value.message
            info = await writer.get_info("d")
            assert (info.state, info.pid) == (DomainState.SHUTOFF, None)


# -- typed devices -----------------------------------------------------------------------------


def _qcow2(path: Path, backing: str = "", incompatible: int = 0) -> Path:
    """A small qcow2 v3 image (4 clusters of 64 KiB, 1 MiB virtual) whose
    header names ``backing`` as its backing file."""
    cluster = 1 << 16
    name = backing.encode()
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQII",
        b"QFI\xfb", 3, 112 if name else 0, len(name), 16, 1 << 20, 0,
        1, 3 * cluster,  # L1 table: 1 entry, at cluster 3
        cluster, 1,  # refcount table: 1 cluster, at cluster 1
        0, 0, incompatible, 0, 0, 4, 104,
    )  # fmt: skip
    data = bytearray(4 * cluster)
    data[: len(header)] = header  # then an empty header extension list (8 zero bytes)
    data[112 : 112 + len(name)] = name
    struct.pack_into(">Q", data, cluster, 2 * cluster)  # refcount block at cluster 2
    for index in range(4):
        struct.pack_into(">H", data, 2 * cluster + 2 * index, 1)
    path.write_bytes(data)
    return path


@pytest.mark.slow
@pytest.mark.qemu
async def test_qcow2_backing_file_is_never_opened(sock_dir: Path, storage: Path) -> None:
    image = _qcow2(storage / "evil.qcow2", backing="/etc/shadow")
    disk = {"path": str(image), "format": "qcow2", "readonly": True}
    with trio.fail_after(60):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            clients(daemon) as (writer, _admin),
        ):
            await writer.define({"name": "q", "emulator": "qemu", "disks": [disk]})
            await writer.start("q")
            nodes = await writer.monitor_command("q", "query-named-block-nodes")
            assert sorted(n["node-name"] for n in nodes) == ["disk0", "disk0-file"]
            assert all(n["backing_file_depth"] == 0 for n in nodes)
            assert not any(n["image"]["filename"] == "/etc/shadow" for n in nodes)
            await writer.destroy("q")


@pytest.mark.slow
async def test_qcow2_with_an_external_data_file_is_refused(sock_dir: Path, storage: Path) -> None:
    image = _qcow2(storage / "ext.qcow2", incompatible=1 << 2)
    disk = {"path": str(image), "format": "qcow2"}
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            clients(daemon) as (writer, _admin),
        ):
            await writer.define({"name": "q", "disks": [disk]})
            with pytest.raises(InvalidParams, match="external data file"):
                await writer.start("q")
            _qcow2(image)
            assert (await writer.start("q")).state is DomainState.RUNNING
            await writer.destroy("q")


def _device_definition(storage: Path, emulator: str) -> dict[str, Any]:
    return {
        "name": "dev",
        "emulator": emulator,
        "disks": [
            {"path": str(make_image(storage, "ro.img")), "format": "raw", "readonly": True},
            {"path": str(make_image(storage, "rw.img")), "format": "raw"},
        ],
        "nics": [{"model": "e1000", "mac": "52:54:00:12:34:56"}],
        "serial_log": True,
    }


@pytest.mark.slow
@pytest.mark.qemu
async def test_qemu_domain_with_a_disk_from_a_storage_dir(sock_dir: Path, storage: Path) -> None:
    with trio.fail_after(60):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            clients(daemon) as (writer, _admin),
        ):
            await writer.define(_device_definition(storage, "qemu"))
            info = await writer.start("dev")
            assert (info.state, info.taints) == (DomainState.RUNNING, [])
            nodes = await writer.monitor_command("dev", "query-named-block-nodes")
            found = {n["node-name"]: n for n in nodes}
            # QEMU got the images as descriptors and opened nothing by name.
            assert found["disk0"]["image"]["filename"] == "/dev/fdset/1"
            assert found["disk1"]["image"]["filename"] == "/dev/fdset/2"
            assert found["disk0"]["ro"] is True and found["disk0"]["drv"] == "raw"
            assert found["disk1"]["ro"] is False
            assert info.pid is not None
            fd_dir = Path(f"/proc/{info.pid}/fd")
            held = {os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)}
            assert {str(storage / "ro.img"), str(storage / "rw.img")} <= held
            assert (sock_dir / "run" / "dev" / "serial.log").exists()
            await writer.destroy("dev")


@pytest.mark.slow
@pytest.mark.qemu
async def test_qemu_needs_no_access_to_the_storage_dirs(sock_dir: Path, storage: Path) -> None:
    """Images only root can read (in a directory only root can enter) still
    serve a confined QEMU: it gets descriptors and a private kernel copy."""
    if os.geteuid() != 0:
        pytest.skip("the confinement needs a root daemon")
    storage.chmod(0o700)
    with trio.fail_after(60):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            clients(daemon) as (writer, _admin),
        ):
            await writer.define(_device_definition(storage, "qemu"))
            info = await writer.start("dev")
            assert info.pid is not None
            status = Path(f"/proc/{info.pid}/status").read_text()
            assert "\nUid:\t0\t" not in status
            nodes = await writer.monitor_command("dev", "query-named-block-nodes")
            assert {n["node-name"] for n in nodes} >= {"disk0", "disk1"}
            await writer.destroy("dev")


@pytest.mark.slow
async def test_kernel_and_initrd_are_private_copies(sock_dir: Path, storage: Path) -> None:
    kernel, initrd = storage / "vmlinuz", storage / "initrd"
    kernel.write_bytes(b"kernel" * 1000)
    initrd.write_bytes(b"initrd" * 1000)
    definition = {
        "name": "boot",
        "emulator": "sim",
        "machine": "pc",
        "kernel": str(kernel),
        "initrd": str(initrd),
        "cmdline": "console=ttyS0",
    }
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            clients(daemon) as (writer, _admin),
        ):
            await writer.define(definition)
            info = await writer.start("boot")
            assert info.pid is not None
            argv = Path(f"/proc/{info.pid}/cmdline").read_bytes().decode().split("\0")
            dom_dir = sock_dir / "run" / "boot"
            assert argv[argv.index("-kernel") + 1] == str(dom_dir / "kernel")
            assert argv[argv.index("-initrd") + 1] == str(dom_dir / "initrd")
            assert (dom_dir / "kernel").read_bytes() == kernel.read_bytes()
            assert (dom_dir / "initrd").stat().st_mode & 0o777 == 0o400
            await writer.destroy("boot")
            # A kernel swapped for a hard link to a file outside: refused at start.
            outside = sock_dir / "secret"
            outside.write_bytes(b"secret")
            kernel.unlink()
            os.link(outside, kernel)
            with pytest.raises(InvalidParams, match="hard links"):
                await writer.start("boot")


@pytest.mark.slow
async def test_sim_domain_with_devices_starts(sock_dir: Path, storage: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            clients(daemon) as (writer, _admin),
        ):
            await writer.define(_device_definition(storage, "sim"))
            assert (await writer.start("dev")).state is DomainState.RUNNING
            await writer.destroy("dev")


def test_argv_of_typed_devices() -> None:
    spec = LaunchSpec(
        name="vm",
        qmp_path="/run/a,b/vm.qmp",
        emulator="qemu",
        machine="pc",
        disks=(Disk("/srv/img/a.qcow2", "qcow2", readonly=True),),
        nics=(Nic("virtio-net-pci", "52:54:00:00:00:01"),),
        serial_log="/run/a,b/vm.serial.log",
        kernel="/srv/vmlinuz",
        initrd="/srv/initrd",
        cmdline="console=ttyS0 root=/dev/vda,x",
    )
    argv = build_argv(spec)

    def after(option: str) -> list[str]:
        return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]

    assert after("-qmp") == ["unix:/run/a,,b/vm.qmp,server=on,wait=off"]
    assert [json.loads(arg) for arg in after("-blockdev")] == [
        {
            "driver": "file",
            "node-name": "disk0-file",
            "filename": "/srv/img/a.qcow2",
            "read-only": True,
        },
        {
            "driver": "qcow2",
            "node-name": "disk0",
            "file": "disk0-file",
            "read-only": True,
            "backing": None,
        },
    ]
    assert after("-device") == [
        "virtio-blk-pci,drive=disk0,id=disk0-dev",
        "virtio-net-pci,netdev=net0,id=net0-dev,mac=52:54:00:00:00:01",
    ]
    assert after("-netdev") == ["user,id=net0"]
    assert after("-serial") == ["chardev:serial0"]
    assert after("-chardev") == ["file,id=serial0,path=/run/a,,b/vm.serial.log"]
    assert after("-append") == ["console=ttyS0 root=/dev/vda,x"]  # one argument, no options
    assert (after("-kernel"), after("-initrd")) == (["/srv/vmlinuz"], ["/srv/initrd"])
    none = build_argv(LaunchSpec("vm", "/q", "/p", machine="none", disks=spec.disks))
    assert "-device" not in none and "-blockdev" in none


def test_definition_field_checks() -> None:
    def refused(**fields: Any) -> str:
        with pytest.raises(InvalidParams) as info:
            structure({"name": "x", **fields}, DomainDefinition)
        return info.value.message

    assert "one of raw, qcow2" in refused(disks=[{"path": "/a", "format": "vmdk"}])
    assert "one of virtio-net-pci, e1000" in refused(nics=[{"model": "rtl8139"}])
    assert "unicast MAC" in refused(nics=[{"mac": "01:00:5e:00:00:01"}])
    assert "need 'kernel'" in refused(cmdline="quiet")
    assert "other than 'none'" in refused(kernel="/srv/k")
    assert "at most 4096" in refused(machine="pc", kernel="/srv/k", cmdline="x" * 5000)
    assert "NUL" in refused(machine="pc", kernel="/srv/k", cmdline="a\0b")
    assert "Length of 'disks' must be <= 16" in refused(disks=[{"path": "/a"}] * 17)
    assert "$.disks" in refused(disks="/a")


# -- redefine of a running domain ----------------------------------------------------------------


@pytest.mark.slow
async def test_redefine_of_a_running_domain_is_pending(sock_dir: Path) -> None:
    config = DriverConfig(state_dir=sock_dir, run_dir=sock_dir / "run")
    with trio.fail_after(30):
        async with open_driver(config) as driver:
            first = await driver.define(DomainDefinition(name="vm", memory_mib=128))
            await driver.start("vm")
            info = await driver.define(DomainDefinition(name="vm", memory_mib=256, vcpus=2))
            assert (info.memory_mib, info.vcpus, info.pending_changes) == (128, 1, True)
            assert info.uuid == first.uuid
            with pytest.raises(InvalidParams, match="uuid never changes"):
                await driver.define(
                    DomainDefinition(name="vm", uuid="12345678-1234-5678-1234-567812345678")
                )
            # The embedding API has no roles: a command outside the allow-list
            # taints the run, whatever QEMU answers.
            with pytest.raises(MonitorError):
                await driver.monitor_command("vm", "device_add", {"driver": "e1000"})
            assert driver.get_info("vm").taints == ["custom-monitor"]
        # After a daemon restart the process still runs with what it started with.
        async with open_driver(config) as driver:
            info = driver.get_info("vm")
            assert (info.state, info.memory_mib, info.pending_changes) == (
                DomainState.RUNNING,
                128,
                True,
            )
            assert info.taints == ["custom-monitor"]
            await driver.destroy("vm")
            info = driver.get_info("vm")
            assert (info.memory_mib, info.vcpus, info.pending_changes) == (256, 2, False)
            assert info.taints == []
            assert info.uuid == first.uuid
            info = await driver.start("vm")
            assert (info.memory_mib, info.pending_changes) == (256, False)
            await driver.destroy("vm")


@pytest.mark.slow
@pytest.mark.qemu
async def test_redefine_running_qemu_shows_the_running_memory(sock_dir: Path) -> None:
    with trio.fail_after(60):
        async with running_daemon(sock_dir) as daemon, clients(daemon) as (writer, _admin):
            uuid = (await writer.define({"name": "vm", "emulator": "qemu"})).uuid
            await writer.start("vm")
            info = await writer.define({"name": "vm", "emulator": "qemu", "memory_mib": 256})
            assert (info.memory_mib, info.pending_changes, info.uuid) == (128, True, uuid)
            size = await writer.monitor_command("vm", "query-memory-size-summary")
            assert size["base-memory"] == 128 << 20
            await writer.destroy("vm")
            assert (await writer.get_info("vm")).memory_mib == 256


def test_qemu_default_is_the_hosts_binary() -> None:
    from trioctl._policy import emulator_table

    table = emulator_table({})
    assert table["sim"] == "sim"
    which = shutil.which("qemu-system-x86_64")
    if which is not None:
        assert table["qemu"] == which and os.path.isabs(table["qemu"])


@pytest.mark.slow
async def test_hand_written_definition_without_uuid_or_emulator(sock_dir: Path) -> None:
    config = DriverConfig(state_dir=sock_dir, run_dir=sock_dir / "run")
    (sock_dir / "domains").mkdir()
    (sock_dir / "domains" / "hand.json").write_text('{"name": "hand"}')
    with trio.fail_after(30):
        async with open_driver(config) as driver:
            info = driver.get_info("hand")
            # The daemon's backend is filled in at load (DriverConfig.backend: sim).
            assert info.uuid and info.emulator == config.backend == "sim"
            assert (await driver.start("hand")).state is DomainState.RUNNING
            await driver.destroy("hand")


_OPTIONS = {
    "-name", "-machine", "-m", "-smp", "-nodefaults", "-display", "-qmp", "-sandbox",
    "-blockdev", "-device", "-netdev", "-chardev", "-serial", "-kernel", "-initrd", "-append",
}  # fmt: skip
_WITH_VALUE = _OPTIONS - {"-nodefaults"}
_path_text = st.text(
    st.characters(exclude_characters="/\0", codec="utf-8"), min_size=1, max_size=8
).filter(lambda part: part not in (".", ".."))
_paths = st.lists(_path_text, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))


@given(
    disks=st.lists(st.tuples(_paths, st.sampled_from(["raw", "qcow2"]), st.booleans()), max_size=3),
    nics=st.lists(st.sampled_from(["virtio-net-pci", "e1000"]), max_size=2),
    kernel=st.one_of(st.just(""), _paths),
    cmdline=st.text(st.characters(exclude_characters="\0", codec="utf-8")),
    machine=st.sampled_from(["none", "pc", "q35", "microvm"]),
)
def test_argv_of_any_valid_definition_has_only_our_options(
    disks: list[tuple[str, str, bool]], nics: list[str], kernel: str, cmdline: str, machine: str
) -> None:
    """Whatever a valid definition holds, each value stays one argument of
    an option we chose: no field can add an option or a sub-option."""
    fields: dict[str, Any] = {
        "name": "x",
        "machine": machine,
        "disks": [{"path": p, "format": f, "readonly": r} for p, f, r in disks],
        "nics": [{"model": m} for m in nics],
        "serial_log": True,
    }
    if machine != "none" and kernel:
        fields.update(kernel=kernel, cmdline=cmdline[:4096])
    try:
        d = structure(fields, DomainDefinition)
    except InvalidParams:
        assume(False)
        raise
    argv = build_argv(
        LaunchSpec(
            "x", "/run/x.qmp", emulator="qemu", machine=d.machine,
            disks=d.disks, nics=d.nics, serial_log="/run/x.serial.log",
            kernel=d.kernel, cmdline=d.cmdline,
        )
    )  # fmt: skip
    index = 1
    values: dict[str, list[str]] = {}
    while index < len(argv):
        option = argv[index]
        assert option in _OPTIONS, option
        if option in _WITH_VALUE:
            values.setdefault(option, []).append(argv[index + 1])
            index += 2
        else:
            index += 1
    blockdevs = [json.loads(v) for v in values.get("-blockdev", [])]
    assert [b["filename"] for b in blockdevs if b["driver"] == "file"] == [p for p, _, _ in disks]
    assert all(b.get("backing", 0) is None for b in blockdevs if b["driver"] == "qcow2")
    for value in values.get("-device", []) + values.get("-netdev", []):
        assert value.count("=") == value.count(",")  # DRIVER then key=value pairs only
    assert values.get("-append", []) == ([d.cmdline] if d.cmdline else [])


async def test_stored_definition_naming_a_binary_is_set_aside(sock_dir: Path) -> None:
    config = DriverConfig(state_dir=sock_dir, run_dir=sock_dir / "run")
    (sock_dir / "domains").mkdir()
    (sock_dir / "domains" / "old.json").write_text('{"name": "old", "emulator": "/bin/cat"}')
    with trio.fail_after(30):
        async with open_driver(config) as driver:
            assert driver.list_domains() == []
            [problem] = driver.load_problems
            assert "'emulator' must be the name of a configured emulator" in problem.reason
