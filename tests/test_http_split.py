"""Cutting a client's HTTP/1.x stream into requests without holding a body whole."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrord.http.sniff import sniff
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


def test_pipelined_requests_fed_byte_by_byte_come_out_whole() -> None:
    stream = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    splitter = RequestSplitter()
    found = [
        request for byte in range(len(stream)) for request in splitter.feed(stream[byte : byte + 1])
    ]
    assert [(r.head.method, r.head.target) for r in found] == [("POST", "/a"), ("GET", "/b?q=1")]
    assert b"".join(r.raw for r in found) == stream


@pytest.mark.parametrize(
    "first",
    [
        b"*1\r\n$4\r\nPING\r\n",  # Redis: no blank line ever comes
        b"\x16\x03\x01\x02\x00\x01",  # a TLS ClientHello
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # Postgres SSLRequest
        b"PRI * HTTP/2.0\r\n",  # HTTP/2's preface
    ],
)
def test_another_protocol_is_told_at_its_first_bytes(first: bytes) -> None:
    splitter = RequestSplitter()
    with pytest.raises(NotHttp):
        splitter.feed(first)
    assert splitter.leftover() == first  # nothing is lost: the bytes go on as a stream


def test_sniff_waits_while_a_request_line_may_still_come() -> None:
    assert sniff(b"") is None and sniff(b"GE") is None and sniff(b"GET /x HTT") is None
    assert sniff(b"GET /x HTTP/1.1\r\n") is True
    assert sniff(b"GET /x HTTP/2\r\n") is False and sniff(b"G\x00") is False
