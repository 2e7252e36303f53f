"""A simulated ``qemu-system-x86_64`` that speaks QMP like QEMU 7.2.

trioctl starts it exactly like real QEMU (same options, ``-daemonize``,
``-pidfile``, ``-qmp unix:...``), one process per VM so that SIGSTOP really
hangs it, or many VMs in one process for scale tests (``many``). Faults are
injected through the ``x-trioctl-sim-fault`` QMP command or a control socket
(``-sim-control``). See ``docs/simulator.md``.

Everything here can also run inside a Trio program: :func:`open_simulated_vm`
serves one VM in-process (tests of QMP clients use it).
"""

from __future__ import annotations

import sys

from ._control import ControlServer as ControlServer, control_request as control_request
from ._json import (
    InputTooLarge as InputTooLarge,
    JsonStreamParser as JsonStreamParser,
    ParsedValue as ParsedValue,
    ParseFailure as ParseFailure,
)
from ._options import (
    ManyOptions as ManyOptions,
    SimOptions as SimOptions,
    SmpTopology as SmpTopology,
    UsageError as UsageError,
    VMConfig as VMConfig,
    parse_many_args as parse_many_args,
    parse_qemu_args as parse_qemu_args,
)
from ._process import main as main, open_simulated_vm as open_simulated_vm
from ._vm import (
    FAULT_MODES as FAULT_MODES,
    GARBAGE as GARBAGE,
    Fault as Fault,
    FaultMode as FaultMode,
    SimulatedVM as SimulatedVM,
    VMState as VMState,
)

__all__ = [
    "FAULT_MODES",
    "GARBAGE",
    "ControlServer",
    "Fault",
    "FaultMode",
    "InputTooLarge",
    "JsonStreamParser",
    "ManyOptions",
    "ParseFailure",
    "ParsedValue",
    "SimOptions",
    "SimulatedVM",
    "SmpTopology",
    "UsageError",
    "VMConfig",
    "VMState",
    "control_request",
    "main",
    "open_simulated_vm",
    "parse_many_args",
    "parse_qemu_args",
    "sim_command",
]


def sim_command() -> list[str]:
    """The argv prefix that starts the simulator with this interpreter, as the
    daemon starts it (``emulator = "sim"``).

    It runs in Python's isolated mode (``-I``): ``-m`` alone would put the
    current directory first on ``sys.path``, so a ``trioctl`` package there
    would run as the daemon's user (root), and ``PYTHON*`` variables would be
    obeyed too. It must be importable from the interpreter's own ``sys.path``
    (an installed package, as usual).
    """
    return [sys.executable, "-I", "-m", "trioctl.sim"]
