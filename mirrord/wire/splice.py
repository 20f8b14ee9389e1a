"""Two connected sockets joined both ways on event-loop callbacks: what one side reads is
written to the other in the same callback (no task, no copy beyond the kernel's), a
half-close travels along, a reset travels as a reset, and a slow side stops the other's
reads (back-pressure) instead of filling memory.

The agent passes what it does not steal on to the original service this way, and the
intproxy joins a handed-over socket to a relay.
"""

from __future__ import annotations

import asyncio
import socket

import anyio

from mirrord.wire.pipes import linger_zero

#: A side's write buffer above which the other side's reads pause.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class _Side(asyncio.Protocol):
    def __init__(self, ended: anyio.Event) -> None:
        self.ended = ended
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes | None] = []  # for the peer, before it has a transport
        self.got_eof = False  # the remote end of this side will write no more
        self.lost = False

    # what reaches this side's socket from the other one
    def write(self, data: bytes) -> None:
        if self.transport is None:
            self.early.append(data)
        elif not self.lost:
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is None:
            self.early.append(None)
        elif not self.lost and self.transport.can_write_eof():
            self.transport.write_eof()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        for item in self.early:
            if item is None:
                self.write_eof()
            else:
                self.write(item)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.write(data)

    def eof_received(self) -> bool:
        assert self.peer is not None
        self.got_eof = True
        self.peer.write_eof()
        if self.peer.got_eof and self.transport is not None:
            self.transport.close()  # both ways are done: flush, then close
            if self.peer.transport is not None:
                self.peer.transport.close()
        return True  # keep writing the other side's bytes (half-close)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            if exc is not None or not self.got_eof:
                _abort(peer.transport)  # a reset (or a close mid-stream) travels as a reset
            else:
                peer.transport.close()
        if peer is None or peer.lost or peer.transport is None:
            self.ended.set()


def _abort(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        linger_zero(sock)
    transport.abort()


async def splice_sockets(a: socket.socket, b: socket.socket) -> None:
    """Join `a` and `b` until both are done; both are closed at the end (or when cancelled)."""
    ended = anyio.Event()
    sides = _Side(ended), _Side(ended)
    sides[0].peer, sides[1].peer = sides[1], sides[0]
    loop = asyncio.get_running_loop()
    made: list[_Side] = []
    try:
        for sock, side in zip((a, b), sides, strict=True):
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.connect_accepted_socket(lambda side=side: side, sock=sock)  # type: ignore[misc]
            made.append(side)
        await ended.wait()
    finally:
        for side in sides:
            if side.transport is not None and not side.lost:
                _abort(side.transport)
        for sock in (a, b)[len(made) :]:
            sock.close()
