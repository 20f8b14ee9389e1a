"""The local end of each relayed connection of a Mux: waiting for its local end, a
socket run by loop callbacks, or a Pipe run by two tasks."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections import deque
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mirrord.protocol import Close, Credit, Eof
from mirrord.protocol.messages import MAX_CHUNK
from mirrord.wire.pipes import Pipe, linger_zero

log = logging.getLogger("mirrord")

if TYPE_CHECKING:
    from mirrord.wire.mux import Mux

#: Datagrams queued for a slow UDP receiver before new ones are dropped (UDP may drop).
UDP_QUEUE = 256
#: A local socket's write buffer above which its bytes wait (its credit is not granted).
SOCKET_HIGH_WATER = 256 * 1024
SOCKET_LOW_WATER = 64 * 1024
GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class Waiting:
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


def send_within_credit(mux: Mux, conn: int, held: deque[memoryview]) -> int | None:
    """Send from `held` as far as `conn`'s credit goes, in Data frames of at most MAX_CHUNK;
    the bytes sent, or None if the link is gone (its owner resets everything)."""
    sent = 0
    while held:
        budget = mux.send_credit.available(conn)
        if budget <= 0:
            break
        part = held[0]
        chunk = part[: min(budget, MAX_CHUNK)]
        mux.send_credit.spend(conn, len(chunk))
        try:
            mux.link.send_data(conn, chunk)
        except GONE:
            return None
        sent += len(chunk)
        if len(chunk) == len(part):
            held.popleft()
        else:
            held[0] = part[len(chunk) :]
    return sent


class SocketEnd(asyncio.Protocol):
    """A relayed TCP connection whose local end is a socket, run by loop callbacks."""

    def __init__(self, mux: Mux, waiting: Waiting) -> None:
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
        self.reading_paused = False
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
        if self.done or send_within_credit(self.mux, self.conn, self.held) is None:
            return
        self.waiting_for_credit = bool(self.held)
        self._update_reading()

    def _update_reading(self) -> None:
        if self.transport is None or self.done:
            return
        paused = self.waiting_for_credit or self.link_congested
        if paused != self.reading_paused:  # (a call per chunk would be wasted)
            self.reading_paused = paused
            if paused:
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


class Pumped:
    """A relayed connection whose local end is a Pipe, run by two tasks."""

    def __init__(self, mux: Mux, waiting: Waiting, pipe: Pipe) -> None:
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
            except GONE:
                pass

    async def run(self) -> None:
        with self.scope:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump_out)
                    tg.start_soon(self._pump_in)
            except Exception:
                # a bug in one connection's pipe must cost that connection, not the link
                log.exception("relayed connection %d failed", self.conn)
                self._reset_from_here()
                return
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
        except GONE:
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
        except GONE:
            self._reset_from_here()

    def _reset_from_here(self) -> None:
        if self.mux.forget(self.conn, self):
            self.mux.tell(Close(conn=self.conn, reset=True))
            self.abort()


End = Waiting | SocketEnd | Pumped


def is_datagram(end: object) -> bool:
    if isinstance(end, Waiting):
        return end.datagram
    if isinstance(end, Pumped):
        return end.pipe.datagram
    return False
