"""Local ends of relayed connections that are not plain sockets (UDP, streams), as
Pipes with async receive/send."""

from __future__ import annotations

import socket
import struct
from typing import Protocol

import anyio
import anyio.abc


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
