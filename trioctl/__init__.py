"""trioctl: supervise QEMU virtual machines through QMP, on Trio.

Public API is re-exported here; everything else lives in ``_private`` modules.
"""

from __future__ import annotations

import logging

from ._errors import (
    AccessDenied as AccessDenied,
    ConnectionLost as ConnectionLost,
    DomainDestroyed as DomainDestroyed,
    DomainExists as DomainExists,
    InternalError as InternalError,
    InvalidParams as InvalidParams,
    InvalidRequest as InvalidRequest,
    JobQueueFull as JobQueueFull,
    JobTimeout as JobTimeout,
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

__version__ = "0.1.0"

# Suppress logging unless an application engages it (as qemu.qmp does).
logging.getLogger(__name__).addHandler(logging.NullHandler())
