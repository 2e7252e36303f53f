"""trioctl: supervise QEMU virtual machines through QMP, on Trio.

Public API is re-exported here; everything else lives in ``_private`` modules.
"""

from __future__ import annotations

import logging

from ._errors import (
    AccessDenied as AccessDenied,
)
from ._errors import (
    ConnectionLost as ConnectionLost,
)
from ._errors import (
    DeadlineExceeded as DeadlineExceeded,
    DomainDestroyed as DomainDestroyed,
)
from ._errors import (
    DomainExists as DomainExists,
)
from ._errors import (
    InternalError as InternalError,
)
from ._errors import (
    InvalidParams as InvalidParams,
)
from ._errors import (
    InvalidRequest as InvalidRequest,
)
from ._errors import (
    JobQueueFull as JobQueueFull,
)
from ._errors import (
    JobTimeout as JobTimeout,
)
from ._errors import (
    LaunchError as LaunchError,
)
from ._errors import (
    LocalProtocolError as LocalProtocolError,
)
from ._errors import (
    MethodNotFound as MethodNotFound,
)
from ._errors import (
    MonitorError as MonitorError,
)
from ._errors import (
    MonitorTimeout as MonitorTimeout,
)
from ._errors import (
    MonitorUnresponsive as MonitorUnresponsive,
)
from ._errors import (
    NoDomain as NoDomain,
)
from ._errors import (
    OperationInvalid as OperationInvalid,
)
from ._errors import (
    ParseError as ParseError,
)
from ._errors import (
    ProtocolError as ProtocolError,
)
from ._errors import (
    QmpCommandError as QmpCommandError,
)
from ._errors import (
    RemoteProtocolError as RemoteProtocolError,
)
from ._errors import (
    ServerBusy as ServerBusy,
)
from ._errors import (
    TrioctlError as TrioctlError,
)

__version__ = "0.1.0"

# Suppress logging unless an application engages it (as qemu.qmp does).
logging.getLogger(__name__).addHandler(logging.NullHandler())
