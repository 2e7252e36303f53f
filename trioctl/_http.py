"""Plain HTTP GETs on the daemon's WebSocket listener: ``/metrics`` and the console.

The server reads a connection's request head itself (bounded in size, under
``server.handshake_timeout``), parses it with h11 and looks for
``Upgrade: websocket``. An upgrade is handed to trio-websocket with the bytes
already read put back in front of the stream (:class:`PrefixedStream`);
anything else is answered here, once, and the connection closed:

* ``GET /metrics``: Prometheus text (``_metrics``), with any valid token
  (``Authorization: Bearer``), or without one from a loopback peer that names
  a loopback ``Host`` (``server.metrics_access = "loopback"``, the default;
  the Host check keeps a DNS-rebinding page out);
* ``GET /``, ``/console.js``, ``/console.css``: the web console, static files
  shipped in ``trioctl/console/`` (no token needed: the page holds no secret;
  it asks for the token, or reads it from the URL fragment, which browsers
  never send);
* anything else: 404 (other paths) or 405 (other methods).
"""

from __future__ import annotations

import ipaddress
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import h11
import trio

if TYPE_CHECKING:
    from ._server import Server

__all__ = [
    "MAX_HEAD",
    "PrefixedStream",
    "header",
    "is_upgrade",
    "own_origin",
    "parse_head",
    "read_head",
    "serve_http",
]

MAX_HEAD: Final = 16384
"""Bytes of a request head at most (h11's own default)."""

_STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}
_PAGE_HEADERS: Final = [
    # Only the daemon's own files and its own WebSocket; no framing.
    (
        b"Content-Security-Policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cache-Control", b"no-store"),
]


class PrefixedStream(trio.abc.Stream):
    """``stream`` with ``prefix`` (bytes already read from it) read first."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes, peer: str) -> None:
        self.stream = stream
        self._prefix = prefix
        self._peer = peer

    def __repr__(self) -> str:
        # trio-websocket names a stream it does not know by its repr: the
        # peer, as for a socket.
        return self._peer

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            if max_bytes is None or max_bytes >= len(self._prefix):
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            await trio.lowlevel.checkpoint()
            return bytes(data)
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_head(stream: trio.abc.Stream) -> bytes | None:
    """Bytes from ``stream`` up to and including the end of the request head
    (and whatever came with them); None if the peer closed first or the head
    exceeds :data:`MAX_HEAD`."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return None
        chunk = await stream.receive_some(MAX_HEAD)
        if not chunk:
            return None
        data += bytes(chunk)
    return data


def parse_head(data: bytes) -> h11.Request | None:
    """The request of a head, or None if it is not valid HTTP/1.1."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


def header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


def is_upgrade(request: h11.Request) -> bool:
    """A WebSocket upgrade request (else a plain HTTP request)."""
    upgrade = header(request, b"upgrade")
    return upgrade is not None and b"websocket" in upgrade.lower()


def _is_loopback_host(host: str) -> bool:
    """``host`` (an address or ``Host`` header's name, without port) is loopback."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def own_origin(origin: str, host: str) -> bool:
    """``origin`` is the daemon's own page reached at ``host`` (a Host header),
    and that host is an IP address or ``localhost``."""
    if not host or origin not in (f"http://{host}", f"https://{host}"):
        return False
    name = _host_name(host.encode("latin-1"))
    if name.strip("[]") == "localhost":
        return True
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _host_name(value: bytes | None) -> str:
    if value is None:
        return ""
    text = value.decode("latin-1").strip()
    if text.startswith("["):
        return text[: text.find("]") + 1]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _response(
    status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]]
) -> bytes:
    conn = h11.Connection(h11.SERVER)
    # h11 writes a response only after reading a request.
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    all_headers = [
        (b"Content-Type", content_type),
        (b"Content-Length", str(len(body)).encode()),
        (b"Connection", b"close"),
        *headers,
    ]
    out = conn.send(h11.Response(status_code=status, headers=all_headers)) or b""
    out += conn.send(h11.Data(data=body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out


async def respond(
    stream: trio.abc.Stream,
    status: int,
    body: bytes,
    content_type: bytes = b"text/plain; charset=utf-8",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await stream.send_all(_response(status, body, content_type, headers or []))


def _metrics_allowed(server: Server, request: h11.Request, peer_host: str) -> bool:
    if server.tokens is None:
        return True
    auth = header(request, b"authorization")
    if auth is not None:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        return (
            scheme.lower() == "bearer"
            and bool(token.strip())
            and server.tokens.role_for(token.strip()) is not None
        )
    return (
        server.config.metrics_access == "loopback"
        and _is_loopback_host(peer_host)
        and _is_loopback_host(_host_name(header(request, b"host")))
    )


async def serve_http(
    server: Server, stream: trio.abc.Stream, request: h11.Request, peer_host: str
) -> None:
    """Answer one plain HTTP request (see the module's doc)."""
    target = bytes(request.target).decode("latin-1")
    path = target.split("?", 1)[0]
    if path != "/metrics" and path not in _STATIC:
        await respond(stream, 404, b"no such page: GET /, /metrics, or a WebSocket\n")
        return
    if request.method != b"GET":
        await respond(stream, 405, b"only GET\n", headers=[(b"Allow", b"GET")])
        return
    if path == "/metrics":
        if not _metrics_allowed(server, request, peer_host):
            await respond(
                stream,
                401,
                b"/metrics needs a valid bearer token (or, with "
                b'server.metrics_access = "loopback", a loopback peer and Host)\n',
                headers=[(b"WWW-Authenticate", b'Bearer realm="trioctl"')],
            )
            return
        # Listening while the domains load: no half-loaded registry shows
        # (the connection's handshake deadline bounds the wait).
        await server.driver.loaded.wait()
        from ._metrics import CONTENT_TYPE, render

        await respond(stream, 200, render(server), CONTENT_TYPE.encode())
        return
    name, content_type = _STATIC[path]
    body = _static(name)
    await respond(stream, 200, body, content_type.encode(), _PAGE_HEADERS)


_cache: dict[str, bytes] = {}


def _static(name: str) -> bytes:
    if name not in _cache:
        _cache[name] = resources.files("trioctl.console").joinpath(name).read_bytes()
    return _cache[name]


def peer_host(stream: Any) -> str:
    """The peer's address of a socket stream (through TLS), else ``""``."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return ""
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, IndexError):
        return ""
