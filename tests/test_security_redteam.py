"""Regression tests for the red team's findings against the write and read
roles (docs/security.md): probing paths as root, code in the daemon's working
directory, storage directories overlapping the daemon's own, a run directory
shared with the state directory, hard links, and loose validators.

Attacks found on real QEMU are replayed on real QEMU (``qemu`` mark). Each
test doing I/O is bounded by ``fail_after``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, strategies as st

from trioctl import DomainExists, InvalidParams
from trioctl._client import Client, connect
from trioctl._config import ConfigError, load_config
from trioctl._daemon import DaemonHandle
from trioctl._driver import DriverConfig, open_driver
from trioctl._launcher import emulator_argv
from trioctl._models import Disk, DomainDefinition, DomainState, structure
from trioctl._policy import resolve_file
from trioctl._procedures import Role
from trioctl._server import Tokens

from .helpers import exchange, make_image, raw_ws, running_daemon

READ, WRITE = "r" * 24, "w" * 24


@asynccontextmanager
async def writer_of(daemon: DaemonHandle) -> AsyncIterator[Client]:
    """A write client of ``daemon``."""
    assert daemon.token is not None
    daemon.server.tokens = Tokens({READ: Role.READ, WRITE: Role.WRITE, daemon.token: Role.ADMIN})
    async with connect(daemon.url, WRITE) as writer:
        yield writer


# -- 1: no path is resolved or shown unless it lies in a storage directory -------------------


async def test_proc_paths_are_refused_without_being_resolved(sock_dir: Path, storage: Path) -> None:
    me = os.getpid()  # the daemon runs in this process, as root
    probes = [f"/proc/{me}/fd/1", f"/proc/{me}/fd/0", f"/proc/{me}/cwd", "/proc/1/exe"]
    probes += [f"/proc/{me}/fd/{fd}" for fd in range(3, 12)]
    targets = set()
    for probe in probes:
        try:
            targets.add(os.readlink(probe))
        except OSError:
            pass
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            writer_of(daemon) as writer,
        ):
            for probe in probes:
                for field in ("disks", "kernel"):
                    definition: dict[str, Any] = {"name": "p", "machine": "pc"}
                    if field == "disks":
                        definition["disks"] = [{"path": probe}]
                    else:
                        definition["kernel"] = probe
                    # InvalidParams, never INTERNAL_ERROR (a permission error).
                    with pytest.raises(InvalidParams) as refused:
                        await writer.define(definition)
                    message = refused.value.message
                    assert "is outside the storage directories" in message
                    assert "resolves" not in message and "socket:[" not in message
                    for target in targets - {probe}:
                        assert repr(target) not in message, (probe, message)
            assert daemon.driver.list_domains() == []


async def test_symlink_out_of_a_storage_dir_does_not_show_its_target(
    sock_dir: Path, storage: Path
) -> None:
    (storage / "fd").symlink_to(f"/proc/{os.getpid()}/fd/1")
    (storage / "cwd").symlink_to(f"/proc/{os.getpid()}/cwd")
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            writer_of(daemon) as writer,
        ):
            for name in ("fd", "cwd"):
                with pytest.raises(InvalidParams, match="leading out of them") as refused:
                    await writer.define({"name": "p", "disks": [{"path": str(storage / name)}]})
                target = os.readlink(f"/proc/{os.getpid()}/{name}" + ("/1" if name == "fd" else ""))
                assert repr(target) not in refused.value.message


def test_resolve_file_never_resolves_outside_and_maps_os_errors(
    storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved: list[str] = []
    real_realpath = os.path.realpath

    def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        resolved.append(os.fspath(path))
        return real_realpath(path, *args, **kwargs)

    monkeypatch.setattr(os.path, "realpath", spy)
    for outside in ("/proc/1/exe", "/proc/self/fd/1", "/etc/shadow", str(storage) + "x/a"):
        with pytest.raises(InvalidParams, match="outside the storage directories"):
            resolve_file("kernel", outside, [storage])
    assert set(resolved) <= {str(storage)}  # only the configured directory itself

    def denied(path: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(path).startswith(str(storage) + "/"):
            raise PermissionError(13, "Permission denied", "/somewhere/secret")
        return real_realpath(path, *args, **kwargs)

    monkeypatch.setattr(os.path, "realpath", denied)
    with pytest.raises(InvalidParams, match=r"cannot be resolved\Z") as refused:
        resolve_file("kernel", str(storage / "k"), [storage])
    assert "secret" not in refused.value.message


def test_resolve_file_property() -> None:
    """Whatever the path, ``resolve_file`` either returns a regular file with
    one link inside a storage directory (as written and as resolved, and
    outside the daemon's own directories), or refuses with InvalidParams
    without saying where the path leads."""
    with tempfile.TemporaryDirectory(prefix="tc-prop-") as top:
        root = Path(top)
        storage, outside, state = root / "images", root / "outside", root / "images" / "state"
        for directory in (storage / "sub", outside, state):
            directory.mkdir(parents=True)
        make_image(storage, "img")
        make_image(storage / "sub", "img2")
        make_image(state, "tokens.json")
        os.link(make_image(outside, "secret"), storage / "hard")
        for name, target in [("out", outside), ("proc", Path("/proc/self")), ("etc", Path("/etc")),
                             ("in", storage / "sub"), ("loop", storage / "loop"),
                             ("up", root)]:  # fmt: skip
            (storage / name).symlink_to(target)
        names = ["img", "img2", "hard", "out", "proc", "etc", "in", "sub", "loop", "up",
                 "secret", "state", "tokens.json", "fd", "1", "cwd", "exe", "passwd"]  # fmt: skip
        prefixes = [str(storage), str(outside), str(root), "/proc/self", "/proc/1", "/etc", ""]

        @given(
            st.sampled_from(prefixes),
            st.lists(st.sampled_from(names), max_size=4),
            st.booleans(),
        )
        def check(prefix: str, parts: list[str], must_exist: bool) -> None:
            path = "/".join([prefix, *parts]) or "/"
            refused = ""
            try:
                real = resolve_file(
                    "kernel", path, [storage], must_exist=must_exist, private_dirs=[state]
                )
            except InvalidParams as exc:
                refused = exc.message
            if refused:
                try:
                    leads_to = os.path.realpath(path)
                except OSError:
                    return
                if leads_to != os.path.normpath(path):
                    assert repr(leads_to) not in refused, (path, refused)
                return
            assert os.path.normpath(path).startswith(f"{storage}/")
            assert real.startswith(f"{storage}/") and not real.startswith(f"{state}/")
            if must_exist or os.path.lexists(real):
                info = os.lstat(real)
                assert stat.S_ISREG(info.st_mode) and info.st_nlink == 1, path

        check()


# -- 2: the simulator ignores code in the daemon's working directory -------------------------


def test_sim_runs_in_isolated_mode() -> None:
    argv = emulator_argv("sim")
    assert argv[1:] == ["-I", "-m", "trioctl.sim"]


@pytest.mark.slow
async def test_planted_package_in_the_working_directory_never_runs(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = Path(tempfile.mkdtemp(prefix="tc-cwd-"))
    marker = planted / "pwned"
    try:
        (planted / "trioctl").mkdir()
        (planted / "trioctl" / "__init__.py").write_text(
            f"open({str(marker)!r}, 'w').write('ran as uid %d' % __import__('os').getuid())\n"
        )
        monkeypatch.chdir(planted)
        monkeypatch.setenv("PYTHONPATH", str(planted))  # ignored too, in isolated mode
        with trio.fail_after(30):
            async with running_daemon(sock_dir) as daemon, writer_of(daemon) as writer:
                await writer.define({"name": "vm", "emulator": "sim"})
                info = await writer.start("vm")
                assert info.state is DomainState.RUNNING
                await writer.destroy("vm")
        assert not marker.exists()
    finally:
        shutil.rmtree(planted, ignore_errors=True)


# -- 3, 4: storage, state, run and tokens directories stay apart -----------------------------


@pytest.mark.parametrize(
    ("settings", "key", "why"),
    [
        ({"driver.storage_dirs": ["{x}"]}, "driver.storage_dirs", "contains the state directory"),
        ({"driver.storage_dirs": ["{x}/state"]}, "driver.storage_dirs", "is the state directory"),
        (
            {"driver.storage_dirs": ["{x}/state/images"]},
            "driver.storage_dirs",
            "is inside the state directory",
        ),
        (
            {"driver.storage_dirs": ["{x}/img"], "driver.run_dir": "{x}/img/run"},
            "driver.storage_dirs",
            "contains the run directory",
        ),
        (
            {"driver.storage_dirs": ["{x}/img"], "auth.tokens_file": "{x}/img/tokens.json"},
            "driver.storage_dirs",
            "is the tokens file's directory",
        ),
        (
            {"driver.storage_dirs": ["{x}/link"]},
            "driver.storage_dirs",
            "is the state directory",
        ),
        ({"driver.run_dir": "{x}/state"}, "driver.run_dir", "cannot be the state directory"),
        ({"driver.run_dir": "{x}/link"}, "driver.run_dir", "cannot be the state directory"),
        ({"driver.run_dir": "{x}/state/domains"}, "driver.run_dir", "domains directory"),
        (
            {"driver.run_dir": "{x}/run", "auth.tokens_file": "{x}/run/tokens.json"},
            "auth.tokens_file",
            "read as a runtime record",
        ),
        (
            {"auth.tokens_file": "{x}/state/domains/tokens.json"},
            "auth.tokens_file",
            "or a definition",
        ),
    ],
)
def test_config_keeps_the_daemons_directories_apart(
    tmp_path: Path, settings: dict[str, Any], key: str, why: str
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "state")  # compared after resolving
    overrides: dict[str, Any] = {"driver.state_dir": str(tmp_path / "state")}
    for name, value in settings.items():
        overrides[name] = (
            [v.format(x=tmp_path) for v in value]
            if isinstance(value, list)
            else value.format(x=tmp_path)
        )
    with pytest.raises(ConfigError) as refused:
        load_config(None, overrides=overrides)
    assert (refused.value.file, refused.value.key) == ("command line", key)
    assert why in refused.value.reason


def test_config_file_names_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[driver]\nstate_dir = "{tmp_path}/s"\nstorage_dirs = ["{tmp_path}"]\n')
    with pytest.raises(ConfigError, match=r"config\.toml: driver\.storage_dirs: .*contains"):
        load_config(config)


def test_default_directories_are_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    config = load_config(None, overrides={"driver.storage_dirs": [str(tmp_path / "images")]})
    driver = config.driver_config()
    assert driver.runtime_dir not in (driver.state_dir, driver.state_dir / "domains")
    assert config.auth.tokens_file.parent != driver.runtime_dir
    assert load_config(None, overrides={"driver.state_dir": str(tmp_path)}).driver.run_dir == (
        tmp_path / "run"
    )


@pytest.mark.qemu
async def test_tokens_file_through_an_overlapping_storage_dir_is_refused(tmp_path: Path) -> None:
    # An embedding program builds DriverConfig itself, without load_config's
    # checks: the driver still refuses the daemon's own files, at define and
    # at start, before QEMU opens anything.
    state = tmp_path / "state"
    state.mkdir()
    tokens = state / "tokens.json"
    tokens.write_text('{"tokens": []}\n')
    config = DriverConfig(
        state_dir=state, run_dir=Path(tempfile.mkdtemp(prefix="tc-")), storage_dirs=(tmp_path,)
    )
    try:
        with trio.fail_after(60):
            async with open_driver(config) as driver:
                with pytest.raises(InvalidParams, match="daemon's own files"):
                    await driver.define(
                        DomainDefinition(name="t", emulator="qemu", disks=(Disk(str(tokens)),))
                    )
                link = tmp_path / "image.img"
                await driver.define(
                    structure(
                        {"name": "t", "emulator": "qemu", "disks": [{"path": str(link)}]},
                        DomainDefinition,
                    )
                )
                link.symlink_to(tokens)
                with pytest.raises(InvalidParams, match="daemon's own files"):
                    await driver.start("t")
                info = driver.get_info("t")
                assert (info.state, info.pid) == (DomainState.SHUTOFF, None)
        assert tokens.read_text() == '{"tokens": []}\n'
    finally:
        shutil.rmtree(config.runtime_dir, ignore_errors=True)


# -- 5: hard links -------------------------------------------------------------------------------


@pytest.mark.qemu
async def test_hard_links_are_refused_at_define_and_start(sock_dir: Path, storage: Path) -> None:
    secret = sock_dir / "secret"  # outside the storage directory, same file system
    secret.write_text("root's secret\n")
    os.link(secret, storage / "linked.img")
    later = storage / "later.img"
    with trio.fail_after(60):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            writer_of(daemon) as writer,
        ):
            for definition in (
                {"name": "h", "emulator": "qemu", "disks": [{"path": str(storage / "linked.img")}]},
                {"name": "h", "emulator": "qemu", "machine": "pc",
                 "kernel": str(storage / "linked.img")},
            ):  # fmt: skip
                with pytest.raises(InvalidParams, match=r"has [23] hard links"):
                    await writer.define(definition)
            await writer.define({"name": "h", "emulator": "qemu", "disks": [{"path": str(later)}]})
            await writer.define(
                {"name": "k", "emulator": "qemu", "machine": "pc", "kernel": str(later)}
            )
            os.link(secret, later)
            for name in ("h", "k"):
                with pytest.raises(InvalidParams, match=r"has [23] hard links"):
                    await writer.start(name)
                info = await writer.get_info(name)
                assert (info.state, info.pid) == (DomainState.SHUTOFF, None)
            # A directory is not a file either, at define already.
            (storage / "dir.img").mkdir()
            with pytest.raises(InvalidParams, match="not a regular file"):
                await writer.define({"name": "d", "disks": [{"path": str(storage / "dir.img")}]})


# -- 6: validators -------------------------------------------------------------------------------


def test_trailing_newlines_are_refused() -> None:
    for fields in (
        {"name": "a\n"},
        {"name": "a", "machine": "pc-q35-7.2\n"},
        {"name": "a", "emulator": "qemu\n"},
        {"name": "a", "nics": [{"mac": "52:54:00:12:34:56\n"}]},
    ):
        with pytest.raises(InvalidParams):
            structure(fields, DomainDefinition)


async def test_uuid_is_unique_whatever_its_spelling(sock_dir: Path) -> None:
    canonical = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon, writer_of(daemon) as writer:
            assert (await writer.define({"name": "a", "uuid": canonical.upper()})).uuid == canonical
            for spelling in (canonical, canonical.upper(), canonical.replace("-", ""),
                             "{" + canonical + "}", "urn:uuid:" + canonical):  # fmt: skip
                with pytest.raises(DomainExists, match="already has uuid"):
                    await writer.define({"name": "b", "uuid": spelling})
                # The same domain may say its own uuid any way.
                assert (await writer.define({"name": "a", "uuid": spelling})).uuid == canonical
            assert [d.name for d in daemon.driver.list_domains()] == ["a"]
            stored = json.loads((sock_dir / "domains" / "a.json").read_text())
            assert stored["uuid"] == canonical


async def test_lone_surrogates_are_invalid_params(sock_dir: Path, storage: Path) -> None:
    kernel = make_image(storage, "vmlinuz")
    cases: list[dict[str, Any]] = [
        {"name": "s", "disks": [{"path": str(storage) + "/\ud800"}]},
        {"name": "s", "machine": "pc", "kernel": str(kernel), "cmdline": "console=\ud800"},
        {"name": "s\udc80"},
    ]
    with trio.fail_after(30):
        async with (
            running_daemon(sock_dir, driver__storage_dirs=[str(storage)]) as daemon,
            writer_of(daemon) as writer,
            raw_ws(daemon.url, WRITE) as ws,
        ):
            for definition in cases:
                with pytest.raises(InvalidParams, match="lone surrogate"):
                    await writer.define(definition)
                frame = json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "domain.define",
                     "params": {"definition": definition}}
                )  # fmt: skip
                assert "\\ud800" in frame or "\\udc80" in frame
                reply = await exchange(ws, frame)
                assert reply["error"]["code"] == -32602, reply
            assert daemon.driver.list_domains() == []
    with pytest.raises(ValueError, match="lone surrogate"):
        DomainDefinition(name="s", machine="pc", kernel="/k", cmdline="\ud800")
