"""The sans-I/O JSON-RPC 2.0 core: plain synchronous tests, no I/O.

The spec examples (https://www.jsonrpc.org/specification, section 7) run
through a small in-test dispatcher so the whole loop is exercised: text in,
items, answers, text out, and the client parsing that text back.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

import trioctl._sansio
from trioctl import (
    ConnectionLost,
    InternalError,
    InvalidRequest,
    LimitExceeded,
    LocalProtocolError,
    MethodNotFound,
    MonitorError,
    NoDomain,
    ParseError,
    QmpCommandError,
    RemoteProtocolError,
    TrioctlError,
)
from trioctl._errors import _BY_REASON, error_class_for_reason
from trioctl._sansio.rpc import (
    Incoming,
    Invalid,
    Notification,
    Request,
    Response,
    ServerNotification,
    encode_notification,
    encode_request,
    encode_responses,
    error_from_wire,
    error_to_wire,
    is_reserved_method,
    parse_request_text,
    parse_response_text,
)

# -- helpers --------------------------------------------------------------------------


def spec_handler(method: str, params: Any) -> Any:
    """The procedures of the specification's examples."""
    if method == "subtract":
        if isinstance(params, list):
            return params[0] - params[1]
        return params["minuend"] - params["subtrahend"]
    if method == "sum":
        return sum(params)
    if method == "get_data":
        return ["hello", 5]
    raise MethodNotFound(f"no method {method!r}", method=method)


def serve(text: str | bytes, **limits: int) -> tuple[Incoming, str | None]:
    """Parse, dispatch the way the server will, and encode the reply."""
    incoming = parse_request_text(text, **limits)
    answers: list[Response] = []
    for item in incoming.items:
        if isinstance(item, Invalid):
            answers.append(item.response())
        elif isinstance(item, Request):
            try:
                answers.append(Response.result(item.id, spec_handler(item.method, item.params)))
            except TrioctlError as exc:
                answers.append(Response.error(item.id, exc))
        else:
            with contextlib.suppress(TrioctlError):
                spec_handler(item.method, item.params)
    if incoming.batch:
        return incoming, encode_responses(answers)
    assert len(answers) <= 1
    return incoming, encode_responses(answers[0] if answers else None)


def shape(reply: str) -> Any:
    """The reply with each error reduced to its code: what the spec fixes."""

    def one(obj: dict[str, Any]) -> Any:
        assert obj["jsonrpc"] == "2.0"
        assert ("result" in obj) != ("error" in obj)
        if "error" in obj:
            assert set(obj["error"]) == {"code", "message", "data"}
            assert isinstance(obj["error"]["message"], str)
            return {"error": obj["error"]["code"], "id": obj["id"]}
        return {"result": obj["result"], "id": obj["id"]}

    value = json.loads(reply)
    if isinstance(value, list):
        return [one(obj) for obj in value]
    return one(value)


# -- the specification's examples -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "method", "params", "request_id", "result"),
    [
        ('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
         "subtract", [42, 23], 1, 19),
        ('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
         "subtract", [23, 42], 2, -19),
        ('{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, '
         '"id": 3}', "subtract", {"subtrahend": 23, "minuend": 42}, 3, 19),
        ('{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, '
         '"id": 4}', "subtract", {"minuend": 42, "subtrahend": 23}, 4, 19),
    ],
)  # fmt: skip
def test_spec_calls_with_params(
    text: str, method: str, params: Any, request_id: int, result: int
) -> None:
    incoming, reply = serve(text)
    assert incoming == Incoming((Request(method, params, request_id),), batch=False)
    assert reply is not None
    assert shape(reply) == {"result": result, "id": request_id}
    assert parse_response_text(reply) == [Response.result(request_id, result)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}',
         Notification("update", [1, 2, 3, 4, 5])),
        ('{"jsonrpc": "2.0", "method": "foobar"}', Notification("foobar", None)),
    ],
)  # fmt: skip
def test_spec_notifications_get_no_reply(text: str, expected: Notification) -> None:
    incoming, reply = serve(text)
    assert incoming.items == (expected,)
    assert not incoming.batch
    assert not incoming.expects_reply
    assert reply is None


def test_spec_nonexistent_method() -> None:
    incoming, reply = serve('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
    assert incoming.items == (Request("foobar", None, "1"),)
    assert reply is not None
    assert shape(reply) == {"error": -32601, "id": "1"}
    [response] = parse_response_text(reply)
    assert isinstance(response, Response)
    assert type(response.exc) is MethodNotFound
    assert response.exc.data == {"method": "foobar"}


def test_spec_invalid_json() -> None:
    incoming, reply = serve('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    [item] = incoming.items
    assert isinstance(item, Invalid)
    assert type(item.error) is ParseError
    assert reply is not None
    assert shape(reply) == {"error": -32700, "id": None}
    assert json.loads(reply)["error"]["data"] == {"reason": "PARSE_ERROR"}


def test_spec_invalid_request_object() -> None:
    # No id, yet answered: it is not a notification, it is not a request at all.
    incoming, reply = serve('{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    [item] = incoming.items
    assert isinstance(item, Invalid)
    assert type(item.error) is InvalidRequest
    assert item.id is None
    assert reply is not None
    assert shape(reply) == {"error": -32600, "id": None}


def test_spec_batch_invalid_json() -> None:
    text = """[
      {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
      {"jsonrpc": "2.0", "method"
    ]"""
    incoming, reply = serve(text)
    assert not incoming.batch
    [item] = incoming.items
    assert isinstance(item, Invalid)
    assert type(item.error) is ParseError
    assert reply is not None
    assert shape(reply) == {"error": -32700, "id": None}  # one object, not an array


def test_spec_empty_array() -> None:
    incoming, reply = serve("[]")
    assert not incoming.batch
    [item] = incoming.items
    assert isinstance(item, Invalid)
    assert type(item.error) is InvalidRequest
    assert reply is not None
    assert shape(reply) == {"error": -32600, "id": None}


@pytest.mark.parametrize("text", ["[1]", "[1,2,3]"])
def test_spec_invalid_batch(text: str) -> None:
    count = len(json.loads(text))
    incoming, reply = serve(text)
    assert incoming.batch
    assert len(incoming.items) == count
    assert all(isinstance(item, Invalid) and item.id is None for item in incoming.items)
    assert reply is not None
    assert shape(reply) == [{"error": -32600, "id": None}] * count


def test_spec_mixed_batch() -> None:
    text = """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"""
    incoming, reply = serve(text)
    assert incoming.batch
    items = incoming.items
    assert items[0] == Request("sum", [1, 2, 4], "1")
    assert items[1] == Notification("notify_hello", [7])
    assert items[2] == Request("subtract", [42, 23], "2")
    assert isinstance(items[3], Invalid)
    assert type(items[3].error) is InvalidRequest
    assert items[4] == Request("foo.get", {"name": "myself"}, "5")
    assert items[5] == Request("get_data", None, "9")
    assert reply is not None
    assert shape(reply) == [
        {"result": 7, "id": "1"},
        {"result": 19, "id": "2"},
        {"error": -32600, "id": None},
        {"error": -32601, "id": "5"},
        {"result": ["hello", 5], "id": "9"},
    ]
    parsed = parse_response_text(reply)
    assert [type(r.exc) if isinstance(r, Response) else None for r in parsed] == [
        type(None),
        type(None),
        InvalidRequest,
        MethodNotFound,
        type(None),
    ]


def test_spec_batch_of_notifications_gets_nothing() -> None:
    text = """[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]"""
    incoming, reply = serve(text)
    assert incoming.batch
    assert incoming.items == (
        Notification("notify_sum", [1, 2, 4]),
        Notification("notify_hello", [7]),
    )
    assert not incoming.expects_reply
    assert reply is None


# -- server side: details -------------------------------------------------------------


def one_item(text: str | bytes, **limits: int) -> Any:
    incoming = parse_request_text(text, **limits)
    assert not incoming.batch
    [item] = incoming.items
    return item


def test_batch_of_one_is_answered_with_an_array() -> None:
    _, reply = serve('[{"jsonrpc":"2.0","method":"sum","params":[1],"id":7}]')
    assert reply == '[{"jsonrpc":"2.0","result":1,"id":7}]'


@pytest.mark.parametrize(
    "bad_id", ["true", "false", "[]", "[1]", "{}", '{"a":1}', "1e400", "-1e400"]
)
def test_request_with_invalid_id_is_answered_with_null_id(bad_id: str) -> None:
    item = one_item('{"jsonrpc":"2.0","method":"sum","id":' + bad_id + "}")
    assert isinstance(item, Invalid)
    assert type(item.error) is InvalidRequest
    assert item.id is None
    assert json.loads(encode_responses(item.response()) or "")["id"] is None


@pytest.mark.parametrize(
    ("raw", "expected"), [('"x"', "x"), ("0", 0), ("-12", -12), ("null", None), ("2.5", 2.5)]
)
def test_valid_ids_are_kept_with_their_type(raw: str, expected: Any) -> None:
    item = one_item('{"jsonrpc":"2.0","method":"m","id":' + raw + "}")
    assert item == Request("m", None, expected)
    assert type(item.id) is type(expected)


def test_invalid_request_keeps_a_valid_id() -> None:
    item = one_item('{"jsonrpc":"1.0","method":"m","id":"abc"}')
    assert isinstance(item, Invalid)
    assert item.id == "abc"
    assert type(item.error) is InvalidRequest


@pytest.mark.parametrize(
    "text",
    [
        '{"method":"m","id":1}',  # no jsonrpc
        '{"jsonrpc":2.0,"method":"m","id":1}',  # a number, not "2.0"
        '{"jsonrpc":"2.0 ","method":"m","id":1}',
        '{"jsonrpc":"2.0","id":1}',  # no method
        '{"jsonrpc":"2.0","method":null,"id":1}',
        '{"jsonrpc":"2.0","method":["m"],"id":1}',
        '{"jsonrpc":"2.0","method":"m","params":null,"id":1}',
        '{"jsonrpc":"2.0","method":"m","params":"bar","id":1}',
        '{"jsonrpc":"2.0","method":"m","params":3,"id":1}',
        '{"jsonrpc":"2.0","method":"m","id":1,"result":1}',
        '{"jsonrpc":"2.0","method":"m","id":1,"error":null}',
    ],
)
def test_invalid_request_objects(text: str) -> None:
    item = one_item(text)
    assert isinstance(item, Invalid)
    assert type(item.error) is InvalidRequest
    assert item.id == 1


def test_unknown_members_are_ignored() -> None:
    """JSON-RPC 2.0 does not forbid members it does not define."""
    item = one_item('{"jsonrpc":"2.0","method":"m","param":{},"zz":1,"id":3}')
    assert item == Request("m", None, 3)
    many = {f"k{i}": i for i in range(20)} | {"jsonrpc": "2.0", "method": "m"}
    assert one_item(json.dumps(many)) == Notification("m", None)


def test_duplicate_keys_last_wins() -> None:
    item = one_item('{"jsonrpc":"2.0","method":"a","method":"b","id":1,"id":2}')
    assert item == Request("b", None, 2)


@pytest.mark.parametrize("text", ["1", '"x"', "null", "true", "3.5"])
def test_a_json_value_that_is_not_an_object(text: str) -> None:
    item = one_item(text)
    assert isinstance(item, Invalid)
    assert type(item.error) is InvalidRequest
    assert item.id is None


def test_array_params_are_parsed_for_the_dispatcher_to_refuse() -> None:
    assert one_item('{"jsonrpc":"2.0","method":"domain.start","params":["vm1"],"id":1}') == (
        Request("domain.start", ["vm1"], 1)
    )


def test_reserved_rpc_names() -> None:
    assert is_reserved_method("rpc.discover")
    assert not is_reserved_method("rpcx.discover")
    assert not is_reserved_method("domain.rpc.x")
    item = one_item('{"jsonrpc":"2.0","method":"rpc.other","id":4}')
    assert isinstance(item, Invalid)
    assert item.id == 4
    assert type(item.error) is MethodNotFound
    assert item.error.data == {"method": "rpc.other"}
    # The one extension trioctl implements reaches the dispatcher.
    assert one_item('{"jsonrpc":"2.0","method":"rpc.discover","id":4}') == Request(
        "rpc.discover", None, 4
    )
    # A notification is never answered, reserved name or not.
    assert one_item('{"jsonrpc":"2.0","method":"rpc.discover"}') == Notification(
        "rpc.discover", None
    )
    # Only the exact prefix is reserved.
    assert one_item('{"jsonrpc":"2.0","method":"rpcdiscover","id":4}') == Request(
        "rpcdiscover", None, 4
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "NaN",
        '{"jsonrpc":"2.0","method":"m","params":[Infinity],"id":1}',
        '{"jsonrpc":"2.0","method":"m","params":[-Infinity],"id":1}',
        "\ufeff{}",  # a byte order mark is not JSON
        "{} {}",
        "{'a': 1}",
        '{"a":"\x01"}',  # a raw control character inside a string
        "1" * 5000,  # more digits than Python converts
    ],
)
def test_parse_errors(text: str) -> None:
    item = one_item(text)
    assert isinstance(item, Invalid)
    assert type(item.error) is ParseError
    assert item.id is None


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_deep_nesting_is_a_parse_error(depth: int) -> None:
    item = one_item("[" * depth + "]" * depth)
    assert isinstance(item, Invalid)
    assert type(item.error) is ParseError
    params = '{"a":' * depth + "1" + "}" * depth
    item = one_item('{"jsonrpc":"2.0","method":"m","id":1,"params":' + params + "}")
    assert isinstance(item, Invalid)
    assert type(item.error) is ParseError


def test_bytes_must_be_utf8() -> None:
    text = '{"jsonrpc":"2.0","method":"caf\u00e9","id":1}'
    assert one_item(text.encode()) == Request("caf\u00e9", None, 1)
    for bad in [b"\xff", text.encode("latin-1"), text.encode("utf-16"), b'"\xed\xa0\x80"']:
        item = one_item(bad)
        assert isinstance(item, Invalid)
        assert type(item.error) is ParseError


def test_max_size() -> None:
    text = '{"jsonrpc":"2.0","method":"m","id":1}'
    assert one_item(text, max_size=len(text)) == Request("m", None, 1)
    assert one_item(text.encode(), max_size=len(text)) == Request("m", None, 1)
    overs: list[str | bytes] = [text, text.encode()]
    for over in overs:
        item = one_item(over, max_size=len(text) - 1)
        assert isinstance(item, Invalid)
        assert type(item.error) is LimitExceeded
        assert item.error.data == {
            "limit": "max_message_size",
            "size": len(text),
            "max_size": len(text) - 1,
        }
    # Checked before decoding: an over-long text is not even JSON-parsed.
    item = one_item("{" * 100, max_size=10)
    assert type(item.error) is LimitExceeded


def test_max_batch() -> None:
    call = '{"jsonrpc":"2.0","method":"m","id":1}'
    incoming = parse_request_text(f"[{call},{call}]", max_batch=2)
    assert incoming.batch
    assert len(incoming.items) == 2
    # Over the limit: still an array (JSON-RPC 2.0 section 6), one error per
    # item with the item's id (null without one or for a non-object), nothing run.
    note = '{"jsonrpc":"2.0","method":"m"}'
    incoming = parse_request_text(f'[{call},{note},7,{{"id":"x"}},{{"id":[1]}}]', max_batch=2)
    assert incoming.batch
    invalid = [item for item in incoming.items if isinstance(item, Invalid)]
    assert [item.id for item in invalid] == [1, None, None, "x", None]
    for item in invalid:
        assert type(item.error) is LimitExceeded
        assert isinstance(item.error, InvalidRequest)
        assert item.error.rpc_code == -32600
        assert item.error.data == {"limit": "max_batch", "max_batch": 2}
    text = encode_responses([item.response() for item in invalid])
    assert text is not None
    assert [answer["id"] for answer in json.loads(text)] == [1, None, None, "x", None]
    # Text after the limit that is not JSON: a parse error, one object.
    item = one_item(f"[{call},{call},{call}, this is not json", max_batch=2)
    assert type(item.error) is ParseError
    # More items than max_answers: one object, and decoding stops there.
    item = one_item(f"[{call},{call},{call},{call}, this is not json", max_batch=2, max_answers=3)
    assert type(item.error) is LimitExceeded
    # Within the limit, the bounded decoder agrees with the plain one.
    for text in (f" [ {call} , {call} ] ", "[]", "[1,]", "[1 2]", "[1]x", "[", "[NaN]"):
        bounded = parse_request_text(text, max_batch=5)
        plain = parse_request_text(text)
        assert bounded.batch == plain.batch
        assert [type(i) for i in bounded.items] == [type(i) for i in plain.items]
        assert [type(getattr(i, "error", None)) for i in bounded.items] == [
            type(getattr(i, "error", None)) for i in plain.items
        ]


def test_oversized_batch_is_cheap() -> None:
    call = '{"jsonrpc":"2.0","method":"m","id":1}'
    huge = "[" + ",".join([call] * 200_000) + "]"
    item = one_item(huge, max_batch=100, max_answers=1000)
    assert type(item.error) is LimitExceeded


def test_shared_error_encoding_matches_the_plain_encoder() -> None:
    """The fast path for a batch over max_batch writes what json would."""
    call = '{"jsonrpc":"2.0","method":"m","id":%s}'
    ids = ['"a\\u00e9"', "1", "2.5", "null", '"\\ud800"']
    incoming = parse_request_text("[" + ",".join(call % i for i in ids) + "]", max_batch=1)
    responses = [item.response() for item in incoming.items if isinstance(item, Invalid)]
    assert len(responses) == len(ids)
    fast = encode_responses(responses)
    plain = "[" + ",".join(encode_responses(r) or "" for r in responses) + "]"
    assert fast == plain


@given(st.text(alphabet='[]{},:" 0123456789abtrufalsen\\', max_size=40))
def test_bounded_batch_decoder_matches_plain(text: str) -> None:
    bounded = parse_request_text(text, max_batch=1000)
    plain = parse_request_text(text)
    assert bounded == plain or (
        # Both refuse it; the messages of the two decoders may differ.
        len(bounded.items) == len(plain.items) == 1
        and isinstance(bounded.items[0], Invalid)
        and isinstance(plain.items[0], Invalid)
        and type(bounded.items[0].error) is type(plain.items[0].error)
    )


def test_a_lone_surrogate_is_parsed_and_sent_back_as_ascii() -> None:
    item = one_item('{"jsonrpc":"2.0","method":"m","params":["\\ud800"],"id":"\\udfff"}')
    assert item == Request("m", ["\ud800"], "\udfff")
    reply = encode_responses(Response.result(item.id, item.params))
    assert reply is not None
    assert reply.isascii()
    reply.encode("utf-8")  # a WebSocket text frame can carry it
    assert parse_response_text(reply) == [Response.result("\udfff", ["\ud800"])]


# -- server side: encoding answers ----------------------------------------------------


def test_encode_responses_nothing_to_send() -> None:
    assert encode_responses(None) is None
    assert encode_responses([]) is None
    assert encode_responses(()) is None


def test_encode_responses_is_compact() -> None:
    reply = encode_responses(Response.result(1, {"a": [1, 2], "b": None}))
    assert reply == '{"jsonrpc":"2.0","result":{"a":[1,2],"b":null},"id":1}'
    reply = encode_responses(Response.error("x", NoDomain("no domain 'vm1'", name="vm1")))
    assert reply == (
        '{"jsonrpc":"2.0","error":{"code":-32001,"message":"no domain \'vm1\'",'
        '"data":{"reason":"NO_DOMAIN","name":"vm1"}},"id":"x"}'
    )


@pytest.mark.parametrize("bad", [{1, 2}, math.nan, math.inf, object(), b"bytes"])
def test_an_unencodable_result_becomes_an_internal_error(bad: object) -> None:
    responses = [Response.result(1, "ok"), Response.result(2, [bad]), Response.result(3, 3)]
    reply = encode_responses(responses)
    assert reply is not None
    assert shape(reply) == [
        {"result": "ok", "id": 1},
        {"error": -32603, "id": 2},
        {"result": 3, "id": 3},
    ]
    [response] = parse_response_text(encode_responses(responses[1]) or "")
    assert isinstance(response, Response)
    assert type(response.exc) is InternalError


def test_circular_and_too_deep_results_become_internal_errors() -> None:
    loop: list[Any] = []
    loop.append(loop)
    deep: list[Any] = []
    for _ in range(200_000):
        deep = [deep]
    reply = encode_responses([Response.result(1, loop), Response.result(2, deep)])
    assert reply is not None
    assert shape(reply) == [{"error": -32603, "id": 1}, {"error": -32603, "id": 2}]


def test_an_error_with_unencodable_data_keeps_class_and_message() -> None:
    reply = encode_responses(Response.error(5, NoDomain("gone", what={1})))
    assert reply is not None
    [response] = parse_response_text(reply)
    assert isinstance(response, Response)
    assert response.id == 5
    assert type(response.exc) is NoDomain
    assert response.exc.message == "gone"
    assert "what" not in response.exc.data
    assert "encoding_error" in response.exc.data


def test_response_unwrap() -> None:
    assert Response.result(1, [1]).unwrap() == [1]
    assert not Response.result(1, None).is_error
    exc = NoDomain("nope")
    response = Response.error(1, exc)
    assert response.is_error
    with pytest.raises(NoDomain, match="nope"):
        response.unwrap()


def test_response_unwrap_leaves_no_reference_cycle() -> None:
    """Raising the error from the frame that holds the response would make a
    cycle (response, error, traceback, frame): freed only by the collector."""

    def fail_once() -> None:
        try:
            Response.error(1, NoDomain("nope")).unwrap()
        except NoDomain:
            pass

    fail_once()
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            fail_once()
        assert gc.collect() == 0
    finally:
        gc.enable()


# -- client side ----------------------------------------------------------------------


def test_encode_request_and_notification() -> None:
    assert encode_request("domain.start", {"name": "vm1"}, 1) == (
        '{"jsonrpc":"2.0","method":"domain.start","params":{"name":"vm1"},"id":1}'
    )
    assert encode_request("connect.get_version", None, "a") == (
        '{"jsonrpc":"2.0","method":"connect.get_version","id":"a"}'
    )
    assert encode_request("m", [], None) == '{"jsonrpc":"2.0","method":"m","params":[],"id":null}'
    assert encode_notification("events.event", {"domain": "vm1"}) == (
        '{"jsonrpc":"2.0","method":"events.event","params":{"domain":"vm1"}}'
    )
    assert encode_notification("ping") == '{"jsonrpc":"2.0","method":"ping"}'


@pytest.mark.parametrize(
    ("method", "params", "request_id"),
    [
        (1, None, 1),
        ("m", "params", 1),
        ("m", ("tuple",), 1),
        ("m", None, True),
        ("m", None, math.nan),
        ("m", None, [1]),
        ("m", {"x": {1, 2}}, 1),
        ("m", {"x": math.inf}, 1),
    ],
)
def test_encode_request_refuses_bad_arguments(method: Any, params: Any, request_id: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(method, params, request_id)


def test_encode_notification_refuses_unencodable_params() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(LocalProtocolError):
        encode_notification("m", loop)


def test_parse_server_notification() -> None:
    text = '{"jsonrpc":"2.0","method":"events.event","params":{"domain":"vm1","kind":"stop"}}'
    assert parse_response_text(text) == [
        ServerNotification("events.event", {"domain": "vm1", "kind": "stop"})
    ]
    assert parse_response_text(b'{"jsonrpc":"2.0","method":"tick"}') == [
        ServerNotification("tick", None)
    ]


def test_parse_response_ignores_unknown_members() -> None:
    text = '{"jsonrpc":"2.0","result":1,"id":1,"server_time":3}'
    assert parse_response_text(text) == [Response.result(1, 1)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "NaN",
        "[" * 100_000,
        "1",
        "[]",
        "[1]",
        "null",
        '{"result":1,"id":1}',  # no jsonrpc
        '{"jsonrpc":"1.0","result":1,"id":1}',
        '{"jsonrpc":"2.0","result":1}',  # no id
        '{"jsonrpc":"2.0","result":1,"id":true}',
        '{"jsonrpc":"2.0","result":1,"id":{}}',
        '{"jsonrpc":"2.0","id":1}',  # neither result nor error
        '{"jsonrpc":"2.0","result":1,"error":{"code":1,"message":"m"},"id":1}',
        '{"jsonrpc":"2.0","error":"oops","id":1}',
        '{"jsonrpc":"2.0","error":{"message":"m"},"id":1}',
        '{"jsonrpc":"2.0","error":{"code":true,"message":"m"},"id":1}',
        '{"jsonrpc":"2.0","error":{"code":1.5,"message":"m"},"id":1}',
        '{"jsonrpc":"2.0","error":{"code":1},"id":1}',
        '{"jsonrpc":"2.0","error":{"code":1,"message":2},"id":1}',
        '{"jsonrpc":"2.0","method":1}',
        '{"jsonrpc":"2.0","method":"m","params":null}',
        '{"jsonrpc":"2.0","method":"m","params":"x"}',
        '{"jsonrpc":"2.0","method":"m","id":1}',  # a request from the server
        '{"jsonrpc":"2.0","method":"m","result":1}',
        '{"method":"m"}',
        '[{"jsonrpc":"2.0","method":"m"}]',  # a notification inside a batch response
        '[{"jsonrpc":"2.0","result":1,"id":1},2]',
    ],
)
def test_malformed_server_messages(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_response_text(text)


def test_parse_response_bad_bytes_and_size() -> None:
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        parse_response_text(b"\xff\xfe")
    text = '{"jsonrpc":"2.0","result":1,"id":1}'
    assert parse_response_text(text, max_size=len(text)) == [Response.result(1, 1)]
    with pytest.raises(RemoteProtocolError) as info:
        parse_response_text(text, max_size=len(text) - 1)
    assert info.value.data == {"size": len(text), "max_size": len(text) - 1}


# -- errors on the wire ---------------------------------------------------------------

REGISTERED = sorted(_BY_REASON.items())


def test_registry_covers_the_documented_reasons() -> None:
    # error_from_wire's promise is only as wide as the registry: make sure the
    # test below really walks every reason of the design's contract.
    assert {reason for reason, _ in REGISTERED} >= {
        "PARSE_ERROR",
        "INVALID_REQUEST",
        "METHOD_NOT_FOUND",
        "INVALID_PARAMS",
        "INTERNAL_ERROR",
        "NO_DOMAIN",
        "DOMAIN_EXISTS",
        "OPERATION_INVALID",
        "JOB_TIMEOUT",
        "JOB_QUEUE_FULL",
        "MONITOR_TIMEOUT",
        "MONITOR_UNRESPONSIVE",
        "MONITOR_ERROR",
        "DOMAIN_DESTROYED",
        "SERVER_BUSY",
        "ACCESS_DENIED",
    }


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
error_data = st.dictionaries(
    st.text(max_size=8).filter(lambda key: key != "reason"), json_values, max_size=4
)


@pytest.mark.parametrize(("reason", "cls"), REGISTERED, ids=[r for r, _ in REGISTERED])
@settings(max_examples=25)
@given(message=st.text(max_size=20), data=error_data)
def test_error_round_trip_for_every_reason(
    reason: str, cls: type[TrioctlError], message: str, data: dict[str, Any]
) -> None:
    exc = cls(message)
    exc.data.update(data)  # a constructor call refuses a key named "message"
    wire = error_to_wire(exc)
    assert wire["code"] == cls.rpc_code
    assert wire["data"]["reason"] == reason
    back = error_from_wire(wire)
    assert type(back) is cls
    assert back.message == message
    assert str(back) == message
    assert back.data == data
    # The same through text, as the client sees it.
    [response] = parse_response_text(encode_responses(Response.error(9, exc)) or "")
    assert isinstance(response, Response)
    assert type(response.exc) is cls
    assert response.exc.message == message
    assert response.exc.data == data
    assert response.id == 9


def test_monitor_error_subclasses_arrive_as_monitor_error() -> None:
    assert error_class_for_reason("MONITOR_ERROR") is MonitorError
    qmp = QmpCommandError("stop", "GenericError", "guest is stuck")
    back = error_from_wire(error_to_wire(qmp))
    assert type(back) is MonitorError
    assert back.message == "stop: GenericError: guest is stuck"
    assert back.data == {"command": "stop", "error_class": "GenericError", "desc": "guest is stuck"}
    lost = error_from_wire(error_to_wire(ConnectionLost("monitor closed", domain="vm1")))
    assert type(lost) is MonitorError
    assert lost.data == {"domain": "vm1"}


def test_a_data_key_named_like_a_constructor_argument() -> None:
    # A peer may send any key; NoDomain("gone", message=...) would not even run.
    data = {"reason": "NO_DOMAIN", "message": "inner", "args": [1]}
    wire = {"code": -32001, "message": "gone", "data": data}
    back = error_from_wire(wire)
    assert type(back) is NoDomain
    assert back.message == "gone"
    assert back.args == ("gone",)
    assert back.data == {"message": "inner", "args": [1]}


def test_error_to_wire_reason_wins_over_data() -> None:
    wire = error_to_wire(NoDomain("x", reason="SPOOF", name="vm"))
    assert wire == {"code": -32001, "message": "x", "data": {"reason": "NO_DOMAIN", "name": "vm"}}
    assert list(wire["data"]) == ["reason", "name"]


def test_error_from_wire_fallbacks() -> None:
    # Reason first, even when the code disagrees.
    back = error_from_wire({"code": -32099, "message": "m", "data": {"reason": "NO_DOMAIN"}})
    assert type(back) is NoDomain
    # Unknown reason: by code, keeping the reason.
    back = error_from_wire({"code": -32001, "message": "m", "data": {"reason": "NEW", "x": 1}})
    assert type(back) is NoDomain
    assert back.data == {"reason": "NEW", "x": 1}
    # No data at all: by code.
    back = error_from_wire({"code": -32601, "message": "Method not found"})
    assert type(back) is MethodNotFound
    assert back.data == {}
    # Data that is not an object is kept under "data".
    back = error_from_wire({"code": -32602, "message": "m", "data": [1, 2]})
    assert back.data == {"data": [1, 2]}
    # Unknown reason and code: the root class, keeping both.
    back = error_from_wire({"code": -32099, "message": "m", "data": {"reason": "NEW"}})
    assert type(back) is TrioctlError
    assert back.data == {"reason": "NEW", "code": -32099}
    # -32603 is InternalError, not the root that shares its code.
    assert type(error_from_wire({"code": -32603, "message": ""})) is InternalError


@pytest.mark.parametrize(
    "obj",
    [
        None,
        "error",
        [],
        {},
        {"code": "1", "message": "m"},
        {"code": True, "message": "m"},
        {"code": 1.0, "message": "m"},
        {"code": 1, "message": None},
        {"code": -32001},
    ],
)
def test_error_from_wire_malformed(obj: object) -> None:
    back = error_from_wire(obj)
    assert type(back) is TrioctlError
    assert back.data == {"raw": obj}


@given(json_values)
def test_error_from_wire_never_raises(obj: Any) -> None:
    assert isinstance(error_from_wire(obj), TrioctlError)


@given(st.integers(), st.text(max_size=10), json_values)
def test_error_from_wire_never_raises_on_well_formed_objects(
    code: int, message: str, data: Any
) -> None:
    back = error_from_wire({"code": code, "message": message, "data": data})
    assert isinstance(back, TrioctlError)
    assert back.message == message


# -- Hypothesis: the parsers' promises ------------------------------------------------

ids = (
    st.none()
    | st.text(max_size=10)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
)
methods = st.text(max_size=20).filter(lambda name: not name.startswith("rpc."))
params = (
    st.none()
    | st.lists(json_values, max_size=4)
    | st.dictionaries(st.text(max_size=8), json_values, max_size=4)
)

# Objects that are often, but not always, requests.
request_like = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.just("2.0") | json_scalars,
        "method": st.text(max_size=10) | st.just("rpc.x") | json_scalars,
        "params": params | json_scalars,
        "id": ids | json_values,
        "extra": json_scalars,
    },
)


def is_valid_id(value: Any) -> bool:
    if value is None or type(value) in (str, int):
        return True
    return type(value) is float and math.isfinite(value)


def check_server_promises(incoming: Incoming) -> None:
    """What holds for any input: shape, and a reply the client can read."""
    assert isinstance(incoming, Incoming)
    assert incoming.items
    if not incoming.batch:
        assert len(incoming.items) == 1
    answers: list[Response] = []
    for item in incoming.items:
        if isinstance(item, Invalid):
            assert type(item.error) in (ParseError, InvalidRequest, MethodNotFound)
            assert is_valid_id(item.id)
            answers.append(item.response())
        elif isinstance(item, Request):
            assert isinstance(item.method, str)
            assert item.params is None or type(item.params) in (dict, list)
            assert is_valid_id(item.id)
            answers.append(Response.result(item.id, item.params))
        else:
            assert isinstance(item, Notification)
    reply = encode_responses(answers if incoming.batch else (answers[0] if answers else None))
    assert (reply is None) == (not answers)
    assert (reply is None) == (not incoming.expects_reply)
    if reply is not None:
        parsed = parse_response_text(reply)
        assert [(r.id, r.value) for r in parsed if isinstance(r, Response)] == [
            (a.id, a.value) for a in answers
        ]


@given(st.text())
def test_any_text_gives_an_incoming(text: str) -> None:
    check_server_promises(parse_request_text(text))


@given(st.binary())
def test_any_bytes_give_an_incoming(data: bytes) -> None:
    check_server_promises(parse_request_text(data))


@given(json_values | st.lists(request_like, max_size=4) | request_like)
def test_any_json_gives_an_incoming(value: Any) -> None:
    check_server_promises(parse_request_text(json.dumps(value)))


@given(request_like)
def test_request_objects_are_classified_as_the_spec_says(obj: dict[str, Any]) -> None:
    [item] = parse_request_text(json.dumps(obj)).items
    valid = (
        obj.get("jsonrpc") == "2.0"
        and isinstance(obj.get("method"), str)
        and ("params" not in obj or type(obj["params"]) in (dict, list))
        and ("id" not in obj or is_valid_id(obj["id"]))
    )  # a member the specification does not define ("extra") is ignored
    if not valid:
        assert isinstance(item, Invalid)
        assert type(item.error) is InvalidRequest
        expected_id = obj["id"] if "id" in obj and is_valid_id(obj["id"]) else None
        assert item.id == expected_id
    elif "id" not in obj:
        assert item == Notification(obj["method"], obj.get("params"))
    elif obj["method"].startswith("rpc.") and obj["method"] != "rpc.discover":
        assert isinstance(item, Invalid)
        assert type(item.error) is MethodNotFound
        assert item.id == obj["id"]
    else:
        assert item == Request(obj["method"], obj.get("params"), obj["id"])


@given(methods, params, ids)
def test_request_round_trip(method: str, call_params: Any, request_id: Any) -> None:
    incoming = parse_request_text(encode_request(method, call_params, request_id))
    assert incoming == Incoming((Request(method, call_params, request_id),), batch=False)


@given(methods, params)
def test_notification_round_trip(method: str, call_params: Any) -> None:
    incoming = parse_request_text(encode_notification(method, call_params))
    assert incoming == Incoming((Notification(method, call_params),), batch=False)
    assert parse_response_text(encode_notification(method, call_params)) == [
        ServerNotification(method, call_params)
    ]


@given(st.lists(st.tuples(methods, params, ids), min_size=1, max_size=5))
def test_batch_round_trip(calls: list[tuple[str, Any, Any]]) -> None:
    text = "[" + ",".join(encode_request(*call) for call in calls) + "]"
    incoming = parse_request_text(text.encode())
    assert incoming == Incoming(tuple(Request(*call) for call in calls), batch=True)


@given(st.none() | st.text(max_size=10) | st.integers())
def test_ids_are_echoed_with_their_type(request_id: Any) -> None:
    for envelope in ['"jsonrpc":"2.0","method":"m"', '"jsonrpc":"1.0","method":"m"']:
        text = "{" + envelope + ',"id":' + json.dumps(request_id) + "}"
        [item] = parse_request_text(text).items
        if isinstance(item, Request):
            response = Response.result(item.id, True)
        else:
            assert isinstance(item, Invalid)
            response = item.response()
        reply = json.loads(encode_responses(response) or "")
        assert reply["id"] == request_id
        assert type(reply["id"]) is type(request_id)
        [parsed] = parse_response_text(encode_responses(response) or "")
        assert isinstance(parsed, Response)
        assert parsed.id == request_id


@given(st.lists(st.tuples(ids, json_values), min_size=1, max_size=5))
def test_response_round_trip(pairs: list[tuple[Any, Any]]) -> None:
    responses = [Response.result(request_id, value) for request_id, value in pairs]
    assert parse_response_text(encode_responses(responses) or "") == responses
    assert parse_response_text(encode_responses(responses[0]) or "") == responses[:1]


response_like = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.just("2.0") | json_scalars,
        "id": ids | json_values,
        "result": json_values,
        "error": st.fixed_dictionaries(
            {}, optional={"code": st.integers() | json_scalars, "message": json_scalars}
        )
        | json_values,
        "method": st.text(max_size=5) | json_scalars,
        "params": params | json_scalars,
    },
)


@given(
    st.text()
    | st.binary()
    | json_values.map(json.dumps)
    | response_like.map(json.dumps)
    | st.lists(response_like, max_size=3).map(json.dumps)
)
def test_client_parser_raises_only_remote_protocol_error(text: str | bytes) -> None:
    try:
        messages = parse_response_text(text)
    except RemoteProtocolError:
        return
    assert messages
    for message in messages:
        assert isinstance(message, Response | ServerNotification)
        if isinstance(message, Response) and message.exc is not None:
            assert isinstance(message.exc, TrioctlError)


# -- sans-I/O means sans-I/O ----------------------------------------------------------

FORBIDDEN_IMPORTS = frozenset({"trio", "socket", "trio_websocket"})


def forbidden_imports(source: str) -> list[str]:
    """Top-level names of forbidden modules that ``source`` imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in FORBIDDEN_IMPORTS]
    return found


def test_the_import_checker_catches_imports() -> None:
    source = (
        "import os, trio\nfrom trio.lowlevel import x\nimport socket as s\n"
        "def f():\n    import trio_websocket\nfrom . import trio\nimport triozzz\n"
    )
    assert forbidden_imports(source) == ["trio", "trio.lowlevel", "socket", "trio_websocket"]


def test_sansio_modules_import_no_io() -> None:
    package = Path(trioctl._sansio.__file__).parent
    modules = sorted(package.glob("**/*.py"))
    assert package / "rpc.py" in modules
    for module in modules:
        assert forbidden_imports(module.read_text(encoding="utf-8")) == [], module
