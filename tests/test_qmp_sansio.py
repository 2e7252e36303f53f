"""The sans-I/O QMP core: plain synchronous tests, data fed whole and in pieces."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, strategies as st

from trioctl import LocalProtocolError, RemoteProtocolError
from trioctl._sansio.qmp import (
    NEED_DATA,
    Closed,
    ErrorReply,
    Event,
    Greeting,
    QmpConnection,
    QmpMessage,
    QmpState,
    Return,
)

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
    b'"package": "Debian 1:7.2"}, "capabilities": ["oob"]}}\r\n'
)


def drain(conn: QmpConnection) -> list[QmpMessage]:
    out: list[QmpMessage] = []
    while True:
        msg = conn.next_event()
        if msg is NEED_DATA:
            return out
        out.append(msg)
        if isinstance(msg, Closed):
            return out


def running_connection() -> QmpConnection:
    conn = QmpConnection()
    conn.receive_data(GREETING)
    assert drain(conn) == [Greeting((7, 2, 22), "Debian 1:7.2", ("oob",))]
    wire = conn.negotiate()
    assert json.loads(wire) == {"execute": "qmp_capabilities", "id": "trioctl-negotiate"}
    conn.receive_data(b'{"return": {}, "id": "trioctl-negotiate"}\r\n')
    assert drain(conn) == [Return("trioctl-negotiate", {})]
    assert conn.state is QmpState.RUNNING
    return conn


def test_states_change_in_order() -> None:
    conn = QmpConnection()
    seen = [conn.state]
    assert conn.next_event() is NEED_DATA
    conn.receive_data(GREETING)
    drain(conn)
    seen.append(conn.state)
    conn.negotiate()
    seen.append(conn.state)
    conn.receive_data(b'{"return": {}, "id": "trioctl-negotiate"}\r\n')
    drain(conn)
    seen.append(conn.state)
    conn.receive_data(b"")
    assert drain(conn) == [Closed()]
    seen.append(conn.state)
    assert seen == [
        QmpState.GREETING,
        QmpState.CAPABILITIES,
        QmpState.NEGOTIATING,
        QmpState.RUNNING,
        QmpState.CLOSED,
    ]
    assert conn.next_event() == Closed()


def test_commands_before_negotiation_are_refused_locally() -> None:
    conn = QmpConnection()
    with pytest.raises(LocalProtocolError):
        conn.send_command("query-status")
    with pytest.raises(LocalProtocolError):
        conn.negotiate()  # no greeting yet
    conn.receive_data(GREETING)
    drain(conn)
    with pytest.raises(LocalProtocolError):
        conn.send_command("query-status")


def test_command_ids_are_unique_and_arguments_encoded() -> None:
    conn = running_connection()
    id1, wire1 = conn.send_command("query-status")
    id2, wire2 = conn.send_command("human-monitor-command", {"command-line": "info"})
    assert id1 != id2
    assert json.loads(wire1) == {"execute": "query-status", "id": id1}
    assert json.loads(wire2) == {
        "execute": "human-monitor-command",
        "id": id2,
        "arguments": {"command-line": "info"},
    }
    assert wire1.endswith(b"\n") and wire1.count(b"\n") == 1


@given(st.text(min_size=1), st.none() | st.dictionaries(st.text(), st.integers() | st.text()))
def test_command_bytes_are_compact_json_on_one_line(name: str, arguments: Any) -> None:
    conn = running_connection()
    cmd_id, wire = conn.send_command(name, arguments)
    expected: dict[str, Any] = {"execute": name, "id": cmd_id}
    if arguments is not None:
        expected["arguments"] = arguments
    # The same bytes as json.dumps, compact, ASCII, one newline at the end.
    assert wire == json.dumps(expected, separators=(",", ":")).encode() + b"\n"


@pytest.mark.parametrize(
    ("name", "arguments"),
    [("", None), ("x", [1, 2]), ("x", {"f": float("nan")}), ("x", {"o": object()})],
)
def test_unsendable_commands_raise_local_protocol_error(name: str, arguments: Any) -> None:
    conn = running_connection()
    with pytest.raises(LocalProtocolError):
        conn.send_command(name, arguments)


def test_replies_errors_and_events() -> None:
    conn = running_connection()
    conn.receive_data(
        b'{"timestamp": {"seconds": 1700000000, "microseconds": 250000}, "event": "STOP"}\r\n'
        b'{"return": {"status": "paused", "running": false}, "id": 1}\r\n'
        b'{"id": {"any": ["json"]}, "error": {"class": "CommandNotFound", "desc": "no"}}\r\n'
        b'{"error": {"class": "GenericError", "desc": "no id"}}\r\n'
        b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESET", '
        b'"data": {"guest": false}}\r\n'
    )
    assert drain(conn) == [
        Event("STOP", {}, 1700000000.25),
        Return(1, {"status": "paused", "running": False}),
        ErrorReply({"any": ["json"]}, "CommandNotFound", "no"),
        ErrorReply(None, "GenericError", "no id"),
        Event("RESET", {"guest": False}, 1.000002),
    ]


def test_refused_negotiation_is_a_remote_error() -> None:
    conn = QmpConnection()
    conn.receive_data(GREETING)
    drain(conn)
    conn.negotiate()
    conn.receive_data(
        b'{"id": "trioctl-negotiate", "error": {"class": "GenericError", "desc": "no"}}\n'
    )
    with pytest.raises(RemoteProtocolError, match="negotiation refused"):
        drain(conn)


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"surprise": 1}\n',
        b'{"error": "flat"}\n',
        b'{"error": {"class": 1, "desc": "x"}}\n',
        b'{"event": "STOP"}\n',
        b'{"event": 7, "timestamp": {"seconds": 1, "microseconds": 0}}\n',
        b'{"event": "X", "timestamp": {"seconds": 1.5, "microseconds": 0}}\n',
        b'{"event": "X", "data": [], "timestamp": {"seconds": 1, "microseconds": 0}}\n',
        b"\xff\xfe\n",
        b"[" * 100_000 + b"\n",
    ],
)
def test_malformed_messages_raise_remote_protocol_error(line: bytes) -> None:
    conn = running_connection()
    conn.receive_data(line)
    with pytest.raises(RemoteProtocolError):
        drain(conn)
    assert conn.state is QmpState.CLOSED
    with pytest.raises(RemoteProtocolError):  # and it stays broken
        conn.next_event()


@pytest.mark.parametrize(
    "greeting",
    [b'{"QMP": {}}\n', b'{"return": {}}\n', b'{"QMP": {"version": {"qemu": 7}}}\n'],
)
def test_malformed_greeting(greeting: bytes) -> None:
    conn = QmpConnection()
    conn.receive_data(greeting)
    with pytest.raises(RemoteProtocolError):
        drain(conn)


def test_eof_inside_a_message() -> None:
    conn = running_connection()
    conn.receive_data(b'{"return": {}')
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="EOF inside"):
        conn.next_event()


def test_data_after_eof_is_a_local_error() -> None:
    conn = QmpConnection()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


def test_over_long_lines_are_refused_without_a_newline() -> None:
    conn = running_connection()
    conn._max_line = 1000
    conn.receive_data(b'{"return": "' + b"x" * 600)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"x" * 600)
    with pytest.raises(RemoteProtocolError, match="longer than 1000"):
        conn.next_event()


def test_over_long_line_with_its_newline() -> None:
    conn = QmpConnection(max_line=100)
    conn.receive_data(b" " * 200 + b"\n")
    with pytest.raises(RemoteProtocolError, match="longer than 100"):
        conn.next_event()


def test_default_bound_is_ten_mebibytes() -> None:
    conn = running_connection()
    conn.receive_data(b'{"return": "' + b"x" * (10 * 1024 * 1024) + b'"}')
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


# -- Hypothesis ----------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@st.composite
def qmp_messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["return", "error", "event"]))
    if kind == "event":
        msg: dict[str, Any] = {
            "event": draw(st.sampled_from(["STOP", "RESUME", "RESET", "SHUTDOWN"])),
            "timestamp": {
                "seconds": draw(st.integers(0, 2**40)),
                "microseconds": draw(st.integers(0, 999_999)),
            },
        }
        if draw(st.booleans()):
            msg["data"] = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3))
        return msg
    msg = (
        {"return": draw(json_values)}
        if kind == "return"
        else {"error": {"class": draw(st.text(max_size=8)), "desc": draw(st.text(max_size=20))}}
    )
    if draw(st.booleans()):
        msg["id"] = draw(json_values)
    return msg


def events_from(chunks: list[bytes]) -> list[QmpMessage]:
    conn = QmpConnection()
    out: list[QmpMessage] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        out.extend(drain(conn))
    conn.receive_data(b"")
    out.extend(drain(conn))
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


@given(
    msgs=st.lists(qmp_messages(), max_size=8),
    cuts=st.lists(st.integers(0, 4096), max_size=20),
    crlf=st.booleans(),
)
def test_chunking_never_changes_events(
    msgs: list[dict[str, Any]], cuts: list[int], crlf: bool
) -> None:
    end = b"\r\n" if crlf else b"\n"
    wire = GREETING + b"".join(json.dumps(m).encode() + end for m in msgs)
    whole = events_from([wire])
    assert events_from(split_at(wire, cuts)) == whole
    assert events_from([bytes([b]) for b in wire]) == whole
    assert len(whole) == len(msgs) + 2  # greeting ... Closed
    assert isinstance(whole[-1], Closed)


@given(st.binary(max_size=2048))
def test_garbage_raises_only_remote_protocol_error(data: bytes) -> None:
    conn = running_connection()
    try:
        conn.receive_data(data)
        drain(conn)
        conn.receive_data(b"")
        drain(conn)
    except RemoteProtocolError:
        assert conn.state is QmpState.CLOSED


@given(st.binary(min_size=1, max_size=512))
def test_garbage_before_greeting(data: bytes) -> None:
    """Any bytes before the greeting: a protocol error that closes the
    connection for good, or (whole lines of) a greeting and what follows it,
    or a wait for more."""
    conn = QmpConnection()
    conn.receive_data(data)
    try:
        got = drain(conn)
    except RemoteProtocolError:
        assert conn.state is QmpState.CLOSED
        with pytest.raises(RemoteProtocolError, match="after a protocol violation"):
            conn.next_event()
        return
    if got:
        assert isinstance(got[0], Greeting) and got[0] == conn.greeting
        assert conn.state is QmpState.CAPABILITIES
    else:
        assert conn.state is QmpState.GREETING and conn.greeting is None
        complete_lines = data.split(b"\n")[:-1]
        assert not any(line.strip() for line in complete_lines)


@given(line=st.text(max_size=300))
def test_arbitrary_text_lines(line: str) -> None:
    """One line of any text on a running connection: one message (an event or
    a reply), nothing for a blank line, or a protocol error that closes it."""
    conn = running_connection()
    conn.receive_data(line.encode() + b"\n")
    try:
        got = drain(conn)
    except RemoteProtocolError:
        assert conn.state is QmpState.CLOSED
        return
    assert conn.state is QmpState.RUNNING
    if line.strip():
        [message] = got
        assert isinstance(message, Event | Return | ErrorReply)
    else:
        assert got == []


# -- numbers JSON accepts but Python cannot hold (issue 10, item 9) ------------------

_UNHOLDABLE = st.sampled_from(
    ["Infinity", "-Infinity", "NaN", "1e400", "-1e400", "1E999", "123456789e999"]
)
_HUGE_INT = st.integers(min_value=2**64, max_value=10**400) | st.integers(
    min_value=-(10**400), max_value=-(2**64)
)


@given(number=_UNHOLDABLE | _HUGE_INT.map(str), field=st.sampled_from(["major", "minor", "micro"]))
def test_greeting_with_unholdable_version_is_a_remote_error(number: str, field: str) -> None:
    version = {"major": "7", "minor": "2", "micro": "0"}
    version[field] = number
    body = ", ".join(f'"{k}": {v}' for k, v in version.items())
    greeting = f'{{"QMP": {{"version": {{"qemu": {{{body}}}}}, "capabilities": []}}}}\n'
    conn = QmpConnection()
    conn.receive_data(greeting.encode())
    with pytest.raises(RemoteProtocolError):
        drain(conn)
    assert conn.state is QmpState.CLOSED


@given(
    number=_UNHOLDABLE | _HUGE_INT.map(str),
    field=st.sampled_from(["seconds", "microseconds"]),
)
def test_event_with_unholdable_timestamp_is_a_remote_error(number: str, field: str) -> None:
    stamp = {"seconds": "1700000000", "microseconds": "5"}
    stamp[field] = number
    body = ", ".join(f'"{k}": {v}' for k, v in stamp.items())
    conn = running_connection()
    conn.receive_data(f'{{"event": "STOP", "timestamp": {{{body}}}}}\n'.encode())
    with pytest.raises(RemoteProtocolError):
        drain(conn)


@given(number=_UNHOLDABLE, where=st.sampled_from(["return", "error-id", "data"]))
def test_unholdable_numbers_anywhere_are_remote_errors(number: str, where: str) -> None:
    line = {
        "return": f'{{"return": {{"x": [1, {number}]}}, "id": 1}}',
        "error-id": f'{{"error": {{"class": "C", "desc": "d"}}, "id": {number}}}',
        "data": f'{{"event": "X", "data": {{"n": {number}}}, '
        '"timestamp": {"seconds": 1, "microseconds": 2}}',
    }[where]
    conn = running_connection()
    conn.receive_data(line.encode() + b"\n")
    with pytest.raises(RemoteProtocolError):
        drain(conn)


def test_clockless_event_timestamp_is_accepted() -> None:
    conn = running_connection()
    conn.receive_data(b'{"event": "X", "timestamp": {"seconds": -1, "microseconds": -1}}\n')
    (event,) = drain(conn)
    assert isinstance(event, Event) and event.name == "X"


# -- a command pipelined behind qmp_capabilities ----------------------------------

NEGOTIATED = b'{"return": {}, "id": "trioctl-negotiate"}\r\n'


def negotiating_connection() -> QmpConnection:
    conn = QmpConnection()
    conn.receive_data(GREETING)
    drain(conn)
    conn.negotiate()
    assert conn.state is QmpState.NEGOTIATING
    return conn


def test_a_command_sent_before_the_negotiation_reply_is_answered_after_it() -> None:
    """QEMU 7.2 answers qmp_capabilities, then the command sent right behind it."""
    conn = negotiating_connection()
    cmd_id, wire = conn.send_command("query-status")
    assert json.loads(wire) == {"execute": "query-status", "id": cmd_id}
    assert conn.state.value == "negotiating"
    conn.receive_data(NEGOTIATED + b'{"return": {"running": true}, "id": %d}\r\n' % cmd_id)
    assert drain(conn) == [Return("trioctl-negotiate", {}), Return(cmd_id, {"running": True})]
    assert conn.state is QmpState.RUNNING


def test_a_refused_negotiation_fails_the_pipelined_command_with_its_error() -> None:
    """QEMU answers the pipelined command CommandNotFound after the refusal;
    the core never returns that reply: the refusal's error closes it."""
    conn = negotiating_connection()
    cmd_id, _ = conn.send_command("query-status")
    conn.receive_data(
        b'{"id": "trioctl-negotiate", "error": {"class": "GenericError", "desc": "no"}}\r\n'
        b'{"id": %d, "error": {"class": "CommandNotFound", "desc": "Expecting '
        b"capabilities negotiation with 'qmp_capabilities'\"}}\r\n" % cmd_id
    )
    with pytest.raises(RemoteProtocolError, match="negotiation refused: no"):
        conn.next_event()
    assert conn.state is QmpState.CLOSED
    with pytest.raises(RemoteProtocolError) as again:
        conn.next_event()
    assert "negotiation refused: no" in str(again.value)
    with pytest.raises(LocalProtocolError):
        conn.send_command("query-status")


@given(
    st.lists(st.booleans(), max_size=6),
    st.integers(min_value=0, max_value=3),
    st.lists(st.integers(min_value=1, max_value=40), max_size=20),
)
def test_pipelined_replies_come_in_order_and_match_their_ids(
    is_error: list[bool], events_before: int, cuts: list[int]
) -> None:
    """Commands sent while NEGOTIATING (and after): events anywhere before
    the negotiation's reply, the replies in order, fed in arbitrary pieces;
    each reply comes back with its own id, the state turns RUNNING exactly
    at the negotiation's reply."""
    conn = negotiating_connection()
    ids = [conn.send_command(f"cmd-{i}")[0] for i in range(len(is_error))]
    assert len(set(ids)) == len(ids)
    event = b'{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}\r\n'
    wire = event * events_before + NEGOTIATED
    expected: list[QmpMessage] = [Event("STOP", {}, 1.000002)] * events_before
    expected.append(Return("trioctl-negotiate", {}))
    for cmd_id, error in zip(ids, is_error, strict=True):
        if error:
            wire += b'{"id": %d, "error": {"class": "GenericError", "desc": "e"}}\r\n' % cmd_id
            expected.append(ErrorReply(cmd_id, "GenericError", "e"))
        else:
            wire += b'{"return": %d, "id": %d}\r\n' % (cmd_id, cmd_id)
            expected.append(Return(cmd_id, cmd_id))
    seen: list[QmpMessage] = []
    states: list[QmpState] = []
    pos = 0
    for cut in [*cuts, len(wire)]:
        conn.receive_data(wire[pos : pos + cut])
        pos += cut
        while (msg := conn.next_event()) is not NEED_DATA:
            seen.append(msg)
            states.append(conn.state)
        if pos >= len(wire):
            break
    assert seen == expected
    negotiated_at = events_before
    assert all(s is QmpState.NEGOTIATING for s in states[:negotiated_at])
    assert all(s is QmpState.RUNNING for s in states[negotiated_at:])
    later_id, _ = conn.send_command("query-status")
    assert later_id not in ids
