"""Many connections over one link: relays bytes between local pipes and conn ids.

Used on both ends of the agent link: the agent attaches sockets it opened in the
target, the intproxy attaches the app's relay sockets. Frames are Data/Eof/Close/
Credit; TCP bytes are flow-controlled so that a slow reader stalls its own sender
instead of filling memory.
"""

from __future__ import annotations

import math
import socket
import struct
from dataclasses import dataclass, field
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
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class Pipe(Protocol):
    """A local endpoint of a relayed connection."""

    datagram: bool

    async def receive(self, max_bytes: int) -> bytes: ...
    async def send(self, data: bytes) -> None: ...
    async def send_eof(self) -> None: ...
    async def close(self, reset: bool) -> None: ...


class TcpPipe:
    datagram = False

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        if sock.family != socket.AF_UNIX:  # socket pairs stand in for TCP in the agent
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def receive(self, max_bytes: int) -> bytes:
        return await self.stream.receive(max_bytes)

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def close(self, reset: bool) -> None:
        if reset:
            # SO_LINGER 0: the peer sees ECONNRESET, as it would from the real remote
            sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
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


@dataclass(eq=False)
class _Conn:
    conn: int
    datagram: bool
    inbox: MemoryObjectSendStream[bytes | None]
    outbox: MemoryObjectReceiveStream[bytes | None]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    credit: anyio.Event = field(default_factory=anyio.Event)
    peer_closed: bool = False
    pipe: Pipe | None = None


class Mux:
    """Owns the relayed connections of one link; runs their pumps in `tg`."""

    def __init__(self, link: Link, tg: anyio.abc.TaskGroup) -> None:
        self.link = link
        self.tg = tg
        self.conns: dict[int, _Conn] = {}
        self.send_credit = SendCredit()
        self.receive_credit = ReceiveCredit()

    def open(self, conn: int, datagram: bool) -> None:
        """Know `conn` now: its frames are queued until `attach` gives it a pipe."""
        inbox, outbox = anyio.create_memory_object_stream[bytes | None](
            UDP_QUEUE if datagram else math.inf
        )
        self.conns[conn] = _Conn(conn, datagram, inbox, outbox)
        self.send_credit.open(conn)
        self.receive_credit.open(conn)

    def attach(self, conn: int, pipe: Pipe) -> None:
        """Start relaying between `conn` and `pipe` (opening `conn` if needed)."""
        if conn not in self.conns:
            self.open(conn, pipe.datagram)
        state = self.conns[conn]
        state.pipe = pipe
        self.tg.start_soon(self._run, state)

    async def handle(self, msg: Message) -> bool:
        """Apply a connection frame; False if `msg` is not one."""
        if isinstance(msg, Data):
            state = self.conns.get(msg.conn)
            if state is not None:
                if state.datagram:
                    try:
                        state.inbox.send_nowait(msg.data)
                    except anyio.WouldBlock:
                        pass
                else:
                    self.receive_credit.received(msg.conn, len(msg.data))
                    state.inbox.send_nowait(msg.data)
        elif isinstance(msg, Credit):
            state = self.conns.get(msg.conn)
            if state is not None:
                self.send_credit.grant(msg.conn, msg.amount)
                state.credit.set()
        elif isinstance(msg, Eof):
            state = self.conns.get(msg.conn)
            if state is not None:
                state.inbox.send_nowait(None)
        elif isinstance(msg, Close):
            state = self.conns.get(msg.conn)
            if state is None:
                pass
            elif msg.reset:
                await self._drop(state, reset=True)
            else:
                # a graceful close follows both Eofs: let our pumps flush what is queued
                state.peer_closed = True
        else:
            return False
        return True

    async def reset(self, conn: int) -> None:
        """Give up on `conn` (e.g. the app never came for it); the peer is told."""
        state = self.conns.get(conn)
        if state is not None:
            await self._abort(state)

    async def close_all(self) -> None:
        """The link is gone: reset every local pipe so the app sees an error, not a hang."""
        for state in list(self.conns.values()):
            await self._drop(state, reset=True)

    async def _run(self, state: _Conn) -> None:
        with state.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump_out, state)
                tg.start_soon(self._pump_in, state)
        if self.conns.get(state.conn) is state:
            await self._drop(state, reset=False)
            if not state.peer_closed:
                await self._tell(Close(conn=state.conn, reset=False))

    async def _pump_out(self, state: _Conn) -> None:
        """Local pipe -> link."""
        conn, pipe = state.conn, state.pipe
        assert pipe is not None
        try:
            while True:
                if pipe.datagram:
                    await self.link.send(Data(conn=conn, data=await pipe.receive(MAX_CHUNK)))
                    continue
                while (budget := self.send_credit.available(conn)) <= 0:
                    state.credit = anyio.Event()
                    await state.credit.wait()
                data = await pipe.receive(min(budget, MAX_CHUNK))
                self.send_credit.spend(conn, len(data))
                await self.link.send(Data(conn=conn, data=data))
        except anyio.EndOfStream:
            await self._tell(Eof(conn=conn))
        except _GONE:
            await self._abort(state)

    async def _pump_in(self, state: _Conn) -> None:
        """Link -> local pipe."""
        conn, pipe = state.conn, state.pipe
        assert pipe is not None
        try:
            async for data in state.outbox:
                if data is None:
                    await pipe.send_eof()
                    return
                await pipe.send(data)
                if not pipe.datagram and (grant := self.receive_credit.delivered(conn, len(data))):
                    await self.link.send(Credit(conn=conn, amount=grant))
        except _GONE:
            await self._abort(state)

    async def _abort(self, state: _Conn) -> None:
        # runs inside the scope that _drop cancels: shield the goodbye, bounded
        with anyio.move_on_after(5, shield=True):
            if self.conns.get(state.conn) is state:
                await self._drop(state, reset=True)
                await self._tell(Close(conn=state.conn, reset=True))

    async def _tell(self, msg: Message) -> None:
        try:
            await self.link.send(msg)
        except _GONE:
            pass  # the link's owner sees the broken link and cleans up

    async def _drop(self, state: _Conn, reset: bool) -> None:
        self.conns.pop(state.conn, None)
        self.send_credit.forget(state.conn)
        self.receive_credit.forget(state.conn)
        state.scope.cancel()
        state.inbox.close()
        if state.pipe is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await state.pipe.close(reset)
            except _GONE:
                pass


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
