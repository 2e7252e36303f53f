"""WebSocket frame headers as they come in: the size a client declares for a message.

Sans-I/O. :class:`MessageSizes` is fed the bytes a client sends after its
opening handshake, in whatever pieces they arrive, and reads only the frame
headers (RFC 6455 section 5.2), skipping payloads by their declared length.
It answers one question: has the client declared a message (a text or binary
frame and its continuations) longer than the limit? It knows the answer at
the header, before any of the payload has come, so a frame that claims a
terabyte is refused at once instead of after ``limit`` bytes of it.

It checks nothing else: masking, reserved bits, opcodes and UTF-8 are
wsproto's (the connection's parser), which reads the same bytes.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MessageSizes"]

_CONTROL: Final = 0x8
"""Opcodes from 8 on are control frames (close, ping, pong): not a message's."""


class MessageSizes:
    """Tracks frame boundaries in a client's byte stream.

    Args:
        limit: the largest message allowed, in bytes of payload.
        skip: bytes to pass over before the first frame header (what precedes
            the frames in the stream, such as the HTTP request head).
    """

    __slots__ = ("_counted", "_head", "_message", "_skip", "limit")

    def __init__(self, limit: int, skip: int = 0) -> None:
        self.limit = limit
        self._skip = skip
        """Payload (or prefix) bytes still to pass over."""
        self._head = b""
        """The start of a header split between two pieces."""
        self._message = 0
        """Declared bytes of the message in progress."""
        self._counted = False
        """The header in ``_head`` is counted in ``_message`` already."""

    def feed(self, data: bytes | bytearray | memoryview) -> int | None:
        """Read the headers in ``data``; the declared size of the first message
        over the limit, or None. Once it returned a size, the stream is not
        to be fed again (its framing is not followed past that header)."""
        n = len(data)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            return None
        head = self._head
        while pos < n:
            avail = bytes(data[pos : pos + 14])
            if head:
                avail = head + avail
            if len(avail) < 2:
                self._head, self._skip = avail, 0
                return None
            second = avail[1]
            size = second & 0x7F
            header = 2
            if size == 126:
                header = 4
            elif size == 127:
                header = 10
            if len(avail) < header:
                self._head, self._skip = avail, 0
                return None
            if size == 126:
                size = int.from_bytes(avail[2:4], "big")
            elif size == 127:
                size = int.from_bytes(avail[2:10], "big")
            opcode = avail[0] & 0x0F
            if opcode < _CONTROL and not self._counted:
                # Decided as soon as the length is in, before the mask.
                total = size if opcode else self._message + size
                if total > self.limit:
                    return total
                self._message = total
                self._counted = True
            if second & 0x80:
                header += 4
                if len(avail) < header:
                    self._head, self._skip = avail, 0
                    return None
            self._counted = False
            pos += header - len(head) + size
            head = b""
        self._head = b""
        self._skip = pos - n
        return None
