"""JSON-RPC 2.0 without I/O: text in, messages out, messages to text.

Both ends of trioctl's WebSocket use this module. The server turns each text
frame into an :class:`Incoming` with :func:`parse_request_text`, dispatches
its items, and turns the answers back into one frame with
:func:`encode_responses`::

    incoming = parse_request_text(frame)
    answers = []
    for item in incoming.items:
        if isinstance(item, Invalid):
            answers.append(item.response())
        elif isinstance(item, Request):
            answers.append(dispatch(item))        # Response.result / Response.error
        else:
            run_notification(item)                # never answered
    if incoming.batch:
        reply = encode_responses(answers)         # None if there are no answers
    else:
        reply = encode_responses(answers[0] if answers else None)
    if reply is not None:
        send(reply)

The client does the opposite with :func:`encode_request`,
:func:`encode_notification` and :func:`parse_response_text`, which also
yields the :class:`ServerNotification` objects the server pushes.

It follows the JSON-RPC 2.0 specification (https://www.jsonrpc.org/specification)
throughout. Where the specification leaves a choice, trioctl decides:

- **Reserved names.** Method names beginning with ``rpc.`` are reserved for
  rpc-internal methods and extensions. trioctl implements one,
  ``rpc.discover`` (OpenRPC service discovery, :data:`RPC_EXTENSIONS`): a
  request for it is a :class:`Request` like any other. A *request* for any
  other ``rpc.`` name is answered here with ``-32601 Method not found`` (it
  arrives as an :class:`Invalid` item and never reaches the dispatcher). A
  *notification* for one stays a :class:`Notification`: notifications are
  never answered, and the dispatcher ignores names it has no handler for.
  The procedure table must not declare such names
  (:func:`is_reserved_method`).
- **Requests.** Members a request object does not define are ignored (the
  specification does not forbid them), except ``result`` and ``error``: an
  object with either is a response, not a request, and is an Invalid
  Request. So is ``"params": null``. Beware that a typo such as ``"param"``
  is therefore ignored: the call runs without parameters, and a procedure
  with required parameters answers ``-32602 Invalid params``. Arrays as
  ``params`` are accepted here; the dispatcher maps them onto the
  procedure's parameters in order (``-32602`` if there are too many).
- **Duplicate keys** in an object: the last one wins (Python's ``json``).
- **Binary frames** are accepted and decoded as UTF-8, like text frames.
- **Ids.** A string, an integer, a finite number or null. Booleans, arrays and
  objects make the request invalid; it is then answered with id null.
- **Strict JSON.** ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON and
  are refused; text given as bytes must be UTF-8 (WebSocket text frames are).
  Nesting deep enough to exhaust the interpreter's recursion limit is a parse
  error, not a crash.
- **Output** is compact (``separators=(",", ":")``) and ASCII-only, so a
  string holding a lone surrogate can still be sent. A result or error data
  that cannot be encoded as JSON does not stop the rest of a batch: that one
  answer becomes an ``-32603 Internal error`` (or loses its extra data).
- **Limits.** ``max_size`` bounds the text (in characters for ``str``, bytes
  for ``bytes``); a longer message is answered with one ``-32600 Invalid
  Request`` whose ``data.reason`` is ``LIMIT_EXCEEDED``
  (:class:`~trioctl.LimitExceeded`) and is not decoded. ``max_batch`` bounds
  the items of a batch: none of the items of a larger batch is run, and the
  answer is still an array (section 6 allows a single object only for text
  that is not JSON and for an empty array), one ``LIMIT_EXCEEDED`` error per
  item carrying that item's id (null when it has none or is not an object).
  Past item ``max_batch`` the rest is decoded only for the ids; past
  ``max_answers`` items (the server derives it from its output bound)
  decoding stops and the batch gets one error object instead, so the answer
  stays bounded whatever the batch holds.
- **Lenient responses.** The client ignores members it does not know in a
  response, so a newer server may add some.

Error objects on the wire are ``{"code": cls.rpc_code, "message": exc.message,
"data": {"reason": cls.reason, **exc.data}}``; :func:`error_from_wire` maps
them back to the class registered for ``data.reason``, so callers catch the
same exception classes locally and remotely.

Nothing here raises on what a client sends: :func:`parse_request_text` always
returns an :class:`Incoming`. On the client side, anything the server gets
wrong raises :class:`~trioctl.RemoteProtocolError`. Any other exception from
either parser is a bug.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator, Sequence
from typing import Any, Final, NoReturn, TypeAlias, TypeVar

import attrs

from .._errors import (
    InternalError,
    InvalidRequest,
    LimitExceeded,
    LocalProtocolError,
    MethodNotFound,
    ParseError,
    RemoteProtocolError,
    TrioctlError,
    error_class_for_reason,
)

__all__ = [
    "JSONRPC_VERSION",
    "RESERVED_METHOD_PREFIX",
    "RPC_EXTENSIONS",
    "STEP",
    "Incoming",
    "IncomingItem",
    "Invalid",
    "Notification",
    "Params",
    "Request",
    "RequestId",
    "Response",
    "ServerMessage",
    "ServerNotification",
    "encode_notification",
    "encode_request",
    "encode_responses",
    "encode_responses_steps",
    "error_from_wire",
    "error_to_wire",
    "is_reserved_method",
    "parse_request_steps",
    "parse_request_text",
    "parse_response_text",
]

STEP: Final = 1000
"""Batch elements decoded (or answers encoded) between two pauses of
:func:`parse_request_steps` and :func:`encode_responses_steps`."""

RequestId: TypeAlias = str | int | float | None
"""A request id: a string, an integer, a finite number or null."""

Params: TypeAlias = dict[str, Any] | list[Any] | None
"""Parameters: an object, an array, or ``None`` when the member is absent."""

JSONRPC_VERSION: Final = "2.0"
"""The exact value of every message's ``jsonrpc`` member."""

RESERVED_METHOD_PREFIX: Final = "rpc."
"""Method names starting with this are reserved by the specification."""

RPC_EXTENSIONS: Final = frozenset({"rpc.discover"})
"""The reserved ``rpc.`` names trioctl implements (they reach the dispatcher)."""

_RESPONSE_MEMBERS: Final = ("result", "error")
"""Members of a response: an object with one of them is not a request.
Other members a request does not define are ignored."""
_ENCODE_ERRORS: Final = (TypeError, ValueError, RecursionError)


class _Missing:
    """Marks an absent member, which differs from a member that is null."""


_MISSING: Final = _Missing()


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


# One decoder and one encoder for the whole process: json.loads/json.dumps
# with non-default arguments build a new one per call. Both use the C
# accelerators and keep no state between calls.
_DECODER: Final = json.JSONDecoder(parse_constant=_refuse_constant)
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


# -- messages -----------------------------------------------------------------------


@attrs.frozen
class Request:
    """A call that expects an answer (it has an ``id`` member)."""

    method: str
    """The procedure name."""
    params: Params
    """The parameters as sent; ``None`` when the member was absent."""
    id: RequestId
    """The id to echo in the answer (null is allowed, though discouraged)."""


@attrs.frozen
class Notification:
    """A call without an ``id``: it is run, and never answered, not even with
    an error."""

    method: str
    """The procedure name."""
    params: Params
    """The parameters as sent; ``None`` when the member was absent."""


@attrs.frozen
class Invalid:
    """Something that must be answered with an error without being run: text
    that is not JSON, a value that is not a request object, a request object
    that breaks the specification, or a request for a reserved ``rpc.`` name.

    Unlike a :class:`Notification`, it is answered even when it had no id.
    """

    id: RequestId
    """The request's id if it could be recovered, else ``None``."""
    error: TrioctlError
    """The error to answer with (:class:`~trioctl.ParseError`,
    :class:`~trioctl.InvalidRequest` or :class:`~trioctl.MethodNotFound`)."""

    def response(self) -> Response:
        """The error response to send for this item."""
        return Response(self.id, None, self.error)


IncomingItem: TypeAlias = Request | Notification | Invalid
"""One item of an :class:`Incoming` message."""


@attrs.frozen
class Incoming:
    """One text frame from a client, parsed.

    A single call has exactly one item. A batch has one item per element of
    the array, in order. Text that is not JSON and an empty array are each
    one :class:`Invalid` item with ``batch=False``: the specification answers
    those with a single error object, never an array. So is a batch over
    ``max_answers`` items (a trioctl bound, see :func:`parse_request_text`);
    a batch over ``max_batch`` but within it is one :class:`Invalid` item
    per element, with ``batch=True``.
    """

    items: tuple[IncomingItem, ...]
    """The calls, notifications and invalid entries, in the client's order."""
    batch: bool
    """Whether the answers go back as an array (see :func:`encode_responses`)."""

    @property
    def expects_reply(self) -> bool:
        """Whether anything at all will be sent back: false when every item is
        a :class:`Notification`."""
        return any(type(item) is not Notification for item in self.items)


@attrs.frozen
class Response:
    """The answer to one request: a result or an error, never both.

    The server builds these with :meth:`result` and :meth:`error`; the client
    gets them from :func:`parse_response_text`.
    """

    id: RequestId
    """The id of the request this answers (``None`` if it was unknown)."""
    value: Any = None
    """The result; meaningful only when :attr:`exc` is ``None``."""
    exc: TrioctlError | None = None
    """The error, or ``None`` for a successful result."""

    @classmethod
    def result(cls, id: RequestId, value: Any) -> Response:
        """A successful answer carrying ``value``."""
        return cls(id, value, None)

    @classmethod
    def error(cls, id: RequestId, exc: TrioctlError) -> Response:
        """An error answer carrying ``exc``."""
        return cls(id, None, exc)

    @property
    def is_error(self) -> bool:
        """Whether this is an error answer."""
        return self.exc is not None

    def unwrap(self) -> Any:
        """The result, or raise the error.

        Raises:
            TrioctlError: the error this response carries, of the class its
                ``reason`` names (for example :class:`~trioctl.NoDomain`).
        """
        exc = self.exc
        if exc is None:
            return self.value
        # This frame, which the traceback keeps, holds neither the response
        # nor the error when it leaves: no reference cycle.
        del self
        try:
            raise exc
        finally:
            del exc


@attrs.frozen
class ServerNotification:
    """A message the server pushes without being asked (such as
    ``events.event``)."""

    method: str
    """The notification's name."""
    params: Params
    """Its parameters; ``None`` when the member was absent."""


ServerMessage: TypeAlias = Response | ServerNotification
"""What :func:`parse_response_text` yields."""


def is_reserved_method(name: str) -> bool:
    """Whether ``name`` is reserved by JSON-RPC 2.0 (it starts with ``rpc.``)."""
    return name.startswith(RESERVED_METHOD_PREFIX)


# -- errors ---------------------------------------------------------------------------


def error_to_wire(exc: TrioctlError) -> dict[str, Any]:
    """The JSON-RPC error object for ``exc``.

    ``data`` holds ``reason`` first, then ``exc.data``; a ``reason`` key in
    ``exc.data`` is overwritten by the class's own reason.

    Args:
        exc: any trioctl error, including subclasses such as
            :class:`~trioctl.QmpCommandError` that travel as their registered
            parent (here ``MONITOR_ERROR``).

    Returns:
        ``{"code": ..., "message": ..., "data": {"reason": ..., ...}}``
    """
    cls = type(exc)
    data = {"reason": cls.reason, **exc.data}
    data["reason"] = cls.reason
    return {"code": cls.rpc_code, "message": exc.message, "data": data}


def error_from_wire(obj: object) -> TrioctlError:
    """Rebuild the exception an error object describes. Never raises.

    The class is the one registered for ``data.reason``
    (:func:`~trioctl._errors.error_class_for_reason`); when the reason is
    missing or unknown, the registered class with that ``code``; otherwise
    :class:`~trioctl.TrioctlError`, whose ``data`` then keeps the ``code``
    (and an unknown ``reason``) so nothing is lost. Subclasses that share a
    reason come back as the registered class: a
    :class:`~trioctl.QmpCommandError` arrives as a
    :class:`~trioctl.MonitorError` with the same message and data.

    The exception is built as ``cls(message, **data)``; if that constructor
    refuses those arguments (for example a ``data`` key named ``message``),
    it is built without calling it, with the same message and data.

    Args:
        obj: the value of a response's ``error`` member.

    Returns:
        The exception, with ``message`` and ``data`` (minus ``reason``) as
        sent. An object that is not a well-formed error object (not an
        object, ``code`` not an integer or ``message`` not a string) becomes
        a plain ``TrioctlError`` whose ``data["raw"]`` holds the value.
    """
    if not isinstance(obj, dict):
        return TrioctlError("malformed JSON-RPC error object", raw=obj)
    code = obj.get("code")
    message = obj.get("message")
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(message, str):
        return TrioctlError("malformed JSON-RPC error object", raw=obj)
    raw_data = obj.get("data", _MISSING)
    data: dict[str, Any]
    if raw_data is _MISSING:
        data = {}
    elif isinstance(raw_data, dict):
        data = dict(raw_data)
    else:
        data = {"data": raw_data}
    reason = data.get("reason")
    cls = error_class_for_reason(reason) if isinstance(reason, str) else TrioctlError
    if cls is not TrioctlError:
        del data["reason"]
    else:
        cls = _class_for_code(code)
        if cls is TrioctlError:
            data.setdefault("code", code)
    return _build_error(cls, message, data)


def _class_for_code(code: int) -> type[TrioctlError]:
    """The registered class whose ``rpc_code`` is ``code``, else TrioctlError."""
    pending: list[type[TrioctlError]] = [TrioctlError]
    while pending:
        for sub in pending.pop().__subclasses__():
            if (
                "reason" in sub.__dict__
                and sub.rpc_code == code
                and error_class_for_reason(sub.reason) is sub
            ):
                return sub
            pending.append(sub)
    return TrioctlError


def _build_error(cls: type[TrioctlError], message: str, data: dict[str, Any]) -> TrioctlError:
    try:
        exc = cls(message, **data)
    except Exception:
        # A constructor of another shape, or a data key such as "message"
        # that collides with a parameter: build the instance without it.
        exc = cls.__new__(cls)
        TrioctlError.__init__(exc, message)
    # Whatever the constructor made of them, keep what the peer sent.
    exc.message = message
    exc.args = (message,)
    exc.data = data
    return exc


# -- shared helpers -------------------------------------------------------------------


class _BadJson(Exception):
    """Internal: the text is not JSON; the message says why."""


def _loads(text: str | bytes) -> Any:
    """Decode one JSON value, raising only :class:`_BadJson`."""
    try:
        if not isinstance(text, str):
            text = text.decode("utf-8")
        return _DECODER.decode(text)
    except RecursionError:
        raise _BadJson("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise _BadJson(f"text is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # JSONDecodeError, NaN, too many digits
        raise _BadJson(f"invalid JSON: {exc}") from None


def _valid_id(value: object) -> bool:
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _short(text: str, limit: int = 60) -> str:
    """``repr(text)``, cut to about ``limit`` characters for error messages."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# -- server side ----------------------------------------------------------------------


def parse_request_text(
    text: str | bytes,
    *,
    max_size: int | None = None,
    max_batch: int | None = None,
    max_answers: int | None = None,
) -> Incoming:
    """Parse one message from a client: a call, a notification or a batch.

    The whole message at once; :func:`parse_request_steps` is the same
    parse in pauses, for a large batch.

    Never raises for any ``str`` or ``bytes``: everything the client got
    wrong becomes an :class:`Invalid` item carrying the error to answer.

    Args:
        text: the frame, as text or as UTF-8 bytes.
        max_size: if given, longer text (characters for ``str``, bytes for
            ``bytes``) is one Invalid Request, and is not decoded.
        max_batch: if given, none of the items of a larger batch is run:
            each is an :class:`Invalid` item (``LIMIT_EXCEEDED``) with the
            element's id, or null if it has none or is not an object.
        max_answers: if given, a batch over ``max_batch`` of more than this
            many items is one Invalid Request (a single error object), and
            decoding stops at item ``max_answers + 1``: the answers stay
            bounded whatever the batch holds.

    Returns:
        The parsed message; see :class:`Incoming`.
    """
    return _finish(
        parse_request_steps(text, max_size=max_size, max_batch=max_batch, max_answers=max_answers)
    )


def parse_request_steps(
    text: str | bytes,
    *,
    max_size: int | None = None,
    max_batch: int | None = None,
    max_answers: int | None = None,
) -> Generator[None, None, Incoming]:
    """:func:`parse_request_text` as a generator that pauses (yields None)
    after every :data:`STEP` elements of a batch and returns the
    :class:`Incoming`: the caller lets others run at each pause (a server's
    event loop), so a batch of tens of thousands of elements never holds it
    for more than :data:`STEP` of them."""
    if max_size is not None and len(text) > max_size:
        return _single_invalid(
            LimitExceeded(
                f"message of {len(text)} exceeds the limit of {max_size}",
                limit="max_message_size",
                size=len(text),
                max_size=max_size,
            )
        )
    if max_batch is not None:
        try:
            if not isinstance(text, str):
                text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _single_invalid(
                ParseError(f"text is not valid UTF-8 ({exc.reason} at byte {exc.start})")
            )
        start = _skip_ws(text, 0)
        if start < len(text) and text[start] == "[":
            return (yield from _parse_batch(text, start, max_batch, max_answers))
    try:
        obj = _loads(text)
    except _BadJson as exc:
        return _single_invalid(ParseError(str(exc)))
    if isinstance(obj, list):
        if not obj:
            return _single_invalid(InvalidRequest("empty batch"))
        return Incoming(tuple([_parse_item(element) for element in obj]), True)
    return Incoming((_parse_item(obj),), False)


_WS: Final = frozenset(" \t\n\r")


def _skip_ws(text: str, index: int) -> int:
    end = len(text)
    while index < end and text[index] in _WS:
        index += 1
    return index


T = TypeVar("T")


def _finish(steps: Generator[None, None, T]) -> T:
    """Run a generator of pauses to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result: T = stop.value
            return result


def _parse_batch(
    text: str, start: int, max_batch: int, max_answers: int | None
) -> Generator[None, None, Incoming]:
    """Decode a batch one element at a time.

    ``text[start]`` is ``[``. Within ``max_batch`` elements the result is the
    same as decoding the whole array. Past ``max_batch``, nothing is run: the
    rest is decoded only to find each element's id, and every element is
    answered with the same ``LIMIT_EXCEEDED`` error (see
    :func:`parse_request_text`); past ``max_answers`` elements decoding stops
    and the batch gets one error object instead.
    """
    elements: list[Any] = []
    ids: list[RequestId] = []
    over = False
    count = 0
    index = _skip_ws(text, start + 1)
    try:
        if index < len(text) and text[index] == "]":
            if _skip_ws(text, index + 1) != len(text):
                raise _BadJson("invalid JSON: extra data after the batch")
            return _single_invalid(InvalidRequest("empty batch"))
        while True:
            try:
                element, index = _DECODER.raw_decode(text, index)
            except RecursionError:
                raise _BadJson("JSON nested too deeply") from None
            except ValueError as exc:
                raise _BadJson(f"invalid JSON: {exc}") from None
            count += 1
            if not count % STEP:
                yield
            if over:
                ids.append(_id_of(element))
            else:
                elements.append(element)
                if len(elements) > max_batch:
                    over = True
                    ids = [_id_of(e) for e in elements]
                    elements = []
            del element
            if over and max_answers is not None and len(ids) > max_answers:
                return _single_invalid(_batch_limit(max_batch, answered=False))
            index = _skip_ws(text, index)
            if index < len(text) and text[index] == ",":
                index = _skip_ws(text, index + 1)
                continue
            if index < len(text) and text[index] == "]":
                if _skip_ws(text, index + 1) != len(text):
                    raise _BadJson("invalid JSON: extra data after the batch")
                break
            raise _BadJson(f"invalid JSON: expected ',' or ']' at char {index}")
    except _BadJson as exc:
        return _single_invalid(ParseError(str(exc)))
    items: list[IncomingItem] = []
    if over:
        error = _batch_limit(max_batch, answered=True)
        for id_ in ids:
            items.append(Invalid(id_, error))
            if not len(items) % STEP:
                yield
        return Incoming(tuple(items), True)
    for element in elements:
        items.append(_parse_item(element))
        if not len(items) % STEP:
            yield
    return Incoming(tuple(items), True)


def _id_of(element: object) -> RequestId:
    """The id to answer an element of an oversized batch with: its ``id`` if
    it is an object with a valid one, else null."""
    if isinstance(element, dict):
        value = element.get("id")
        if _valid_id(value):
            return value
    return None


def _batch_limit(max_batch: int, *, answered: bool) -> LimitExceeded:
    if answered:
        message = f"batch of more than {max_batch} items: none of them was run"
    else:
        message = f"batch of more than {max_batch} items, too many to answer one by one"
    return LimitExceeded(message, limit="max_batch", max_batch=max_batch)


def _single_invalid(error: TrioctlError) -> Incoming:
    return Incoming((Invalid(None, error),), False)


def _parse_item(obj: object) -> IncomingItem:
    """One request object (or whatever stands in its place) to an item."""
    if not isinstance(obj, dict):
        return Invalid(
            None, InvalidRequest(f"a request must be a JSON object, not {_json_type(obj)}")
        )
    raw_id = obj.get("id", _MISSING)
    has_id = raw_id is not _MISSING
    id_ok = has_id and _valid_id(raw_id)
    reply_id: RequestId = raw_id if id_ok else None
    if obj.get("jsonrpc") != JSONRPC_VERSION:
        return Invalid(reply_id, InvalidRequest('"jsonrpc" must be exactly "2.0"'))
    method = obj.get("method")
    if not isinstance(method, str):
        return Invalid(reply_id, InvalidRequest('"method" must be a string'))
    params = obj.get("params", _MISSING)
    if params is _MISSING:
        params = None
    elif not isinstance(params, dict | list):
        return Invalid(reply_id, InvalidRequest('"params" must be an object or an array'))
    if has_id and not id_ok:
        return Invalid(None, InvalidRequest('"id" must be a string, a finite number or null'))
    for member in _RESPONSE_MEMBERS:
        if member in obj:
            return Invalid(reply_id, InvalidRequest(f'a request cannot have a "{member}" member'))
    if not has_id:
        return Notification(method, params)
    if method.startswith(RESERVED_METHOD_PREFIX) and method not in RPC_EXTENSIONS:
        return Invalid(
            reply_id,
            MethodNotFound(
                f"method names beginning with 'rpc.' are reserved: {_short(method)}",
                method=method,
            ),
        )
    return Request(method, params, reply_id)


def _response_to_wire(response: Response) -> dict[str, Any]:
    if response.exc is None:
        return {"jsonrpc": JSONRPC_VERSION, "result": response.value, "id": response.id}
    return {"jsonrpc": JSONRPC_VERSION, "error": error_to_wire(response.exc), "id": response.id}


def _encode_response(response: Response) -> str:
    """One response as text; an answer JSON cannot carry becomes an error."""
    try:
        return _ENCODER.encode(_response_to_wire(response))
    except _ENCODE_ERRORS as exc:
        problem = f"{type(exc).__name__}: {exc}"
    answer_id = response.id if _valid_id(response.id) else None
    if response.exc is None:
        error = error_to_wire(InternalError(f"the result could not be encoded as JSON ({problem})"))
    else:
        cls = type(response.exc)
        error = {
            "code": cls.rpc_code,
            "message": str(response.exc.message),
            "data": {"reason": cls.reason, "encoding_error": problem},
        }
    return _ENCODER.encode({"jsonrpc": JSONRPC_VERSION, "error": error, "id": answer_id})


def encode_responses(responses: Response | Sequence[Response] | None) -> str | None:
    """The text to send back for one message.

    Pass the single :class:`Response` (or ``None``) for an :class:`Incoming`
    with ``batch=False``, and the list of responses for a batch. A batch
    whose items were all notifications has no responses, and the
    specification says nothing is sent then: the result is ``None``.

    A response whose result (or error data) JSON cannot carry, such as a
    ``set``, ``NaN`` or a circular structure, is sent as an error instead
    (``-32603`` for a result; the same error without its extra data for an
    error), so one bad answer never loses the rest of a batch.

    Args:
        responses: one response, a sequence of them, or ``None``.

    Returns:
        Compact JSON text (an object for one response, an array for a
        sequence), or ``None`` when there is nothing to send.
    """
    if responses is None:
        return None
    if isinstance(responses, Response):
        return _encode_response(responses)
    if not responses:
        return None
    shared = responses[0].exc
    if shared is not None and all(r.exc is shared for r in responses):
        # One error for every item (a batch over max_batch): encode it once.
        try:
            error = _ENCODER.encode(error_to_wire(shared))
        except _ENCODE_ERRORS:
            pass
        else:
            head = f'{{"jsonrpc":"{JSONRPC_VERSION}","error":{error},"id":'
            return "[" + ",".join([f"{head}{_ENCODER.encode(r.id)}}}" for r in responses]) + "]"
    try:
        return _ENCODER.encode([_response_to_wire(response) for response in responses])
    except _ENCODE_ERRORS:
        return "[" + ",".join([_encode_response(response) for response in responses]) + "]"


def encode_responses_steps(
    responses: Sequence[Response], step: int = STEP
) -> Generator[None, None, str | None]:
    """:func:`encode_responses` of a batch's responses as a generator that
    pauses (yields None) after every ``step`` of them; the same text."""
    if len(responses) <= step:
        return encode_responses(responses)
    parts: list[str] = []
    for at in range(0, len(responses), step):
        text = encode_responses(responses[at : at + step])
        assert text is not None  # a non-empty sequence
        parts.append(text[1:-1])
        yield
    return "[" + ",".join(parts) + "]"


# -- client side ----------------------------------------------------------------------


def _call_to_wire(method: str, params: Params) -> dict[str, Any]:
    if not isinstance(method, str):
        raise LocalProtocolError(f"method must be a string, not {type(method).__name__}")
    message: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "method": method}
    if params is not None:
        if not isinstance(params, dict | list):
            raise LocalProtocolError(
                f"params must be a dict, a list or None, not {type(params).__name__}"
            )
        message["params"] = params
    return message


def _encode_local(message: dict[str, Any]) -> str:
    try:
        return _ENCODER.encode(message)
    except _ENCODE_ERRORS as exc:
        raise LocalProtocolError(f"cannot encode as JSON: {type(exc).__name__}: {exc}") from exc


def encode_request(method: str, params: Params, id: RequestId) -> str:
    """The text of one call that expects an answer.

    Args:
        method: the procedure name.
        params: a dict or a list, or ``None`` to leave the member out.
        id: the request id (a string, an integer, a finite float or None).

    Returns:
        Compact JSON text.

    Raises:
        LocalProtocolError: an argument has the wrong type, or ``params``
            holds something JSON cannot carry (a set, NaN, a cycle...).
    """
    message = _call_to_wire(method, params)
    if not _valid_id(id):
        raise LocalProtocolError(f"id must be a string, a number or None, not {id!r}")
    message["id"] = id
    return _encode_local(message)


def encode_notification(method: str, params: Params = None) -> str:
    """The text of one notification (a call without an answer).

    The client uses it for fire-and-forget calls; the server uses it to push
    notifications such as ``events.event``.

    Args:
        method: the procedure or notification name.
        params: a dict or a list, or ``None`` to leave the member out.

    Returns:
        Compact JSON text.

    Raises:
        LocalProtocolError: an argument has the wrong type, or ``params``
            holds something JSON cannot carry.
    """
    return _encode_local(_call_to_wire(method, params))


def parse_response_text(
    text: str | bytes, *, max_size: int | None = None
) -> list[Response | ServerNotification]:
    """Parse one message from the server.

    An object is one response or one pushed notification; an array is the
    answer to a batch, and holds responses only.

    Args:
        text: the frame, as text or as UTF-8 bytes.
        max_size: if given, longer text (characters for ``str``, bytes for
            ``bytes``) is refused without being decoded.

    Returns:
        The messages, in the server's order. Error responses carry the
        rebuilt exception (see :func:`error_from_wire`) in ``exc``.

    Raises:
        RemoteProtocolError: the text is over ``max_size``, is not JSON, or
            is not a JSON-RPC 2.0 response, batch response or notification.
            Nothing else is raised.
    """
    if max_size is not None and len(text) > max_size:
        raise RemoteProtocolError(
            f"message of {len(text)} exceeds the limit of {max_size}",
            size=len(text),
            max_size=max_size,
        )
    try:
        obj = _loads(text)
    except _BadJson as exc:
        raise RemoteProtocolError(str(exc)) from None
    if isinstance(obj, dict):
        if "method" in obj:
            return [_parse_server_notification(obj)]
        return [_parse_response(obj)]
    if isinstance(obj, list):
        if not obj:
            raise RemoteProtocolError("empty batch response")
        return [_parse_response(element) for element in obj]
    raise RemoteProtocolError(f"a message must be a JSON object or array, not {_json_type(obj)}")


def _parse_server_notification(obj: dict[str, Any]) -> ServerNotification:
    if obj.get("jsonrpc") != JSONRPC_VERSION:
        raise RemoteProtocolError('"jsonrpc" must be exactly "2.0"')
    method = obj["method"]
    if not isinstance(method, str):
        raise RemoteProtocolError('"method" must be a string')
    if "id" in obj:
        raise RemoteProtocolError("the server sent a request; trioctl clients serve none")
    if "result" in obj or "error" in obj:
        raise RemoteProtocolError('a message cannot have both "method" and "result"/"error"')
    params = obj.get("params", _MISSING)
    if params is _MISSING:
        params = None
    elif not isinstance(params, dict | list):
        raise RemoteProtocolError('"params" must be an object or an array')
    return ServerNotification(method, params)


def _parse_response(obj: object) -> Response:
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"a response must be a JSON object, not {_json_type(obj)}")
    if obj.get("jsonrpc") != JSONRPC_VERSION:
        raise RemoteProtocolError('"jsonrpc" must be exactly "2.0"')
    if "method" in obj:
        raise RemoteProtocolError('a response cannot have a "method" member')
    response_id = obj.get("id", _MISSING)
    if response_id is _MISSING:
        raise RemoteProtocolError('a response must have an "id" member')
    if not _valid_id(response_id):
        raise RemoteProtocolError('"id" must be a string, a finite number or null')
    has_result = "result" in obj
    error = obj.get("error", _MISSING)
    if error is _MISSING:
        if not has_result:
            raise RemoteProtocolError('a response must have "result" or "error"')
        return Response(response_id, obj["result"], None)
    if has_result:
        raise RemoteProtocolError('a response cannot have both "result" and "error"')
    if not isinstance(error, dict):
        raise RemoteProtocolError('"error" must be an object')
    code = error.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        raise RemoteProtocolError('"error.code" must be an integer')
    if not isinstance(error.get("message"), str):
        raise RemoteProtocolError('"error.message" must be a string')
    return Response(response_id, None, error_from_wire(error))
