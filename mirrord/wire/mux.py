"""Many connections over one link: relays bytes between local pipes and conn ids.

Used on both ends of the agent link: the agent attaches sockets it opened in the
target, the intproxy attaches the app's relay sockets. Frames are Data/Eof/Close/
Credit; TCP bytes are flow-controlled so that a slow reader stalls its own sender
instead of filling memory.

Two kinds of local ends. A socket (`attach_socket`: every relayed TCP connection) is
driven by event-loop callbacks: the link's reader writes its Data straight into the
socket's transport and the socket's reads go straight into Data frames, with no task
and no copy per chunk. Anything else (`attach`: UDP, mirrored streams, the HTTP
engine's socket pairs) is a `Pipe` with async receive/send, pumped by two tasks.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mirrord.protocol import Close, Credit, Data, Eof, Message
from mirrord.protocol.flow import ReceiveCredit, SendCredit
from mirrord.protocol.messages import MAX_CHUNK
from mirrord.wire.link import Link

#: Datagrams queued for a slow UDP receiver before new ones are dropped (UDP may drop).
UDP_QUEUE = 256
#: A local socket's write buffer above which its bytes wait (its credit is not granted).
SOCKET_HIGH_WATER = 256 * 1024
SOCKET_LOW_WATER = 64 * 1024
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class Pipe(Protocol):
    """A local endpoint of a relayed connection that is not a plain socket."""

    datagram: bool

    async def receive(self, max_bytes: int) -> bytes: ...
    async def send(self, data: bytes) -> None: ...
    async def send_eof(self) -> None: ...
    async def close(self, reset: bool) -> None: ...


class TcpPipe:
    """An anyio byte stream as a Pipe (for streams that are not plain sockets)."""

    datagram = False

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def receive(self, max_bytes: int) -> bytes:
        return await self.stream.receive(max_bytes)

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def send_eof(self) -> None:
        await self.stream.send_eof()  # type: ignore[attr-defined]

    async def close(self, reset: bool) -> None:
        if reset:
            sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
            if sock is not None:
                linger_zero(sock)
        await self.stream.aclose()


class ConnectedUdpPipe:
    """A UDP socket connected to one remote peer (the agent side)."""

    datagram = True

    def __init__(self, sock: anyio.abc.ConnectedUDPSocket) -> None:
        self.sock = sock

    async def receive(self, max_bytes: int) -> bytes:
        return await self.sock.receive()

    async def send(self, data: bytes) -> None:
        await self.sock.send(data)

    async def send_eof(self) -> None:
        pass

    async def close(self, reset: bool) -> None:
        await self.sock.aclose()


class RelayUdpPipe:
    """A local UDP relay socket; answers go to whoever last sent to it (the app)."""

    datagram = True

    def __init__(self, sock: anyio.abc.UDPSocket) -> None:
        self.sock = sock
        self.peer: tuple[str, int] | None = None

    async def receive(self, max_bytes: int) -> bytes:
        data, peer = await self.sock.receive()
        self.peer = (peer[0], peer[1])
        return data

    async def send(self, data: bytes) -> None:
        if self.peer is not None:
            await self.sock.sendto(data, *self.peer)

    async def send_eof(self) -> None:
        pass

    async def close(self, reset: bool) -> None:
        await self.sock.aclose()


def linger_zero(sock: socket.socket) -> None:
    """Make the close a reset: the peer sees ECONNRESET, as it would from the real remote."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class _Waiting:
    """A connection known to the Mux whose local end is not attached yet: its frames wait."""

    def __init__(self, conn: int, datagram: bool) -> None:
        self.conn = conn
        self.datagram = datagram
        self.frames: deque[bytes | None] = deque()  # None is the peer's EOF
        self.peer_closed = False

    def deliver(self, data: bytes) -> None:
        if not self.datagram or len(self.frames) < UDP_QUEUE:
            self.frames.append(data)

    def deliver_eof(self) -> None:
        self.frames.append(None)

    def on_credit(self) -> None:
        pass

    def on_peer_close(self) -> None:
        self.peer_closed = True

    def abort(self) -> None:
        self.frames.clear()

    def on_congestion(self, congested: bool) -> None:
        pass


class _SocketEnd(asyncio.Protocol):
    """A relayed TCP connection whose local end is a socket, run by loop callbacks."""

    def __init__(self, mux: Mux, waiting: _Waiting) -> None:
        self.mux = mux
        self.conn = waiting.conn
        self.early = waiting.frames
        self.peer_closed = waiting.peer_closed
        self.transport: asyncio.Transport | None = None
        self.held: deque[memoryview] = deque()  # read from the socket, beyond our credit
        self.sent_eof = False  # we told the peer the local side will write no more
        self.got_eof = False  # the peer's EOF went to the local socket
        self.written = 0
        self.delivered = 0
        self.waiting_for_credit = False
        self.link_congested = mux.congested
        self.app_full = False
        self.done = False

    # -- asyncio.Protocol: the local socket ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but quack alike)
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(SOCKET_HIGH_WATER, SOCKET_LOW_WATER)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while self.early and not self.done:
            data = self.early.popleft()
            if data is None:
                self.deliver_eof()
            else:
                self.deliver(data)
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        self.held.append(memoryview(data))
        self._send_held()

    def eof_received(self) -> bool:
        self.mux.tell(Eof(conn=self.conn))
        self.sent_eof = True
        self._maybe_finished()
        return True  # keep writing the peer's bytes to the socket (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self._finish(reset=True)

    def pause_writing(self) -> None:
        self.app_full = True

    def resume_writing(self) -> None:
        self.app_full = False
        self._grant()

    # -- the Mux's side --------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self.transport is None:
            self.early.append(data)
            return
        if self.done or self.got_eof:
            return
        self.transport.write(data)
        self.written += len(data)
        if not self.app_full:
            self._grant()

    def deliver_eof(self) -> None:
        if self.transport is None:
            self.early.append(None)
            return
        if self.done or self.got_eof:
            return
        self.got_eof = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._maybe_finished()

    def on_credit(self) -> None:
        self._send_held()

    def on_peer_close(self) -> None:
        self.peer_closed = True
        self._maybe_finished()

    def on_congestion(self, congested: bool) -> None:
        self.link_congested = congested
        self._update_reading()

    def abort(self) -> None:
        """The peer reset the connection (or the link is gone): reset ours."""
        self.done = True
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                linger_zero(sock)
            self.transport.abort()

    # -- internals -------------------------------------------------------------------

    def _send_held(self) -> None:
        mux, conn = self.mux, self.conn
        while self.held and not self.done:
            budget = mux.send_credit.available(conn)
            if budget <= 0:
                break
            part = self.held[0]
            chunk = part[: min(budget, MAX_CHUNK)]
            mux.send_credit.spend(conn, len(chunk))
            try:
                mux.link.send_data(conn, chunk)
            except _GONE:
                return  # the link's owner resets everything
            if len(chunk) == len(part):
                self.held.popleft()
            else:
                self.held[0] = part[len(chunk) :]
        self.waiting_for_credit = bool(self.held)
        self._update_reading()

    def _update_reading(self) -> None:
        if self.transport is None or self.done:
            return
        if self.waiting_for_credit or self.link_congested:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _grant(self) -> None:
        assert self.transport is not None
        delivered = self.written - self.transport.get_write_buffer_size()
        if delivered > self.delivered:
            grant = self.mux.receive_credit.delivered(self.conn, delivered - self.delivered)
            self.delivered = delivered
            if grant:
                self.mux.tell(Credit(conn=self.conn, amount=grant))

    def _maybe_finished(self) -> None:
        if self.sent_eof and self.got_eof and not self.done:
            self._finish(reset=False)

    def _finish(self, reset: bool) -> None:
        """Both sides are done (or the local one failed): forget the connection."""
        self.done = True
        if self.mux.forget(self.conn, self) and (not self.peer_closed or reset):
            self.mux.tell(Close(conn=self.conn, reset=reset))
        if self.transport is not None:
            if reset:
                sock = self.transport.get_extra_info("socket")
                if sock is not None:
                    linger_zero(sock)
                self.transport.abort()
            else:
                self.transport.close()


class _Pumped:
    """A relayed connection whose local end is a Pipe, run by two tasks."""

    def __init__(self, mux: Mux, waiting: _Waiting, pipe: Pipe) -> None:
        self.mux = mux
        self.conn = waiting.conn
        self.pipe = pipe
        self.peer_closed = waiting.peer_closed
        self.scope = anyio.CancelScope()
        self.credit = anyio.Event()
        inbox: tuple[MemoryObjectSendStream[bytes | None], MemoryObjectReceiveStream[bytes | None]]
        inbox = anyio.create_memory_object_stream[bytes | None](
            UDP_QUEUE if pipe.datagram else math.inf
        )
        self.inbox, self.outbox = inbox
        for data in waiting.frames:
            self.inbox.send_nowait(data)

    def deliver(self, data: bytes) -> None:
        try:
            self.inbox.send_nowait(data)
        except (anyio.WouldBlock, anyio.ClosedResourceError):
            pass  # a slow datagram receiver loses datagrams; a closed one everything

    def deliver_eof(self) -> None:
        try:
            self.inbox.send_nowait(None)
        except anyio.ClosedResourceError:
            pass

    def on_credit(self) -> None:
        self.credit.set()

    def on_peer_close(self) -> None:
        self.peer_closed = True  # our pumps flush what is queued, then end

    def on_congestion(self, congested: bool) -> None:
        pass  # the pumps wait on the link's drain themselves

    def abort(self) -> None:
        self.scope.cancel()
        self.inbox.close()
        self.mux.tg.start_soon(self._close_pipe, True)

    async def _close_pipe(self, reset: bool) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.pipe.close(reset)
            except _GONE:
                pass

    async def run(self) -> None:
        with self.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump_out)
                tg.start_soon(self._pump_in)
        if self.mux.forget(self.conn, self):
            self.inbox.close()
            await self._close_pipe(False)
            if not self.peer_closed:
                self.mux.tell(Close(conn=self.conn, reset=False))

    async def _pump_out(self) -> None:
        """Local pipe -> link."""
        mux, conn, pipe = self.mux, self.conn, self.pipe
        try:
            while True:
                if pipe.datagram:
                    data = await pipe.receive(MAX_CHUNK)
                else:
                    while (budget := mux.send_credit.available(conn)) <= 0:
                        self.credit = anyio.Event()
                        await self.credit.wait()
                    data = await pipe.receive(min(budget, MAX_CHUNK))
                    mux.send_credit.spend(conn, len(data))
                mux.link.send_data(conn, data)
                await mux.link.drain()
        except anyio.EndOfStream:
            mux.tell(Eof(conn=conn))
        except _GONE:
            self._reset_from_here()

    async def _pump_in(self) -> None:
        """Link -> local pipe."""
        mux, conn, pipe = self.mux, self.conn, self.pipe
        try:
            async for data in self.outbox:
                if data is None:
                    await pipe.send_eof()
                    return
                await pipe.send(data)
                if not pipe.datagram and (grant := mux.receive_credit.delivered(conn, len(data))):
                    mux.tell(Credit(conn=conn, amount=grant))
        except _GONE:
            self._reset_from_here()

    def _reset_from_here(self) -> None:
        if self.mux.forget(self.conn, self):
            self.mux.tell(Close(conn=self.conn, reset=True))
            self.abort()


_End = _Waiting | _SocketEnd | _Pumped


class Mux:
    """Owns the relayed connections of one link."""

    def __init__(self, link: Link, tg: anyio.abc.TaskGroup) -> None:
        self.link = link
        self.tg = tg
        self.conns: dict[int, _End] = {}
        self.send_credit = SendCredit()
        self.receive_credit = ReceiveCredit()
        self.congested = False
        #: sees every other message as it arrives, before it is queued for its reader: a
        #: message that announces a connection opens it here, so that the Data right
        #: behind it in the same read finds it (a server that speaks first)
        self.announcements: Callable[[Message], None] | None = None
        link.frame_handler = self._on_frame
        link.on_congestion = self._on_congestion

    def open(self, conn: int, datagram: bool) -> None:
        """Know `conn` now: its frames are queued until it is attached."""
        if conn in self.conns:
            return
        self.conns[conn] = _Waiting(conn, datagram)
        self.send_credit.open(conn)
        self.receive_credit.open(conn)

    async def attach_socket(self, conn: int, sock: socket.socket) -> None:
        """Relay `conn` to and from a connected TCP (or unix stream) socket."""
        waiting = self._waiting(conn, datagram=False)
        end = _SocketEnd(self, waiting)
        self.conns[conn] = end
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: end, sock=sock)
        except OSError:
            sock.close()
            if self.forget(conn, end):
                self.tell(Close(conn=conn, reset=True))

    def attach(self, conn: int, pipe: Pipe) -> None:
        """Relay `conn` to and from `pipe` (opening `conn` if needed)."""
        waiting = self._waiting(conn, pipe.datagram)
        end = _Pumped(self, waiting, pipe)
        self.conns[conn] = end
        self.tg.start_soon(end.run)

    def _waiting(self, conn: int, datagram: bool) -> _Waiting:
        self.open(conn, datagram)
        waiting = self.conns[conn]
        if not isinstance(waiting, _Waiting):
            raise RuntimeError(f"connection {conn} is attached already")
        return waiting

    def _on_frame(self, msg: Message) -> bool:
        """Apply a connection frame as it arrives; False if `msg` is not one."""
        kind = type(msg)
        if kind is Data:
            end = self.conns.get(msg.conn)  # type: ignore[attr-defined]
            if end is not None:
                if not _is_datagram(end):
                    self.receive_credit.received(msg.conn, len(msg.data))  # type: ignore[attr-defined]
                end.deliver(msg.data)  # type: ignore[attr-defined]
        elif kind is Credit:
            end = self.conns.get(msg.conn)  # type: ignore[attr-defined]
            if end is not None:
                self.send_credit.grant(msg.conn, msg.amount)  # type: ignore[attr-defined]
                end.on_credit()
        elif kind is Eof:
            end = self.conns.get(msg.conn)  # type: ignore[attr-defined]
            if end is not None:
                end.deliver_eof()
        elif kind is Close:
            end = self.conns.get(msg.conn)  # type: ignore[attr-defined]
            if end is None:
                pass
            elif msg.reset:  # type: ignore[attr-defined]
                self.forget(msg.conn, end)  # type: ignore[attr-defined]
                end.abort()
            else:
                # a graceful close follows both Eofs: let what is queued reach the pipe
                end.on_peer_close()
        else:
            if self.announcements is not None:
                self.announcements(msg)
            return False
        return True

    def _on_congestion(self, congested: bool) -> None:
        self.congested = congested
        for end in list(self.conns.values()):
            end.on_congestion(congested)

    def forget(self, conn: int, end: _End) -> bool:
        """Drop `conn` if `end` still owns it; True if it did."""
        if self.conns.get(conn) is not end:
            return False
        del self.conns[conn]
        self.send_credit.forget(conn)
        self.receive_credit.forget(conn)
        return True

    def tell(self, msg: Message) -> None:
        try:
            self.link.send_nowait(msg)
        except _GONE:
            pass  # the link's owner sees the broken link and cleans up

    async def reset(self, conn: int) -> None:
        """Give up on `conn` (e.g. the app never came for it); the peer is told."""
        end = self.conns.get(conn)
        if end is not None and self.forget(conn, end):
            end.abort()
            self.tell(Close(conn=conn, reset=True))

    async def close_all(self) -> None:
        """The link is gone: reset every local end so the app sees an error, not a hang."""
        for conn, end in list(self.conns.items()):
            self.forget(conn, end)
            end.abort()


def _is_datagram(end: _End) -> bool:
    if isinstance(end, _Waiting):
        return end.datagram
    if isinstance(end, _Pumped):
        return end.pipe.datagram
    return False


async def splice(a: anyio.abc.ByteStream, b: anyio.abc.ByteStream) -> None:
    """Copy both ways until both sides are done; half-closes travel along."""

    async def copy(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
        try:
            async for chunk in src:
                await dst.send(chunk)
            await dst.send_eof()  # type: ignore[attr-defined]
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(copy, a, b)
        tg.start_soon(copy, b, a)
