"""A streaming JSON reader that splits and parses input the way QEMU's QMP does.

QEMU does not read QMP line by line. Its input goes through a JSON *lexer*
(bytes to tokens) and a *streamer* that groups tokens into messages: a message
ends when the count of open braces and brackets drops back to zero (or below),
or at once for a lone scalar. Each message is then parsed on its own, and a
failure becomes one ``GenericError`` reply whose text starts with
``JSON parse error,``. Consequences this module reproduces:

* values may arrive in any number of pieces, and several may share one write;
* a number or keyword at the very end of the input waits for the next byte,
  since only the byte after it says it has ended;
* a byte that cannot start a token (``@``, ``\\xff``) is reported as
  ``stray '...'`` and the lexer then skips input until a structural character
  (``{}[],:``) or a control character, which is how a client resynchronises;
* an object left open swallows everything after it until it closes.

Sans-I/O: :meth:`JsonStreamParser.feed` takes bytes and returns what became
complete. It never imports trio.
"""

from __future__ import annotations

import re
from typing import Any, Final

import attrs

__all__ = [
    "MAX_NESTING",
    "InputTooLarge",
    "JsonStreamParser",
    "ParseFailure",
    "ParsedValue",
]

#: QEMU's limit on nested arrays and objects.
MAX_NESTING: Final = 1024
#: QEMU's limit on the tokens of one message.
MAX_TOKEN_COUNT: Final = 2 << 20

_WHITESPACE = re.compile(rb"[ \t\r\n]*")
# Where the lexer may start again after an error: structural characters,
# control characters other than tab, and the bytes that never occur in UTF-8.
_RESYNC = re.compile(rb"[\x00-\x08\x0a-\x1f\[\]{},:\xfe\xff]")
_NUMBER_RUN = re.compile(rb"[-+0-9.eE]*")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_KEYWORD_RUN = re.compile(rb"[a-z]*")
_STRING_BODY = {
    ord('"'): re.compile(rb'[^"\\\x00-\x1f]*(?:\\[^\x00-\x1f][^"\\\x00-\x1f]*)*'),
    ord("'"): re.compile(rb"[^'\\\x00-\x1f]*(?:\\[^\x00-\x1f][^'\\\x00-\x1f]*)*"),
}
_STRUCTURAL: Final = frozenset(b"{}[],:")
_KEYWORDS: Final[dict[str, object]] = {"true": True, "false": False, "null": None}
_INT_MIN: Final = -(2**63)
_UINT_MAX: Final = 2**64 - 1
_SIMPLE_ESCAPES: Final = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}

# Token kinds: the structural character itself, or one of these.
_STRING: Final = "s"
_NUMBER_TOKEN: Final = "n"
_KEYWORD: Final = "k"


@attrs.frozen
class ParsedValue:
    """One complete JSON value from the stream."""

    value: Any
    size: int
    """How many input bytes its tokens took (whitespace not counted)."""


@attrs.frozen
class ParseFailure:
    """One message that failed to lex or parse; QMP answers it with a
    ``GenericError`` carrying ``desc`` (QEMU's wording where known)."""

    desc: str
    size: int


class InputTooLarge(Exception):
    """More than the parser's byte limit is pending without completing a value.
    The connection should be dropped. You don't get this for large input that
    keeps completing values: only unfinished input counts."""


class _ParseError(Exception):
    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


class JsonStreamParser:
    """Incremental QMP input reader (QEMU's lexer and streamer, rewritten).

    Args:
        max_pending: bytes of unfinished input allowed before :meth:`feed`
            raises :class:`InputTooLarge`.
    """

    def __init__(self, max_pending: int = 10 * 1024 * 1024) -> None:
        self._max_pending = max_pending
        self._buf = bytearray()
        self._recovering = False
        self._tokens: list[tuple[str, bytes]] = []
        self._braces = 0
        self._brackets = 0
        self._message_bytes = 0
        # How far an unfinished string token at the start of _buf was already
        # scanned, so a huge string arriving in pieces is scanned once.
        self._string_scanned = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes received that are not part of a completed value yet."""
        return len(self._buf) + self._message_bytes

    def feed(self, data: bytes) -> list[ParsedValue | ParseFailure]:
        """Add ``data``; return every message it completed, in order.

        Raises:
            InputTooLarge: too much unfinished input is pending. The parser
                must not be used afterwards.
        """
        self._buf += data
        out: list[ParsedValue | ParseFailure] = []
        pos = self._lex(out)
        del self._buf[:pos]
        if self.pending_bytes > self._max_pending:
            raise InputTooLarge(f"more than {self._max_pending} bytes of unfinished input")
        return out

    # -- the lexer ----------------------------------------------------------------

    def _lex(self, out: list[ParsedValue | ParseFailure]) -> int:
        """Lex ``self._buf``; return how many bytes were consumed."""
        buf = self._buf
        end = len(buf)
        pos = 0
        while True:
            if self._recovering:
                match = _RESYNC.search(buf, pos)
                if match is None:
                    return end
                pos = match.start()
                self._recovering = False
            pos = _match_end(_WHITESPACE, buf, pos)
            if pos >= end:
                return pos
            char = buf[pos]
            if char in _STRUCTURAL:
                self._token(chr(char), bytes(buf[pos : pos + 1]), out)
                pos += 1
            elif char in _STRING_BODY:
                scan_from = max(pos + 1, pos + self._string_scanned)
                body_end = _match_end(_STRING_BODY[char], buf, scan_from)
                if body_end >= end or (buf[body_end] == ord("\\") and body_end + 1 >= end):
                    # Unfinished: remember how far we got (never inside an escape).
                    self._string_scanned = body_end - pos
                    return pos
                self._string_scanned = 0
                if buf[body_end] == char:
                    self._token(_STRING, bytes(buf[pos : body_end + 1]), out)
                else:  # a control character inside a string, or after a backslash
                    self._error(buf[pos : body_end + 1], out)
                pos = body_end + 1
            elif char == ord("-") or ord("0") <= char <= ord("9"):
                run_end = _match_end(_NUMBER_RUN, buf, pos)
                if run_end >= end:
                    return pos
                text = bytes(buf[pos:run_end])
                if _NUMBER.fullmatch(text):
                    self._token(_NUMBER_TOKEN, text, out)
                else:
                    self._error(text, out)
                pos = run_end
            elif ord("a") <= char <= ord("z"):
                run_end = _match_end(_KEYWORD_RUN, buf, pos)
                if run_end >= end:
                    return pos
                self._token(_KEYWORD, bytes(buf[pos:run_end]), out)
                pos = run_end
            else:
                self._error(buf[pos : pos + 1], out)
                pos += 1

    def _error(self, text: bytes | bytearray, out: list[ParsedValue | ParseFailure]) -> None:
        """Report a lexer error; the lexer then skips to a resync point."""
        shown = bytes(text).decode("utf-8", errors="replace")
        out.append(
            ParseFailure(f"JSON parse error, stray '{shown}'", self._message_bytes + len(text))
        )
        self._reset()
        self._recovering = True

    # -- the streamer ---------------------------------------------------------------

    def _token(self, kind: str, text: bytes, out: list[ParsedValue | ParseFailure]) -> None:
        if kind == "{":
            self._braces += 1
        elif kind == "}":
            self._braces -= 1
        elif kind == "[":
            self._brackets += 1
        elif kind == "]":
            self._brackets -= 1
        self._message_bytes += len(text)
        size = self._message_bytes
        if len(self._tokens) + 1 > MAX_TOKEN_COUNT:
            out.append(ParseFailure("JSON token count limit exceeded", size))
            self._reset()
            return
        if self._braces + self._brackets > MAX_NESTING:
            out.append(ParseFailure("JSON nesting depth limit exceeded", size))
            self._reset()
            return
        self._tokens.append((kind, text))
        if (self._braces > 0 or self._brackets > 0) and self._braces >= 0 and self._brackets >= 0:
            return
        tokens = self._tokens
        self._reset()
        try:
            out.append(ParsedValue(_parse(tokens), size))
        except _ParseError as exc:
            out.append(ParseFailure(f"JSON parse error, {exc.desc}", size))

    def _reset(self) -> None:
        self._tokens = []
        self._braces = 0
        self._brackets = 0
        self._message_bytes = 0


def _match_end(regex: re.Pattern[bytes], buf: bytearray, pos: int) -> int:
    match = regex.match(buf, pos)
    assert match is not None  # every pattern used here matches the empty string
    return match.end()


# -- the parser: one message's tokens to a value -------------------------------------


def _parse(tokens: list[tuple[str, bytes]]) -> Any:
    """Parse one message (iteratively: nesting may reach MAX_NESTING).

    Raises:
        _ParseError: with QEMU's wording where known.
    """
    stack: list[tuple[dict[str, Any] | list[Any], str | None]] = []
    index = 0
    count = len(tokens)

    def take() -> tuple[str, bytes]:
        nonlocal index
        if index >= count:
            raise _ParseError("premature EOI")
        token = tokens[index]
        index += 1
        return token

    def take_key() -> str:
        kind, text = take()
        if kind == _KEYWORD and text.decode("ascii") not in _KEYWORDS:
            raise _ParseError(f"invalid keyword '{text.decode('ascii')}'")
        if kind != _STRING:
            raise _ParseError("key is not a string in object")
        key = _decode_string(text)
        if take()[0] != ":":
            raise _ParseError("missing : in object pair")
        return key

    while True:
        # Read one value; containers are pushed and their contents read next.
        kind, text = take()
        value: Any
        if kind == "{":
            if index < count and tokens[index][0] == "}":
                index += 1
                value = {}
            else:
                stack.append(({}, take_key()))
                continue
        elif kind == "[":
            if index < count and tokens[index][0] == "]":
                index += 1
                value = []
            else:
                stack.append(([], None))
                continue
        elif kind == _STRING:
            value = _decode_string(text)
        elif kind == _NUMBER_TOKEN:
            value = _decode_number(text)
        elif kind == _KEYWORD:
            word = text.decode("ascii")
            if word not in _KEYWORDS:
                raise _ParseError(f"invalid keyword '{word}'")
            value = _KEYWORDS[word]
        else:
            raise _ParseError("expecting value")
        # Store the value into its container; close finished containers.
        while True:
            if not stack:
                return value
            container, key = stack[-1]
            if isinstance(container, dict):
                assert key is not None
                if key in container:
                    raise _ParseError("duplicate key")
                container[key] = value
                separator = take()[0]
                if separator == ",":
                    stack[-1] = (container, take_key())
                    break
                if separator != "}":
                    raise _ParseError("expected separator in dict")
            else:
                container.append(value)
                separator = take()[0]
                if separator == ",":
                    break
                if separator != "]":
                    raise _ParseError("expected separator in list")
            stack.pop()
            value = container


def _decode_number(text: bytes) -> int | float:
    if b"." not in text and b"e" not in text and b"E" not in text:
        number = int(text)
        if _INT_MIN <= number <= _UINT_MAX:
            return number
    result = float(text)
    if result in (float("inf"), float("-inf")):
        raise _ParseError(f"number '{text.decode()}' is out of range")
    return result


def _decode_string(token: bytes) -> str:
    """Decode a string token, quotes included (QEMU also takes single quotes)."""
    try:
        raw = token[1:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise _ParseError("invalid UTF-8 sequence in string") from None
    if "\\" not in raw:
        return raw
    parts: list[str] = []
    i = 0
    length = len(raw)
    while i < length:
        char = raw[i]
        if char != "\\":
            parts.append(char)
            i += 1
            continue
        escape = raw[i + 1]
        if escape in _SIMPLE_ESCAPES:
            parts.append(_SIMPLE_ESCAPES[escape])
            i += 2
            continue
        if escape != "u":
            raise _ParseError("invalid escape sequence in string")
        code = _hex4(raw, i)
        i += 6
        if 0xD800 <= code < 0xDC00:
            low = _hex4(raw, i) if raw.startswith("\\u", i) else -1
            if not 0xDC00 <= low < 0xE000:
                raise _ParseError(f"{raw[i - 6 : i]} is not a valid Unicode character")
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            i += 6
        elif 0xDC00 <= code < 0xE000:
            raise _ParseError(f"{raw[i - 6 : i]} is not a valid Unicode character")
        parts.append(chr(code))
    return "".join(parts)


def _hex4(raw: str, backslash: int) -> int:
    digits = raw[backslash + 2 : backslash + 6]
    if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        shown = raw[backslash : backslash + 6] + ('"' if len(digits) < 4 else "")
        raise _ParseError(f"{shown} is not a valid Unicode character")
    return int(digits, 16)
