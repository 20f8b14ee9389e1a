"""Cutting a client's HTTP/1.x stream into requests without holding a body whole."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrord.http.split import (
    NotHttp,
    RequestBody,
    RequestEnd,
    RequestSplitter,
    RequestStart,
    RequestStream,
)

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
)


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(GET + POST + CHUNKED)), max_size=8))
def test_the_parts_are_the_bytes_sent_however_they_arrive(cuts: list[int]) -> None:
    wire = GET + POST + CHUNKED
    stream = RequestStream()
    parts = []
    previous = 0
    for cut in [*sorted(cuts), len(wire)]:
        parts += stream.feed(wire[previous:cut])
        previous = cut
    assert b"".join(p.raw for p in parts) == wire  # byte for byte, framing included
    starts = [p.head.path for p in parts if isinstance(p, RequestStart)]
    assert starts == ["/a", "/b", "/c"]
    assert sum(isinstance(p, RequestEnd) for p in parts) == 3


def test_a_large_body_streams_through_in_pieces() -> None:
    stream = RequestStream()
    head = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    parts = stream.feed(head)
    assert isinstance(parts[0], RequestStart)
    held = 0
    for _ in range(100):
        for part in stream.feed(b"x" * 100_000):
            assert isinstance(part, RequestBody | RequestEnd)
        held = max(held, len(stream.leftover()))
    assert held < 200_000  # what waits inside is one read at most, never the body


def test_the_splitter_drops_requests_over_its_limit_and_goes_on() -> None:
    splitter = RequestSplitter(max_request=1000)
    big = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"y" * 5000
    done = splitter.feed(GET + big + POST)
    assert [r.head.path for r in done] == ["/a", "/b"]
    assert done[1].raw == POST
    assert splitter.dropped == 1


def test_what_is_not_http_is_said_so() -> None:
    with pytest.raises(NotHttp):
        RequestStream().feed(b"\x16\x03\x01\x02\x00 not http\r\n\r\n")
