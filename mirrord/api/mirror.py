"""Live copies of what reaches a port of the target (mirror mode), for code to read.

A session has one mirror subscription per port (`MirrorFeed`): the intproxy connects to
a listener here once per connection the target receives and sends it a copy of what
the client sent. Every `Mirror` on that port reads the copies through its own bounded
backlog; the target answers its clients as always.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import h11

from mirrord.api.backlog import Backlog
from mirrord.api.remote import OwnedClient
from mirrord.errors import ConfigInvalid, MirrordError
from mirrord.http.head import RequestHead
from mirrord.http.split import NotHttp, RequestSplitter

#: How many copies a Mirror keeps for a reader that does not keep up.
DEFAULT_BUFFER = 10_000
#: What we answer each mirrored request with: the intproxy then keeps the connection.
_ANSWER = b"HTTP/1.1 204 No Content\r\n\r\n"


@dataclass(frozen=True)
class MirroredRequest:
    """One HTTP/1.x request a client sent to the target, as the target received it."""

    method: str
    target: str  # as on the request line: /path?query
    headers: dict[str, str]  # lower-case names; repeated ones joined by ", "
    body: bytes
    client: tuple[str, int]  # who sent it to the target
    time: datetime  # when its last byte reached this process (UTC)
    http_version: str
    raw: bytes = field(repr=False)  # exactly the bytes on the wire
    connection: int = 0  # the client's connection, numbered in this session

    @property
    def path(self) -> str:
        return urlsplit(self.target).path or "/"

    @property
    def query(self) -> str:
        return urlsplit(self.target).query


@dataclass(frozen=True)
class Chunk:
    """Bytes a client sent on one connection to the target."""

    connection: int
    client: tuple[str, int]
    time: datetime
    data: bytes


# Linux's SO_TIMESTAMPNS (x86 and asm-generic; the socket module has no name for it).
# Each connection is read by a thread of its own, so a reader's clock orders reads of
# different connections as the threads happened to run; the kernel's stamp says when
# the bytes came.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")


def _stamp_arrivals(listener: socket.socket) -> None:
    """Have the kernel stamp what reaches the sockets `listener` accepts (they inherit
    it, so bytes that come before their reader runs are stamped too)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            listener.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)


def _timed_reads(conn: socket.socket) -> Iterator[tuple[bytes, datetime]]:
    """(bytes, when the kernel received them) until EOF; the reader's clock where the
    kernel does not say."""
    while True:
        data, ancillary, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(_TIMESPEC.size))
        if not data:
            return
        yield data, _stamp(ancillary)


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> datetime:
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(value)
            return datetime.fromtimestamp(seconds + nanoseconds / 1e9, UTC)
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Capture:
    chunk: Chunk
    head: RequestHead | None  # a whole HTTP request, or None for a piece of a stream


class MirrorFeed:
    """The session's mirror subscription of one port, shared by its Mirrors."""

    def __init__(self, client: OwnedClient, port: int) -> None:
        self.port = port
        self._client = client
        self._readers: list[Mirror] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._numbers = itertools.count(1)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        _stamp_arrivals(self._listener)
        self._inode = os.fstat(self._listener.fileno()).st_ino
        self._port_here: int = self._listener.getsockname()[1]
        try:  # (each Mirror applies its own HTTP filter)
            client.subscribe(port, "mirror", "", self._listener)
        except MirrordError:
            self._shut()
            raise
        threading.Thread(target=self._accept, name=f"mirror :{port}", daemon=True).start()

    def add(self, reader: Mirror) -> None:
        with self._lock:
            self._readers.append(reader)

    def remove(self, reader: Mirror) -> bool:
        """Forget `reader`; True when it was the last one."""
        with self._lock:
            if reader in self._readers:
                self._readers.remove(reader)
            return not self._readers

    def _publish(self, capture: _Capture) -> None:
        with self._lock:
            readers = list(self._readers)
        for reader in readers:
            reader.offer(capture)

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return  # closed
            client = self._origin(peer[1])
            with self._lock:
                self._conns.add(conn)
            threading.Thread(
                target=self._read, args=(conn, client, next(self._numbers)), daemon=True
            ).start()

    def _origin(self, peer_port: int) -> tuple[str, int]:
        return self._client.origin(self._port_here, peer_port) or ("", 0)

    def _read(self, conn: socket.socket, client: tuple[str, int], number: int) -> None:
        splitter: RequestSplitter | None = RequestSplitter()
        try:
            for data, now in _timed_reads(conn):
                if splitter is not None:
                    try:
                        whole = splitter.feed(data)
                    except NotHttp:
                        data, splitter = splitter.leftover(), None
                    else:
                        for request in whole:
                            chunk = Chunk(number, client, now, request.raw)
                            self._publish(_Capture(chunk, request.head))
                            conn.sendall(_ANSWER)
                        continue
                if data:
                    self._publish(_Capture(Chunk(number, client, now, data), None))
            if splitter is not None and (rest := splitter.leftover()):
                # the client ended in the middle of what looked like HTTP: bytes after all
                self._publish(_Capture(Chunk(number, client, datetime.now(UTC), rest), None))
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        # shutdown first: a thread blocked in accept() would keep the socket listening
        # after a mere close(), and the intproxy would keep the subscription for it
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._client.release(self._inode)
        self._shut()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # the reader thread closes it
            except OSError:
                pass

    def _shut(self) -> None:
        self._listener.close()
        self._client.close()


class Mirror:
    """Copies of the traffic reaching the target's `port`, from now on.

        with session.mirror(8080, timeout=30) as mirror:
            for request in mirror.http():       # parsed HTTP/1.x requests
                print(request.method, request.path, request.client)

    `raw()` gives the bytes of every connection instead (non-HTTP protocols too).
    Iterating ends when the Mirror is closed, or after `timeout` seconds without
    anything new. A reader that falls `buffer` copies behind loses the oldest ones,
    counted in `dropped`.
    """

    def __init__(
        self,
        feed: MirrorFeed,
        *,
        http_filter: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        buffer: int = DEFAULT_BUFFER,
        on_close: Callable[[Mirror], None] = lambda mirror: None,
    ) -> None:
        self.port = feed.port
        self.timeout = timeout
        self._filter = _http_filter(http_filter)
        self._backlog: Backlog[_Capture] = Backlog(buffer)
        self._on_close = on_close
        self._feed = feed
        feed.add(self)

    @property
    def dropped(self) -> int:
        """Copies lost because the reader fell behind."""
        return self._backlog.dropped

    @property
    def closed(self) -> bool:
        return self._backlog.closed

    def offer(self, capture: _Capture) -> None:
        head = capture.head
        if self._filter is not None and (
            head is None or not self._filter.matches(head.method, head.path, head.headers)
        ):
            return
        self._backlog.put(capture)

    def next_request(self, timeout: float | None = None) -> MirroredRequest | None:
        """The next HTTP request, or None after `timeout` seconds or once closed."""
        while (capture := self._backlog.get(timeout)) is not None:
            if capture.head is not None:
                return _request(capture)
        return None

    def next_chunk(self, timeout: float | None = None) -> Chunk | None:
        capture = self._backlog.get(timeout)
        return None if capture is None else capture.chunk

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until something can be read (or the Mirror closed), taking nothing."""
        return self._backlog.wait(timeout)

    def http(self) -> Iterator[MirroredRequest]:
        while (request := self.next_request(self.timeout)) is not None:
            yield request

    def raw(self) -> Iterator[Chunk]:
        while (chunk := self.next_chunk(self.timeout)) is not None:
            yield chunk

    def __iter__(self) -> Iterator[MirroredRequest]:
        return self.http()

    def close(self) -> None:
        if not self._backlog.closed:
            self._backlog.close()
            self._on_close(self)

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _http_filter(config: Mapping[str, Any] | None) -> Any:
    if not config:
        return None
    from mirrord.http.filter import HttpFilter

    try:
        return HttpFilter.from_config(dict(config))
    except ValueError as exc:
        raise ConfigInvalid(f"http_filter: {exc}") from None


def _request(capture: _Capture) -> MirroredRequest:
    head, chunk = capture.head, capture.chunk
    assert head is not None
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(chunk.data)
    body = bytearray()
    while isinstance(event := parser.next_event(), h11.Request | h11.Data):
        if isinstance(event, h11.Data):
            body += event.data
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return MirroredRequest(
        method=head.method,
        target=head.path,
        headers=headers,
        body=bytes(body),
        client=chunk.client,
        time=chunk.time,
        http_version=head.http_version,
        raw=chunk.data,
        connection=chunk.connection,
    )
