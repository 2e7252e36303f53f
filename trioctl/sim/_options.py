"""The simulator's command line: the part of QEMU's that trioctl uses, plus
``-sim-*`` options, and the ``many`` subcommand.

Spelling follows QEMU: one dash (two are accepted too), option values in
QEMU's ``key=value,...`` syntax where QEMU has it (``,,`` is a literal comma),
the last of a repeated option wins. Errors read like QEMU's
(``-foo: invalid option``); the caller prefixes the program name.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from typing import Final, Literal, NoReturn

import attrs

__all__ = [
    "PROG",
    "ManyOptions",
    "SimOptions",
    "SmpTopology",
    "UsageError",
    "VMConfig",
    "parse_many_args",
    "parse_qemu_args",
]

#: The name the simulator's messages start with.
PROG: Final = "trioctl-sim"

PowerdownAction = Literal["shutdown", "ignore"]

_MIB: Final = 1024 * 1024
_MAX_CPUS: Final = 1024
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bBkKmMgGtTpPeE]?)")
_SIZE_SHIFT: Final = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_SIZE_HELP: Final = (
    "Parameter 'size' expects a non-negative number below 2^64\n"
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively."
)
_TRUE: Final = frozenset({"on", "yes", "true", "y"})
_FALSE: Final = frozenset({"off", "no", "false", "n"})

# Options that take a value, and flags.
_WITH_VALUE: Final = frozenset(
    {
        "name",
        "qmp",
        "pidfile",
        "m",
        "smp",
        "machine",
        "M",
        "display",
        "sim-control",
        "sim-powerdown",
        "sandbox",
    }
)
# Device options, repeatable: checked for QEMU's syntax and accepted; the
# simulated guest has no devices (QMP shows none).
_DEVICES: Final = frozenset(
    {
        "drive",
        "blockdev",
        "netdev",
        "device",
        "chardev",
        "serial",
        "kernel",
        "initrd",
        "append",
        "add-fd",
    }
)
_FLAGS: Final = frozenset({"daemonize", "S", "nodefaults", "version", "help", "h"})

USAGE: Final = f"""\
usage: {PROG} [options]
       {PROG} many --dir DIR --count N [--prefix vm] [--pidfile PATH] [--daemonize]
                   [--paused] [--powerdown shutdown|ignore] [--vm-dirs]

A simulated qemu-system-x86_64 speaking QMP (QEMU 7.2), with fault injection.

QEMU options:
  -name NAME | guest=NAME[,process=P][,debug-threads=on|off]
  -qmp unix:PATH,server=on,wait=off   (also: unix:PATH,server,nowait)
  -pidfile PATH      -daemonize        -S (start paused: "prelaunch")
  -m SIZE            -smp N[,sockets=S][,cores=C][,threads=T]
  -machine TYPE[,..] -nodefaults       -display none
  -sandbox on|off[,obsolete=..,elevateprivileges=..,spawn=..,resourcecontrol=..]
                     accepted and checked; the simulator installs no filter
  -version           -help
  -blockdev driver=D,node-name=N[,filename=PATH|file=N][,..] (or JSON)  -drive ..
  -add-fd fd=N,set=M (then filename=/dev/fdset/M)
  -netdev user,id=ID -device DRIVER[,..]  -chardev file,id=ID,path=PATH
  -serial chardev:ID -kernel PATH  -initrd PATH  -append CMDLINE
  (accepted and checked; the simulated guest has no devices)
Simulator options:
  -sim-control unix:PATH          control socket for fault injection
  -sim-powerdown shutdown|ignore  what the guest does on system_powerdown
"""


class UsageError(Exception):
    """The command line is wrong; ``str(exc)`` is QEMU-style text without the
    program name. You don't get this for problems found after start (a socket
    that cannot be bound): those are startup errors."""


@attrs.frozen
class SmpTopology:
    """``-smp``: how many vCPUs and how they are laid out."""

    cpus: int = 1
    sockets: int = 1
    cores: int = 1
    threads: int = 1

    def props(self, index: int) -> dict[str, int]:
        """``query-cpus-fast``'s ``props`` for vCPU ``index`` (x86 layout)."""
        return {
            "core-id": (index // self.threads) % self.cores,
            "thread-id": index % self.threads,
            "socket-id": index // (self.threads * self.cores),
        }


@attrs.frozen
class VMConfig:
    """One simulated VM: what its QMP side shows."""

    qmp_path: str
    """Where its QMP socket listens."""
    name: str | None = None
    """``-name``; ``query-name`` returns ``{}`` without one."""
    paused: bool = False
    """``-S``: start in ``prelaunch`` instead of ``running``."""
    memory_bytes: int = 128 * _MIB
    smp: SmpTopology = SmpTopology()
    machine: str = "pc"
    powerdown: PowerdownAction = "shutdown"
    """After ``system_powerdown``: ``shutdown`` (the guest powers off ~0.1 s
    later) or ``ignore`` (as QEMU with ``-machine none``, or a guest without
    ACPI)."""


@attrs.frozen
class SimOptions:
    """A parsed single-VM command line."""

    vm: VMConfig
    pidfile: str | None = None
    daemonize: bool = False
    control_path: str | None = None
    show: Literal["run", "version", "help"] = "run"
    """``version`` or ``help``: print that and exit instead of running."""


@attrs.frozen
class ManyOptions:
    """``many``: N VMs in one process."""

    dir: str
    count: int
    prefix: str = "vm"
    pidfile: str | None = None
    daemonize: bool = False
    paused: bool = False
    powerdown: PowerdownAction = "shutdown"
    vm_dirs: bool = False
    """trioctl's run-directory layout: each VM's socket at DIR/NAME/qmp.sock,
    the control socket at DIR/.PREFIX-control.sock."""

    def vm_names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.count)]

    def qmp_path(self, name: str) -> str:
        if self.vm_dirs:
            return os.path.join(self.dir, name, "qmp.sock")
        return os.path.join(self.dir, f"{name}.qmp")

    def vm_config(self, name: str) -> VMConfig:
        return VMConfig(
            qmp_path=self.qmp_path(name),
            name=name,
            paused=self.paused,
            powerdown=self.powerdown,
        )

    @property
    def control_path(self) -> str:
        if self.vm_dirs:
            return os.path.join(self.dir, f".{self.prefix}-control.sock")
        return os.path.join(self.dir, "control.sock")


def parse_qemu_args(argv: Sequence[str]) -> SimOptions:
    """Parse a QEMU-style command line.

    Raises:
        UsageError: unknown option, missing or bad value, no ``-qmp``.
    """
    values: dict[str, str] = {}
    devices: list[tuple[str, str]] = []
    flags: set[str] = set()
    qmp_count = 0
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            raise UsageError(f"{arg}: disk images are not supported by the simulator")
        option = arg[2:] if arg.startswith("--") else arg[1:]
        if option in _FLAGS:
            flags.add(option)
        elif option in _DEVICES:
            if i >= len(args):
                raise UsageError(f"-{option}: requires an argument")
            devices.append((option, args[i]))
            i += 1
        elif option in _WITH_VALUE:
            if i >= len(args):
                raise UsageError(f"-{option}: requires an argument")
            values["machine" if option == "M" else option] = args[i]
            qmp_count += option == "qmp"
            i += 1
        else:
            raise UsageError(f"{arg}: invalid option")
    if flags & {"help", "h"}:
        return SimOptions(vm=VMConfig(qmp_path=""), show="help")
    if "version" in flags:
        return SimOptions(vm=VMConfig(qmp_path=""), show="version")
    if qmp_count == 0:
        raise UsageError("-qmp unix:PATH,server=on,wait=off is required")
    if qmp_count > 1:
        raise UsageError("-qmp: the simulator serves one QMP monitor")
    for option, value in devices:
        _check_device(option, value)
    if "sandbox" in values:
        _parse_sandbox(values["sandbox"])
    if "display" in values and values["display"] != "none":
        raise UsageError(f"-display {values['display']}: only 'none' is supported by the simulator")
    vm = VMConfig(
        qmp_path=_parse_unix_server("qmp", values["qmp"], server_required=True),
        name=_parse_name(values["name"]) if "name" in values else None,
        paused="S" in flags,
        memory_bytes=_parse_memory(values["m"]) if "m" in values else 128 * _MIB,
        smp=_parse_smp(values["smp"]) if "smp" in values else SmpTopology(),
        machine=_parse_machine(values["machine"]) if "machine" in values else "pc",
        powerdown=_parse_powerdown(values.get("sim-powerdown", "shutdown")),
    )
    control = values.get("sim-control")
    return SimOptions(
        vm=vm,
        pidfile=values.get("pidfile"),
        daemonize="daemonize" in flags,
        control_path=None if control is None else _parse_unix_server("sim-control", control),
    )


def split_opts(text: str) -> list[str]:
    """Split QEMU's ``a,b=c`` syntax at single commas (``,,`` is a comma)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == ",":
            if text.startswith(",,", i):
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _keyed(option: str, value: str, implied: str, allowed: Sequence[str]) -> dict[str, str]:
    """QemuOpts: ``v,k=v,...`` where a first part without ``=`` is ``implied``."""
    result: dict[str, str] = {}
    for index, part in enumerate(split_opts(value)):
        if "=" in part:
            key, _, item = part.partition("=")
        elif index == 0:
            key, item = implied, part
        else:
            key, item = part, "on"
        if key not in allowed:
            raise UsageError(f"-{option} {value}: Invalid parameter '{key}'")
        result[key] = item
    return result


def _parse_bool(option: str, value: str, key: str, item: str) -> bool:
    if item in _TRUE:
        return True
    if item in _FALSE:
        return False
    raise UsageError(f"-{option} {value}: Parameter '{key}' expects 'on' or 'off'")


def _parse_name(value: str) -> str:
    opts = _keyed("name", value, "guest", ("guest", "process", "debug-threads"))
    if "debug-threads" in opts:
        _parse_bool("name", value, "debug-threads", opts["debug-threads"])
    return opts.get("guest", "")


def _parse_unix_server(option: str, value: str, *, server_required: bool = False) -> str:
    parts = split_opts(value)
    if not parts[0].startswith("unix:") or parts[0] == "unix:":
        raise UsageError(
            f"-{option} {value}: only unix:PATH sockets are supported by the simulator"
        )
    path = parts[0][len("unix:") :]
    server = not server_required
    wait = False
    for part in parts[1:]:
        key, sep, item = part.partition("=")
        if key == "nowait" and not sep:
            wait = False
        elif key in ("server", "wait"):
            flag = _parse_bool(option, value, key, item) if sep else True
            if key == "server":
                server = flag
            else:
                wait = flag
        else:
            raise UsageError(f"-{option} {value}: Invalid parameter '{key}'")
    if not server:
        raise UsageError(f"-{option} {value}: the simulator only listens (server=on)")
    if wait:
        raise UsageError(f"-{option} {value}: wait=on is not supported by the simulator")
    return path


def parse_size(text: str, default_suffix: str = "M") -> int:
    """A QEMU size (``128``, ``128M``, ``1.5G``, ``4096k``) in bytes.

    Raises:
        ValueError: not a size.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    number, suffix = match.groups()
    shift = _SIZE_SHIFT[(suffix or default_suffix).lower()]
    value = int(float(number) * (1 << shift)) if "." in number else int(number) << shift
    if value >= 1 << 64:
        raise ValueError(text)
    return value


def _parse_memory(value: str) -> int:
    opts = _keyed("m", value, "size", ("size", "slots", "maxmem"))
    try:
        size = parse_size(opts.get("size", ""))
    except ValueError:
        raise UsageError(f"-m {value}: {_SIZE_HELP}") from None
    if size < _MIB:
        raise UsageError(f"-m {value}: memory size must be at least 1 MiB")
    return size


def _parse_smp(value: str) -> SmpTopology:
    keys = ("cpus", "sockets", "dies", "cores", "threads", "maxcpus")
    opts = _keyed("smp", value, "cpus", keys)
    numbers: dict[str, int] = {}
    for key, item in opts.items():
        if not item.isdigit():
            raise UsageError(f"-smp {value}: Parameter 'smp.{key}' expects integer")
        numbers[key] = int(item)
        if numbers[key] < 1:
            raise UsageError(
                f"-smp {value}: Invalid CPU topology: "
                "CPU topology parameters must be greater than zero"
            )
    sockets = numbers.get("sockets", 1)
    threads = numbers.get("threads", 1)
    dies = numbers.get("dies", 1)
    if "cpus" in numbers:
        cpus = numbers["cpus"]
        cores = numbers.get("cores", max(1, -(-cpus // (sockets * dies * threads))))
    else:
        cores = numbers.get("cores", 1)
        cpus = sockets * dies * cores * threads
    if cpus > _MAX_CPUS:
        raise UsageError(f"-smp {value}: Invalid SMP CPUs {cpus}. The max CPUs is {_MAX_CPUS}")
    if cpus > sockets * dies * cores * threads:
        raise UsageError(
            f"-smp {value}: Invalid CPU topology: product of the hierarchy "
            f"must be at least cpus ({cpus})"
        )
    return SmpTopology(cpus=cpus, sockets=sockets * dies, cores=cores, threads=threads)


def _parse_machine(value: str) -> str:
    parts = split_opts(value)
    machine = "" if "=" in parts[0] else parts[0]
    for part in parts:
        key, sep, item = part.partition("=")
        if sep and key == "type":
            machine = item
    if not machine:
        raise UsageError(f"-machine {value}: no machine type given")
    return machine


def _check_device(option: str, value: str) -> None:
    """QEMU's checks of a device option that the simulator can make."""
    if option in ("kernel", "initrd", "append"):
        if option != "append" and not os.path.isfile(value):
            raise UsageError(f"-{option} {value}: could not open {option} file")
        return
    parts = split_opts(value)
    opts = dict(part.partition("=")[::2] for part in parts if "=" in part)
    if option == "add-fd":
        fd, fdset = opts.get("fd", ""), opts.get("set", "")
        if not fd.isdigit() or not fdset.isdigit():
            raise UsageError(f"-add-fd {value}: 'fd' and 'set' must be numbers")
        try:
            os.fstat(int(fd))
        except OSError:
            raise UsageError(f"-add-fd {value}: fd {fd} is not open") from None
        return
    if option == "blockdev" and value.startswith("{"):
        try:
            loaded = json.loads(value)
        except ValueError as exc:
            raise UsageError(f"-blockdev {value}: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"-blockdev {value}: expected a JSON object")
        opts = {k: v for k, v in loaded.items() if isinstance(v, str)}
    if option == "serial":
        if not value.startswith("chardev:") and value not in ("none", "null", "stdio"):
            raise UsageError(f"-serial {value}: only chardev:ID is supported by the simulator")
        return
    if option == "netdev" and parts[0] != "user":
        raise UsageError(f"-netdev {value}: only user networking is supported by the simulator")
    if option in ("netdev", "chardev") and not opts.get("id"):
        raise UsageError(f"-{option} {value}: Parameter 'id' is missing")
    if option == "device" and (not parts[0] or "=" in parts[0]):
        raise UsageError(f"-device {value}: Parameter 'driver' expects a device type")
    if option == "blockdev":
        if not opts.get("driver"):
            raise UsageError(f"-blockdev {value}: Parameter 'driver' is missing")
        filename = opts.get("filename")
        # /dev/fdset/N: a descriptor passed with -add-fd (checked there).
        passed = filename is not None and filename.startswith("/dev/fdset/")
        if (
            opts["driver"] == "file"
            and not passed
            and (filename is None or not os.path.exists(filename))
        ):
            raise UsageError(
                f"-blockdev {value}: Could not open '{filename}': No such file or directory"
            )


def _parse_powerdown(value: str) -> PowerdownAction:
    if value == "shutdown":
        return "shutdown"
    if value == "ignore":
        return "ignore"
    raise UsageError(f"-sim-powerdown {value}: expected 'shutdown' or 'ignore'")


_SANDBOX_KEYS: Final = {
    "obsolete": ("allow", "deny"),
    "elevateprivileges": ("allow", "deny", "children"),
    "spawn": ("allow", "deny"),
    "resourcecontrol": ("allow", "deny"),
}


def _parse_sandbox(value: str) -> None:
    """``-sandbox``: QEMU 7.2's syntax, checked; the simulator installs no filter."""
    first, *rest = split_opts(value)
    if first not in _TRUE | _FALSE:
        raise UsageError(f"-sandbox {value}: expected 'on' or 'off' first")
    for item in rest:
        key, eq, val = item.partition("=")
        if key not in _SANDBOX_KEYS or not eq or val not in _SANDBOX_KEYS[key]:
            raise UsageError(f"-sandbox: invalid option {item!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"many: {message}")


def parse_many_args(argv: Sequence[str]) -> ManyOptions:
    """Parse ``many``'s options (GNU style, after the word ``many``).

    Raises:
        UsageError: unknown option or bad value.
    """
    parser = _Parser(prog=f"{PROG} many", add_help=False)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--count", required=True, type=int)
    parser.add_argument("--prefix", default="vm")
    parser.add_argument("--pidfile")
    parser.add_argument("--daemonize", action="store_true")
    parser.add_argument("--paused", action="store_true")
    parser.add_argument("--powerdown", choices=("shutdown", "ignore"), default="shutdown")
    parser.add_argument("--vm-dirs", action="store_true")
    ns = parser.parse_args(list(argv))
    if ns.count < 1:
        raise UsageError(f"many: --count must be at least 1, not {ns.count}")
    if not ns.prefix or "/" in ns.prefix:
        raise UsageError(f"many: --prefix {ns.prefix!r} is not a valid name prefix")
    return ManyOptions(
        dir=ns.dir,
        count=ns.count,
        prefix=ns.prefix,
        pidfile=ns.pidfile,
        daemonize=ns.daemonize,
        paused=ns.paused,
        powerdown=_parse_powerdown(ns.powerdown),
        vm_dirs=ns.vm_dirs,
    )
