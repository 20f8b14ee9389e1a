"""Where HTTP/1.x messages start and end in a byte stream, and no more (sans-I/O).

The filtered steal forwards the bytes it receives unchanged; all it must know is each request's
head (to choose where it goes) and where each request and response ends (to route the next
request of a kept-alive connection, and to answer in order). So heads are parsed, bodies only
counted: a body of a known length is skipped in one step, a chunked one by its size lines.
Framing follows RFC 9112 section 6; what it cannot follow raises `NotHttp`, and the caller relays
the connection raw from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mirrord.http.head import RequestHead

__all__ = ["Body", "NotHttp", "Request", "Response", "parse_request", "parse_response", "sniff"]

#: Largest head we parse (cookies make heads large; h11's 16 KiB default is small for them).
MAX_HEAD = 65536
#: Largest chunk-size or trailer line, and all trailers of one message together.
MAX_LINE = 8192

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb"+) ([^\x00-\x20\x7f]+) HTTP/(1\.[0-9])")
_STATUS_LINE = re.compile(rb"HTTP/(1\.[0-9]) ([0-9]{3})(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")
_FIELD = re.compile(rb"(" + _TOKEN + rb"+):[ \t]*(.*?)[ \t]*")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# Prefixes of a request line, to give up early on a client that is not speaking HTTP/1.x (TLS,
# HTTP/2): it would otherwise wait forever for a blank line.
_REQUEST_LINE_PREFIX = re.compile(
    _TOKEN + rb"*(?: [^\x00-\x20\x7f]*(?: (?:H(?:T(?:T(?:P(?:/(?:1(?:\.[0-9]?)?)?)?)?)?)?)?)?)?"
)
_REQUEST_LINE_WHOLE = re.compile(_TOKEN + rb"+ [^\x00-\x20\x7f]+ HTTP/1\.[0-9]\r?\n")


class NotHttp(Exception):
    """The bytes are not (or no longer) HTTP/1.x that we can follow."""


def sniff(buffer: bytes | bytearray) -> bool | None:
    """Whether `buffer` starts an HTTP/1.x request: True, False, or None (can't tell yet)."""
    end = buffer.find(b"\n")
    if end >= 0:
        return _REQUEST_LINE_WHOLE.fullmatch(buffer, 0, end + 1) is not None
    line = bytes(buffer[:-1]) if buffer.endswith(b"\r") else bytes(buffer)
    return None if _REQUEST_LINE_PREFIX.fullmatch(line) else False


class Body:
    """Counts the bytes of one message body as they pass; `done` once it ended.

    `feed(data, start)` returns where in `data` the body stops (len(data) if it goes on).
    Chunk framing is followed line by line; a partial line is kept (bounded) across feeds.
    """

    __slots__ = ("_chunked", "_left", "_line", "_state", "_trailers", "done", "until_close")

    def __init__(self, length: int | None = 0, chunked: bool = False) -> None:
        self._chunked = chunked
        self.until_close = length is None and not chunked
        self._left = length or 0
        self._state = "size"  # chunked: size, data, data-end, trailer
        self._line = bytearray()
        self._trailers = 0
        self.done = not chunked and not self.until_close and self._left == 0

    def feed(self, data: bytes | bytearray, start: int = 0) -> int:
        end = len(data)
        if self.done:
            return start
        if self.until_close:
            return end
        if not self._chunked:
            take = min(self._left, end - start)
            self._left -= take
            self.done = self._left == 0
            return start + take
        pos = start
        while pos < end and not self.done:
            if self._state == "data":
                take = min(self._left, end - pos)
                self._left -= take
                pos += take
                if self._left == 0:
                    self._state = "data-end"
                continue
            newline = data.find(b"\n", pos, pos + MAX_LINE + 1)
            if newline < 0:
                self._line += data[pos:end]
                if len(self._line) > MAX_LINE:
                    raise NotHttp("a chunk line too long")
                return end
            self._line += data[pos:newline]
            pos = newline + 1
            self._line_done(bytes(self._line).rstrip(b"\r"))
            self._line.clear()
        return pos

    def _line_done(self, line: bytes) -> None:
        if self._state == "size":
            size = line.split(b";", 1)[0].strip()
            if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
                raise NotHttp(f"bad chunk size {line[:40]!r}")
            self._left = int(size, 16)
            self._state = "data" if self._left else "trailer"
        elif self._state == "data-end":
            if line:
                raise NotHttp("a chunk longer than its size")
            self._state = "size"
        elif not line:  # the blank line after the trailers
            self.done = True
        else:
            self._trailers += len(line)
            if self._trailers > MAX_LINE:
                raise NotHttp("trailers too long")


def _split_head(buffer: bytes | bytearray, start: int) -> tuple[list[bytes], int] | None:
    """The lines of the head at `start` and where it ends, or None if it is not all here."""
    match = _HEAD_END.search(buffer, start, start + MAX_HEAD + 4)
    if match is None:
        if len(buffer) - start > MAX_HEAD:
            raise NotHttp("head too large")
        return None
    lines = bytes(buffer[start : match.start()]).split(b"\n")
    return [line[:-1] if line.endswith(b"\r") else line for line in lines], match.end()


def _fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):  # obsolete line folding: part of the previous value
            if not fields:
                raise NotHttp("a folded line before any header")
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip(b" \t"))
            continue
        match = _FIELD.fullmatch(line)
        if match is None:
            raise NotHttp(f"bad header line {line[:40]!r}")
        fields.append((match.group(1), match.group(2)))
    return fields


def _by_name(fields: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    """The values of each header, by its name in lower case (looked up several times)."""
    named: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        named.setdefault(name.lower(), []).append(value)
    return named


def _tokens(named: dict[bytes, list[bytes]], name: bytes) -> list[bytes]:
    values = named.get(name)
    if not values:
        return []
    return [t.strip().lower() for t in b",".join(values).split(b",") if t.strip()]


def _framing(named: dict[bytes, list[bytes]]) -> tuple[int | None, bool, bool]:
    """(content length or None, chunked, transfer-encoding present)."""
    codings = _tokens(named, b"transfer-encoding")
    if codings:
        return None, codings[-1] == b"chunked", True
    # "5, 5" is one length said twice; two different lengths are a smuggling attempt
    lengths = {x.strip() for v in named.get(b"content-length", ()) for x in v.split(b",")}
    if not lengths:
        return None, False, False
    length = lengths.pop()
    if lengths or not length.isdigit() or len(length) > 18:
        raise NotHttp("bad content-length")
    return int(length), False, False


def _keep_alive(version: bytes, connection: list[bytes]) -> bool:
    if b"close" in connection:
        return False
    return version != b"1.0" or b"keep-alive" in connection


@dataclass
class Request:
    head: RequestHead
    raw_length: int  # bytes of the head, blank line included
    method: bytes
    body: Body
    keep_alive: bool
    upgrade: bool  # asks to switch protocols (a 101 would make the rest raw)
    expects_continue: bool


@dataclass
class Response:
    status: int
    raw_length: int
    body: Body
    keep_alive: bool
    switched: bool  # 101 to an Upgrade, 2xx to a CONNECT: the rest is raw


def parse_request(buffer: bytes | bytearray, start: int = 0) -> Request | None:
    """The request head at `start`, or None if it is not all here yet. Raises NotHttp."""
    if sniff(buffer[start : start + 200]) is False:
        raise NotHttp("not an HTTP/1.x request")
    split = _split_head(buffer, start)
    if split is None:
        return None
    lines, end = split
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        raise NotHttp(f"bad request line {lines[0][:60]!r}")
    method, target, version = line.groups()
    fields = _fields(lines[1:])
    named = _by_name(fields)
    length, chunked, coded = _framing(named)
    if coded and not chunked:
        raise NotHttp("a request body without a length")
    connection = _tokens(named, b"connection")
    head = RequestHead(
        method=method.decode("latin-1"),
        target=target.decode("latin-1"),
        http_version=version.decode("latin-1"),
        headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in fields],
    )
    return Request(
        head=head,
        raw_length=end - start,
        method=method,
        body=Body(length or 0, chunked),
        keep_alive=_keep_alive(version, connection),
        upgrade=b"upgrade" in connection and b"upgrade" in named,
        expects_continue=b"100-continue" in _tokens(named, b"expect"),
    )


def parse_response(buffer: bytes | bytearray, start: int, request: Request) -> Response | None:
    """The response head at `start` to `request`, or None if not all here. Raises NotHttp."""
    split = _split_head(buffer, start)
    if split is None:
        if len(buffer) - start >= 5 and not bytes(buffer[start : start + 5]) == b"HTTP/":
            raise NotHttp("not an HTTP/1.x response")
        return None
    lines, end = split
    line = _STATUS_LINE.fullmatch(lines[0])
    if line is None:
        raise NotHttp(f"bad status line {lines[0][:60]!r}")
    version, status = line.group(1), int(line.group(2))
    named = _by_name(_fields(lines[1:]))
    switched = (status == 101 and request.upgrade) or (
        request.method == b"CONNECT" and 200 <= status < 300
    )
    if status == 101 and not request.upgrade:
        raise NotHttp("101 to a request that did not ask to upgrade")
    if switched or status < 200 or status in (204, 304) or request.method == b"HEAD":
        body = Body(0)
    else:
        length, chunked, coded = _framing(named)
        body = Body(None if coded and not chunked else length, chunked)
    keep_alive = _keep_alive(version, _tokens(named, b"connection")) and not body.until_close
    return Response(status, end - start, body, keep_alive, switched)
