"""Cutting a client's HTTP/1.x byte stream into whole requests (sans-I/O).

Mirroring uses it to send each request to the app on its own, so that a server that
closes after one response (Flask's dev server, anything speaking HTTP/1.0) still gets
every request, and so that a mirror HTTP filter can pick requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11

from mirrord.http.head import RequestHead, buffered_bytes
from mirrord.http.sniff import sniff


@dataclass(frozen=True)
class WholeRequest:
    head: RequestHead
    raw: bytes  # exactly the bytes the client sent for this request


class NotHttp(Exception):
    """The stream is not HTTP/1.x (or stopped being parseable)."""


class RequestSplitter:
    def __init__(self) -> None:
        self._pending = bytearray()
        self._conn = h11.Connection(h11.SERVER)
        self._head: RequestHead | None = None

    def leftover(self) -> bytes:
        """What was fed but is not part of a whole request yet."""
        return bytes(self._pending)

    def feed(self, data: bytes) -> list[WholeRequest]:
        """The requests that `data` completes; NotHttp when the stream is something else."""
        self._pending += data
        # before a head is whole, its first line already tells another protocol
        if self._head is None and sniff(self._pending) is False:
            raise NotHttp("not an HTTP/1.x request line")
        self._conn.receive_data(data)
        done: list[WholeRequest] = []
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise NotHttp(str(exc)) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED:
                    raise NotHttp("the client switched protocols")
                return done
            if isinstance(event, h11.Request):
                self._head = RequestHead.from_h11(event)
            elif isinstance(event, h11.EndOfMessage):
                end = len(self._pending) - buffered_bytes(self._conn)
                assert self._head is not None
                done.append(WholeRequest(self._head, bytes(self._pending[:end])))
                rest = bytes(self._pending[end:])
                # a fresh parser per request: we never answer, so h11 would not move on
                self._pending = bytearray()
                self._conn = h11.Connection(h11.SERVER)
                self._head = None
                if rest:
                    self._pending += rest
                    self._conn.receive_data(rest)
            elif isinstance(event, h11.ConnectionClosed):
                return done
