"""Where HTTP/1.x messages end, found without I/O: heads parsed, bodies counted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrord.agent.http_framing import Body, NotHttp, parse_request, parse_response

CHUNKED = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nTrailer: x\r\n\r\n"


def test_a_request_head_and_what_follows_it() -> None:
    data = b"POST /p?q=1 HTTP/1.1\r\nHost: a\r\nX-Dev:  alice \r\nContent-Length: 3\r\n\r\nabcGET"
    request = parse_request(data)
    assert request is not None
    assert (request.head.method, request.head.path, request.head.header("x-dev")) == (
        "POST",
        "/p?q=1",
        "alice",
    )
    assert data[request.raw_length :] == b"abcGET"
    assert request.body.feed(data, request.raw_length) == len(data) - 3  # "GET" is the next one
    assert request.body.done and request.keep_alive


def test_an_incomplete_head_waits_and_garbage_is_refused_early() -> None:
    assert parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n") is None
    assert parse_request(b"GE") is None
    with pytest.raises(NotHttp):
        parse_request(b"\x16\x03\x01\x02\x00")  # a TLS client hello
    with pytest.raises(NotHttp):
        parse_request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    with pytest.raises(NotHttp):
        parse_request(b"GET / HTTP/1.1\r\n" + b"a" * 70000)  # a head too large to be one


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: 3\r\nContent-Length: 4\r\n",  # two lengths: request smuggling
        b"Content-Length: -1\r\n",
        b"Transfer-Encoding: gzip\r\n",  # a request body with no end
        b"Bad Header\r\n",
    ],
)
def test_ambiguous_framing_is_not_followed(headers: bytes) -> None:
    with pytest.raises(NotHttp):
        parse_request(b"POST / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")


def test_keep_alive_by_version_and_connection_header() -> None:
    def keep(head: bytes) -> bool:
        request = parse_request(head + b"\r\n")
        assert request is not None
        return request.keep_alive

    assert keep(b"GET / HTTP/1.1\r\n")
    assert not keep(b"GET / HTTP/1.1\r\nConnection: close\r\n")
    assert not keep(b"GET / HTTP/1.0\r\n")
    assert keep(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n")


@given(st.lists(st.integers(min_value=1, max_value=len(CHUNKED)), max_size=10))
def test_chunked_body_ends_at_the_same_byte_however_it_is_split(cuts: list[int]) -> None:
    data = CHUNKED + b"NEXT"
    body, pos, end = Body(chunked=True), 0, None
    for cut in sorted(set(cuts)) + [len(data)]:
        piece = data[pos:cut]
        stop = body.feed(piece)
        if body.done and end is None:
            end = pos + stop
        pos = cut
    assert end == len(CHUNKED)


def test_bad_chunk_framing_is_not_followed() -> None:
    with pytest.raises(NotHttp):
        Body(chunked=True).feed(b"zz\r\n")
    with pytest.raises(NotHttp):
        Body(chunked=True).feed(b"2\r\nabc\r\n")  # a chunk longer than its size


def test_responses_framed_by_the_request_they_answer() -> None:
    get = parse_request(b"GET / HTTP/1.1\r\n\r\n")
    head = parse_request(b"HEAD / HTTP/1.1\r\n\r\n")
    upgrade = parse_request(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert get is not None and head is not None and upgrade is not None
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    response = parse_response(ok, 0, get)
    assert response is not None and not response.body.done and response.keep_alive
    response = parse_response(ok, 0, head)
    assert response is not None and response.body.done  # HEAD: no body whatever the length
    response = parse_response(b"HTTP/1.1 200 OK\r\n\r\nuntil close", 0, get)
    assert response is not None and response.body.until_close and not response.keep_alive
    response = parse_response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 0, upgrade)
    assert response is not None and response.switched
    with pytest.raises(NotHttp):
        parse_response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 0, get)
    with pytest.raises(NotHttp):
        parse_response(b"SSH-2.0-OpenSSH\r\n", 0, get)
