"""Cutting a client's HTTP/1.x byte stream into requests (sans-I/O).

Mirroring uses it to send each request to the app on its own, so that a server that
closes after one response (Flask's dev server, anything speaking HTTP/1.0) still gets
every request, and so that a mirror HTTP filter can pick requests.

`RequestStream` yields a request as it arrives (its head, then pieces of its body, then
its end), so a large body passes through without being held whole: memory is bounded by
one head (MAX_HEAD) and one read. `RequestSplitter` gathers whole requests on top of it,
for readers that want them whole, up to a size.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11

from mirrord.http.head import RequestHead, buffered_bytes
from mirrord.http.sniff import sniff

#: Largest request head followed (h11's own default of 16 KiB is small for cookies).
MAX_HEAD = 65536


@dataclass(frozen=True)
class RequestStart:
    head: RequestHead
    raw: bytes  # exactly the bytes of the head, as the client sent them


@dataclass(frozen=True)
class RequestBody:
    raw: bytes  # the next bytes of the body, framing (chunk lines) included


@dataclass(frozen=True)
class RequestEnd:
    raw: bytes  # the last bytes of the request (the final chunk, trailers), maybe none


RequestPart = RequestStart | RequestBody | RequestEnd


@dataclass(frozen=True)
class WholeRequest:
    head: RequestHead
    raw: bytes  # exactly the bytes the client sent for this request


class NotHttp(Exception):
    """The stream is not HTTP/1.x (or stopped being parseable)."""


class RequestStream:
    def __init__(self) -> None:
        self._pending = bytearray()  # bytes fed and not handed out yet (h11 has them too)
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._in_request = False  # its head was handed out, its end not yet

    def leftover(self) -> bytes:
        """What was fed but not handed out in a part yet."""
        return bytes(self._pending)

    def feed(self, data: bytes) -> list[RequestPart]:
        """The parts of requests that `data` completes; NotHttp when the stream is
        something else."""
        if not data:
            return []  # (h11 would read an empty feed as the end of the stream)
        self._pending += data
        # before a head is whole, its first line already tells another protocol
        if not self._in_request and sniff(self._pending) is False:
            raise NotHttp("not an HTTP/1.x request line")
        self._conn.receive_data(data)
        parts: list[RequestPart] = []
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise NotHttp(str(exc)) from None
            if event is h11.PAUSED:
                raise NotHttp("the client switched protocols")
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return parts
            raw = self._take()
            if isinstance(event, h11.Request):
                parts.append(RequestStart(RequestHead.from_h11(event), raw))
                self._in_request = True
            elif isinstance(event, h11.Data):
                parts.append(RequestBody(raw))
            elif isinstance(event, h11.EndOfMessage):
                parts.append(RequestEnd(raw))
                self._in_request = False
                # a fresh parser per request: we never answer, so h11 would not move on
                rest = bytes(self._pending)
                self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
                if rest:
                    self._conn.receive_data(rest)

    def _take(self) -> bytes:
        """The bytes h11 consumed for the event just read."""
        consumed = len(self._pending) - buffered_bytes(self._conn)
        raw = bytes(self._pending[:consumed])
        del self._pending[:consumed]
        return raw


class TooLarge(Exception):
    """A request grew past the splitter's limit; it is dropped, the stream goes on."""


class RequestSplitter:
    """Whole requests, each at most `max_request` bytes (None: no limit)."""

    def __init__(self, max_request: int | None = None) -> None:
        self._stream = RequestStream()
        self.max_request = max_request
        self._head: RequestHead | None = None
        self._raw = bytearray()
        self._dropping = False
        self.dropped = 0  # requests over the limit, skipped

    def leftover(self) -> bytes:
        return bytes(self._raw) + self._stream.leftover()

    def feed(self, data: bytes) -> list[WholeRequest]:
        done: list[WholeRequest] = []
        for part in self._stream.feed(data):
            if isinstance(part, RequestStart):
                self._head, self._raw, self._dropping = part.head, bytearray(part.raw), False
            elif not self._dropping:
                self._raw += part.raw
            if self.max_request is not None and len(self._raw) > self.max_request:
                if not self._dropping:
                    self.dropped += 1
                self._dropping, self._raw = True, bytearray()
            if isinstance(part, RequestEnd):
                if not self._dropping and self._head is not None:
                    done.append(WholeRequest(self._head, bytes(self._raw)))
                self._head, self._raw, self._dropping = None, bytearray(), False
        return done
