"""trioctl: supervise QEMU virtual machines through QMP, on Trio.

The public API is re-exported here; everything else lives in ``_private``
modules. The main pieces, most important first: the whole daemon
(:func:`open_daemon`), its configuration (:func:`load_config`), the client
(:func:`connect`), the domain driver (:func:`open_driver`), the dispatch core
(:func:`open_dispatcher`, :func:`open_worker_pools`, :class:`DomainJobs`) and
one QMP monitor connection (:func:`open_monitor`). Errors, most generic first:
see ``trioctl/_errors.py`` for the tree.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any, Final

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from ._client import Client as Client, connect as connect
    from ._config import (
        ConfigError as ConfigError,
        DaemonConfig as DaemonConfig,
        load_config as load_config,
    )
    from ._daemon import DaemonHandle as DaemonHandle, open_daemon as open_daemon
    from ._dispatch import (
        Dispatcher as Dispatcher,
        DispatchMode as DispatchMode,
        legacy_limits as legacy_limits,
        open_dispatcher as open_dispatcher,
    )
    from ._driver import Driver as Driver, DriverConfig as DriverConfig, open_driver as open_driver
    from ._errors import (
        AccessDenied as AccessDenied,
        ConnectError as ConnectError,
        ConnectionLost as ConnectionLost,
        ConnectionRejected as ConnectionRejected,
        ConnectTimeout as ConnectTimeout,
        DaemonConnectionLost as DaemonConnectionLost,
        DeadlineExceeded as DeadlineExceeded,
        DomainDestroyed as DomainDestroyed,
        DomainExists as DomainExists,
        InternalError as InternalError,
        InvalidParams as InvalidParams,
        InvalidRequest as InvalidRequest,
        JobQueueFull as JobQueueFull,
        JobTimeout as JobTimeout,
        LaunchError as LaunchError,
        LimitExceeded as LimitExceeded,
        LocalProtocolError as LocalProtocolError,
        MethodNotFound as MethodNotFound,
        MonitorError as MonitorError,
        MonitorTimeout as MonitorTimeout,
        MonitorUnresponsive as MonitorUnresponsive,
        NoDomain as NoDomain,
        OperationInvalid as OperationInvalid,
        ParseError as ParseError,
        ProtocolError as ProtocolError,
        QmpCommandError as QmpCommandError,
        RemoteProtocolError as RemoteProtocolError,
        ServerBusy as ServerBusy,
        TrioctlError as TrioctlError,
    )
    from ._jobs import DomainJobs as DomainJobs, JobKind as JobKind, JobOwner as JobOwner
    from ._models import (
        Disk as Disk,
        DomainDefinition as DomainDefinition,
        DomainEvent as DomainEvent,
        DomainInfo as DomainInfo,
        DomainState as DomainState,
        DomainStats as DomainStats,
        MonitorState as MonitorState,
        Nic as Nic,
    )
    from ._monitor import Monitor as Monitor, open_monitor as open_monitor
    from ._pools import (
        PoolLimits as PoolLimits,
        PoolStatistics as PoolStatistics,
        Priority as Priority,
        WorkerPools as WorkerPools,
        open_worker_pools as open_worker_pools,
        serve_worker_pools as serve_worker_pools,
    )
    from ._startup import StartupError as StartupError

#: Each private module and the public names it defines. They are imported on
#: first use (PEP 562), so that ``import trioctl`` and the command-line
#: client's commands do not load the daemon's side (driver, server, store...).
_LAZY: Final[dict[str, tuple[str, ...]]] = {
    "_client": (
        "Client",
        "connect",
    ),
    "_config": (
        "ConfigError",
        "DaemonConfig",
        "load_config",
    ),
    "_daemon": (
        "DaemonHandle",
        "open_daemon",
    ),
    "_dispatch": (
        "Dispatcher",
        "DispatchMode",
        "legacy_limits",
        "open_dispatcher",
    ),
    "_driver": (
        "Driver",
        "DriverConfig",
        "open_driver",
    ),
    "_errors": (
        "AccessDenied",
        "ConnectError",
        "ConnectionLost",
        "ConnectionRejected",
        "ConnectTimeout",
        "DaemonConnectionLost",
        "DeadlineExceeded",
        "DomainDestroyed",
        "DomainExists",
        "InternalError",
        "InvalidParams",
        "InvalidRequest",
        "JobQueueFull",
        "JobTimeout",
        "LaunchError",
        "LimitExceeded",
        "LocalProtocolError",
        "MethodNotFound",
        "MonitorError",
        "MonitorTimeout",
        "MonitorUnresponsive",
        "NoDomain",
        "OperationInvalid",
        "ParseError",
        "ProtocolError",
        "QmpCommandError",
        "RemoteProtocolError",
        "ServerBusy",
        "TrioctlError",
    ),
    "_jobs": (
        "DomainJobs",
        "JobKind",
        "JobOwner",
    ),
    "_models": (
        "Disk",
        "DomainDefinition",
        "DomainEvent",
        "DomainInfo",
        "DomainState",
        "DomainStats",
        "MonitorState",
        "Nic",
    ),
    "_monitor": (
        "Monitor",
        "open_monitor",
    ),
    "_pools": (
        "PoolLimits",
        "PoolStatistics",
        "Priority",
        "WorkerPools",
        "open_worker_pools",
        "serve_worker_pools",
    ),
    "_startup": ("StartupError",),
}
_WHERE: Final = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


# Suppress logging unless an application engages it (as qemu.qmp does).
logging.getLogger(__name__).addHandler(logging.NullHandler())
