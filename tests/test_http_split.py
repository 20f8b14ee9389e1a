"""Cutting a client's byte stream into whole HTTP/1.x requests (the intproxy's mirror and
Session.mirror), and giving up early on other protocols."""

from __future__ import annotations

import pytest

from mirrord.http.sniff import sniff
from mirrord.http.split import NotHttp, RequestSplitter


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
