"""What a definition may contain and which monitor commands a role may send.

The rules of ``docs/security.md``, in one place:

- **Emulators by name**: a definition names an emulator from the daemon's
  table (``driver.emulators``, plus the built-in ``qemu`` and ``sim``); the
  binary is the host's, chosen by whoever configures the daemon.
- **Machine types** are plain names from an allow-list (``driver.machines``).
- **Files** (disk images, kernel, initrd) must lie, as named and after
  resolving symlinks, inside one of the storage directories
  (``driver.storage_dirs``), outside the daemon's own directories, and be
  regular files with one link; checked at define and again at start. At
  start the daemon opens each file itself (:func:`open_storage_file`) and
  checks what it opened: QEMU gets disks as file descriptors and private
  copies of the kernel and initrd, so it never opens a storage path by name
  and needs no access to it.
- **Monitor commands**: below the admin role only :data:`WRITE_MONITOR_COMMANDS`
  and ``query-*``; an admin's command outside that list taints the run.
- **Taints**: ``custom-argv`` (started with ``extra_args``) and
  ``custom-monitor``; kept until the process exits.

Plain functions without I/O except :func:`resolve_file` (``realpath``,
``lstat``), :func:`open_storage_file`, :func:`copy_boot_file` and
:func:`check_qcow2`, which the driver runs in a thread.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
from collections.abc import Iterable, Mapping
from typing import Final

from ._errors import InvalidParams
from ._models import WRITE_MONITOR_COMMANDS, DomainDefinition

__all__ = [
    "BUILTIN_EMULATORS",
    "TAINT_CUSTOM_ARGV",
    "TAINT_CUSTOM_MONITOR",
    "WRITE_MONITOR_COMMANDS",
    "check_definition",
    "check_qcow2",
    "copy_boot_file",
    "emulator_table",
    "machine_allowed",
    "monitor_command_allowed",
    "open_storage_file",
    "resolve_file",
]

#: The QEMU binary the name ``qemu`` stands for, looked up on PATH.
DEFAULT_QEMU: Final = "qemu-system-x86_64"

#: Names every daemon knows; ``sim`` is the built-in simulator.
BUILTIN_EMULATORS: Final = ("qemu", "sim")

TAINT_CUSTOM_ARGV: Final = "custom-argv"
TAINT_CUSTOM_MONITOR: Final = "custom-monitor"


def monitor_command_allowed(command: str) -> bool:
    """True if the write role may send ``command`` (no taint)."""
    return command in WRITE_MONITOR_COMMANDS or (
        command.startswith("query-") and len(command) > len("query-")
    )


def emulator_table(configured: Mapping[str, str]) -> dict[str, str]:
    """Emulator names to what :func:`trioctl._launcher.emulator_argv` takes.

    ``sim`` is the built-in simulator; ``qemu`` is the host's
    ``qemu-system-x86_64`` found on PATH now (or its configured absolute
    path); the configured table adds names or replaces ``qemu``.
    """
    table = {"sim": "sim", "qemu": shutil.which(DEFAULT_QEMU) or DEFAULT_QEMU}
    table.update(configured)
    return dict(sorted(table.items()))


def machine_allowed(machine: str, allowed: Iterable[str]) -> bool:
    """True if ``machine`` matches an entry of the allow-list (``*`` globs)."""
    return any(fnmatch.fnmatchcase(machine, pattern) for pattern in allowed)


def check_definition(
    definition: DomainDefinition,
    emulators: Mapping[str, str],
    machines: Iterable[str],
    storage_dirs: Iterable[os.PathLike[str] | str],
    private_dirs: Iterable[os.PathLike[str] | str] = (),
) -> None:
    """Refuse a definition naming an unknown emulator, a machine type outside
    the allow-list, or a file outside the storage directories.

    Files need not exist yet (they are checked again at start); one that
    exists must be a regular file with one link (see :func:`resolve_file`).

    Raises:
        InvalidParams: naming the field, what is allowed and why.
    """
    errors: list[str] = []
    if definition.emulator and definition.emulator not in emulators:
        errors.append(
            f"'emulator' {definition.emulator!r} is not a configured emulator; "
            f"known: {', '.join(sorted(emulators))}"
        )
    machines = tuple(machines)
    if not machine_allowed(definition.machine, machines):
        errors.append(
            f"'machine' {definition.machine!r} is not in the allow-list "
            f"(driver.machines: {', '.join(machines) or 'empty'})"
        )
    dirs, private = tuple(storage_dirs), tuple(private_dirs)
    for field, path in definition.files():
        try:
            resolve_file(field, path, dirs, must_exist=False, private_dirs=private)
        except InvalidParams as exc:
            errors.append(exc.message)
    if errors:
        raise InvalidParams(
            f"invalid DomainDefinition: {'; '.join(errors)}",
            errors=[f"$: {e}" for e in errors],
        )


def _within(path: str, directory: str) -> bool:
    """True if ``path`` lies strictly inside ``directory`` (both normalized)."""
    return path.startswith(directory.rstrip("/") + "/")


def resolve_file(
    field: str,
    path: str,
    storage_dirs: Iterable[os.PathLike[str] | str],
    *,
    must_exist: bool = True,
    private_dirs: Iterable[os.PathLike[str] | str] = (),
) -> str:
    """``path`` with symlinks resolved, if that lies inside a storage directory.

    In this order, so that nothing outside the storage directories is ever
    resolved or looked at (the daemon runs as root; ``/proc/PID/fd/N`` or
    ``/proc/PID/cwd`` would tell where they lead):

    1. ``path``, normalized but not resolved, must lie inside a storage
       directory as configured or as resolved;
    2. resolved (``realpath``), it must still lie inside a resolved storage
       directory, and not inside one of ``private_dirs`` (the state and run
       directories, the tokens file's): errors never show where it leads;
    3. if it exists (``must_exist``: it must), it must be a regular file with
       a single link: a hard link to ``/etc/shadow`` made inside a storage
       directory is that file.

    Args:
        must_exist: also require the file to exist (at start).
        private_dirs: directories no file may lie in, even inside a storage
            directory.

    Raises:
        InvalidParams: naming the field and the path as given, never the
            path it resolves to.
    """
    configured = [os.path.normpath(os.fspath(d)) for d in storage_dirs]
    if not configured:
        raise InvalidParams(
            f"'{field}' names {path!r}, but no storage directories are configured "
            "(driver.storage_dirs): definitions cannot name files"
        )
    shown = ", ".join(configured)
    outside = f"'{field}' {path!r} is outside the storage directories ({shown})"
    try:
        dirs = [os.path.realpath(d) for d in configured]
        if not any(_within(os.path.normpath(path), d) for d in configured + dirs):
            raise InvalidParams(outside)
        real = os.path.realpath(path)
    except (OSError, ValueError):
        raise InvalidParams(f"'{field}' {path!r} cannot be resolved") from None
    if not any(_within(real, d) for d in dirs):
        raise InvalidParams(f"{outside}: it is a symbolic link leading out of them")
    if "," in real:
        raise InvalidParams(f"'{field}' {path!r} leads through a name containing ','")
    for private in private_dirs:
        try:
            private_real = os.path.realpath(private)
        except (OSError, ValueError):
            continue
        if real == private_real or _within(real, private_real):
            raise InvalidParams(
                f"'{field}' {path!r} lies in the daemon's own files (state, run or tokens "
                "directory), which no definition may name"
            )
    try:
        info = os.lstat(real)
    except FileNotFoundError:
        if must_exist:
            raise InvalidParams(f"'{field}' {path!r}: No such file or directory") from None
        return real
    except OSError as exc:
        raise InvalidParams(f"'{field}' {path!r} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidParams(f"'{field}' {path!r} is not a regular file")
    if info.st_nlink > 1:
        raise InvalidParams(
            f"'{field}' {path!r} has {info.st_nlink} hard links; an image must have one "
            "(a hard link made inside a storage directory could be any file of the host)"
        )
    return real


def check_qcow2(field: str, path: str, fd: int) -> None:
    """Refuse a qcow2 image that needs an external data file.

    Its header names that file (any path on the host), and QEMU opens it
    unless told otherwise. (A backing file is never opened: ``backing`` is
    null.) A file that is not qcow2 at all is left for QEMU to refuse. The
    header is read from ``fd``, the file QEMU will be given.

    Raises:
        InvalidParams: the image has the external data file feature.
    """
    try:
        header = os.pread(fd, 80, 0)
    except OSError as exc:
        raise InvalidParams(f"'{field}' {path!r}: {exc.strerror}") from None
    if len(header) < 80 or header[:4] != b"QFI\xfb":
        return
    version = int.from_bytes(header[4:8], "big")
    incompatible = int.from_bytes(header[72:80], "big")
    if version >= 3 and incompatible & _QCOW2_EXTERNAL_DATA_FILE:
        raise InvalidParams(
            f"'{field}' {path!r} is a qcow2 image with an external data file, which could "
            "name any file on the host; such images are not supported"
        )


def open_storage_file(
    field: str,
    path: str,
    storage_dirs: Iterable[os.PathLike[str] | str],
    *,
    writable: bool,
    private_dirs: Iterable[os.PathLike[str] | str] = (),
) -> int:
    """Open ``path`` (already resolved by :func:`resolve_file`) for QEMU.

    What was opened is checked, not what the path named a moment before: a
    regular file with one link, whose path (as the kernel reports it for the
    open file) lies inside a storage directory. So a symlink or a hard link
    swapped in after the check is refused, and QEMU, given the descriptor,
    never opens anything by name.

    Returns:
        A descriptor (close-on-exec; read-write if ``writable``), which the
        caller closes.

    Raises:
        InvalidParams: the file cannot be opened, is not a regular file, has
            other hard links, or lies outside the storage directories.
    """
    flags = os.O_RDWR if writable else os.O_RDONLY
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidParams(f"'{field}' {path!r}: cannot open it ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidParams(f"'{field}' {path!r} is not a regular file")
        if st.st_nlink != 1:
            raise InvalidParams(
                f"'{field}' {path!r} has {st.st_nlink} hard links; a file with other names "
                "could be a file outside the storage directories"
            )
        opened = os.readlink(f"/proc/self/fd/{fd}")
        dirs = [os.path.realpath(d).rstrip("/") + "/" for d in storage_dirs]
        private = [os.path.realpath(d).rstrip("/") + "/" for d in private_dirs]
        if not any(opened.startswith(d) for d in dirs) or any(
            opened.startswith(d) for d in private
        ):
            raise InvalidParams(f"'{field}' {path!r} changed while it was opened; refused")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Largest kernel or initrd the daemon copies for QEMU.
MAX_BOOT_FILE: Final = 512 << 20


def copy_boot_file(field: str, fd: int, target: str, owner: tuple[int, int] | None) -> None:
    """Copy an opened kernel or initrd to ``target`` (a new file in the
    domain's own run directory), readable by ``owner`` (uid, gid) only.

    QEMU loads ``-kernel`` and ``-initrd`` by name, without file descriptor
    sets: a private copy means it opens nothing of the storage directories.

    Raises:
        InvalidParams: larger than :data:`MAX_BOOT_FILE`.
    """
    size = os.fstat(fd).st_size
    if size > MAX_BOOT_FILE:
        raise InvalidParams(f"'{field}' is {size} bytes; the limit is {MAX_BOOT_FILE}")
    out = os.open(
        target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400
    )
    try:
        if owner is not None:
            os.fchown(out, *owner)
        offset = 0
        while offset < size:
            sent = os.sendfile(out, fd, offset, size - offset)
            if sent == 0:
                break
            offset += sent
    finally:
        os.close(out)


_QCOW2_EXTERNAL_DATA_FILE: Final = 1 << 2
