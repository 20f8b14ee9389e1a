"""Where the filtered steal sends requests: destinations (the original service, a
subscriber's app), their channels (one kept-alive connection each), and the client's
side, all asyncio protocols."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, cast

from mirrord.agent.http_framing import (
    MAX_HEAD,
)

if TYPE_CHECKING:
    from mirrord.agent.http_steal import _Engine

log = logging.getLogger("mirrord.agent")

#: A client that sends nothing for this long may be waiting for a server-first protocol: relay.
FIRST_BYTES_TIMEOUT = 10.0
#: How long to keep reading (and discarding) after we decided to close, so that the kernel does
#: not answer the client's unread bytes with a reset that would destroy our last response.
LINGER_TIMEOUT = 2.0
#: how long a kept-alive connection of a released port may stay idle before we close it,
#: as a server's keep-alive timeout: a client reusing it at once is not cut, and the
#: agent's rules (which it holds) can go soon after
DRAIN_IDLE_TIMEOUT = 2.0
#: Bytes of a pipelined next request we hold while the current one is answered.
MAX_PIPELINED = 2 * MAX_HEAD


class StealError(OSError):
    """A destination could not be had: the client gets the text in a 502 (503 when busy), or
    with `fallback` the request goes to the original service instead (its subscriber left)."""

    def __init__(self, text: str, status: int = 502, fallback: bool = False) -> None:
        super().__init__(text)
        self.status = status
        self.fallback = fallback


class Sink(Protocol):
    """What a channel reports to: the engine serving one client connection."""

    def target_data(self, channel: Channel, data: bytes) -> None: ...
    def target_eof(self, channel: Channel) -> None: ...
    def target_lost(self, channel: Channel, error: str) -> None: ...
    def target_paused(self, paused: bool) -> None: ...


class Channel:
    """A connection to one destination: bytes out with `write`, answers to the sink."""

    name = "destination"
    closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def write_eof(self) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def close(self, abort: bool = False) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """The engine took this channel: events held back until now may come."""


class Destination(Protocol):
    """Where `choose` sends a request; requests to an equal `key` may share a channel."""

    @property
    def key(self) -> object: ...

    async def open(self, sink: Sink) -> Channel: ...


class Drain:
    """The connections of a port that is no longer stolen: the next response on each carries
    `Connection: close`, so that the client's next request opens a connection that goes to the
    service directly, and the agent can leave without cutting a request."""

    def __init__(self) -> None:
        self.engines: set[_Engine] = set()
        self.started = False

    def start(self) -> None:
        self.started = True
        for engine in list(self.engines):
            engine.drain()


def _closing(head: bytes) -> bytes:
    """A response head with `Connection: close` added (the head ends with a blank line)."""
    blank = 2 if head.endswith(b"\n\n") else 4
    return head[:-blank] + b"\r\nconnection: close" + head[-blank:]


class _SocketChannel(Channel, asyncio.Protocol):
    """A channel over a socket (the original service; in tests, a local server too)."""

    def __init__(self, sink: Sink, name: str) -> None:
        self.sink = sink
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.eof_seen = False
        # some loops (uvloop) deliver data before connect_accepted_socket returns
        self._held: list[Callable[[], None]] | None = []

    def _event(self, call: Callable[[], None]) -> None:
        if self._held is None:
            call()
        else:
            self._held.append(call)

    def release(self) -> None:
        held, self._held = self._held or [], None
        for call in held:
            call()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # an asyncio.Transport in all but name (uvloop's are not subclasses)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._event(lambda: self.sink.target_data(self, data))

    def eof_received(self) -> bool:
        # once only: asyncio reads the EOF again if reading is resumed after it
        if not self.eof_seen:
            self.eof_seen = True
            self._event(lambda: self.sink.target_eof(self))
        return True  # keep our sending side open until the engine closes

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            error = f"{self.name}: {exc or 'connection closed'}"
            self._event(lambda: self.sink.target_lost(self, error))

    def pause_writing(self) -> None:
        self.sink.target_paused(True)

    def resume_writing(self) -> None:
        self.sink.target_paused(False)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is not None and not self.closed and self.transport.can_write_eof():
            self.transport.write_eof()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self, abort: bool = False) -> None:
        self.closed = True
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


class SocketDestination:
    """A destination reached by connecting a socket: `connect()` returns it connected."""

    def __init__(self, key: object, name: str, connect: Callable[[], Awaitable[socket.socket]]):
        self.key = key
        self.name = name
        self._connect = connect

    async def open(self, sink: Sink) -> Channel:
        try:
            sock = await self._connect()
        except OSError as exc:
            raise StealError(f"cannot connect to the {self.name}: {exc}") from None
        with contextlib.suppress(OSError):  # not on a unix socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = _SocketChannel(sink, self.name)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: channel, sock)
        except OSError as exc:
            sock.close()
            raise StealError(f"cannot connect to the {self.name}: {exc}") from None
        return channel


class _ClientProtocol(asyncio.Protocol):
    """Forwards the client's transport events to the engine (set once it exists)."""

    def __init__(self) -> None:
        self.engine: _Engine | None = None
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []
        self.eof_seen = False
        self.early_lost = False
        self.arrived = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # an asyncio.Transport in all but name (uvloop's are not subclasses)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.engine is not None:
            self.engine.client_data(data)
        else:
            self.early.append(data)
            if not self.arrived.done():
                self.arrived.set_result(None)

    def eof_received(self) -> bool:
        if self.eof_seen:
            return True  # asyncio reads the EOF again if reading is resumed after it
        self.eof_seen = True
        if self.engine is not None:
            self.engine.client_eof()
        elif not self.arrived.done():
            self.arrived.set_result(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.engine is not None:
            self.engine.client_lost()
        else:
            self.early_lost = True
            if not self.arrived.done():
                self.arrived.set_result(None)

    def pause_writing(self) -> None:
        if self.engine is not None:
            self.engine.client_paused(True)

    def resume_writing(self) -> None:
        if self.engine is not None:
            self.engine.client_paused(False)
