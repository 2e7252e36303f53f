"""MessageSizes: the declared size of a client's messages, from frame headers
fed in any pieces (sans-I/O, property-based)."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
from hypothesis import given

from trioctl._sansio.wsframes import MessageSizes


def frame(opcode: int, size: int, *, fin: bool = True, masked: bool = True) -> bytes:
    """A frame header (and a payload of ``size`` bytes when it is small)."""
    first = (0x80 if fin else 0) | opcode
    mask = 0x80 if masked else 0
    if size < 126:
        head = bytes([first, mask | size])
    elif size < 1 << 16:
        head = bytes([first, mask | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, mask | 127]) + size.to_bytes(8, "big")
    return head + (b"\1\2\3\4" if masked else b"") + b"x" * size


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, bytes, int | None]:
    """A limit, frames (messages of one or more fragments, control frames
    between) and the total of the first message over the limit (or None)."""
    limit = draw(st.integers(0, 400))
    data = b""
    over = None
    for _ in range(draw(st.integers(0, 6))):
        sizes = draw(st.lists(st.integers(0, 300), min_size=1, max_size=3))
        total = 0
        for i, size in enumerate(sizes):
            if draw(st.booleans()):
                data += frame(0x9, draw(st.integers(0, 125)), masked=draw(st.booleans()))
            opcode = draw(st.sampled_from([0x1, 0x2])) if i == 0 else 0x0
            total += size
            data += frame(opcode, size, fin=i == len(sizes) - 1, masked=draw(st.booleans()))
            if total > limit:
                over = total
                break
        if over is not None:
            break
    return limit, data, over


@given(streams(), st.binary(max_size=40), st.lists(st.integers(0, 5000), max_size=8))
def test_the_first_message_over_the_limit_is_found_however_the_bytes_come(
    case: tuple[int, bytes, int | None], prefix: bytes, cuts: list[int]
) -> None:
    limit, data, over = case
    stream = prefix + data
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    sizes = MessageSizes(limit, skip=len(prefix))
    found = None
    for a, b in itertools.pairwise(points):
        found = sizes.feed(stream[a:b])
        if found is not None:
            break
    assert found == over


def test_a_big_declared_size_is_found_at_the_header() -> None:
    sizes = MessageSizes(10, skip=3)
    assert sizes.feed(b"abc" + bytes([0x82, 0x80 | 126])) is None
    assert sizes.feed((500).to_bytes(2, "big")) == 500


def test_a_terabyte_header_alone_is_enough() -> None:
    sizes = MessageSizes(4 << 20)
    header = bytes([0x81, 0x80 | 127]) + (2**40).to_bytes(8, "big")
    assert sizes.feed(header[:3]) is None
    assert sizes.feed(header[3:]) == 2**40


def test_payloads_are_skipped_not_read_as_headers() -> None:
    sizes = MessageSizes(1000)
    # A payload full of bytes that would look like a huge header.
    payload = (bytes([0x81, 0xFF]) + b"\xff" * 8) * 10
    data = bytes([0x81, 0x80 | 100]) + b"\0" * 4 + payload
    assert sizes.feed(data) is None
    assert sizes.feed(frame(0x1, 999, masked=True)) is None
    assert sizes.feed(frame(0x1, 1001, masked=True)[:4]) == 1001
