"""The Mux alone: two of them on the two ends of a real socket pair, relaying real TCP
connections on loopback, as the intproxy and the agent do (no lab, no root)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from helpers import event_loops

from mirrord.protocol import Close, Data
from mirrord.wire.link import Link
from mirrord.wire.mux import Mux

pytestmark = pytest.mark.anyio


@pytest.fixture(params=event_loops())
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


class Pair:
    """Mux `near` (the intproxy's) and `far` (the agent's), linked by a socket pair."""

    def __init__(self, near: Mux, far: Mux) -> None:
        self.near, self.far = near, far
        self.next_conn = 1

    async def relay(self, server_address: tuple[str, int]) -> socket.socket:
        """A client socket whose connection reaches `server_address` through both Muxes."""
        conn, self.next_conn = self.next_conn, self.next_conn + 1
        remote = socket.create_connection(server_address)
        await self.far.attach_socket(conn, remote)
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        local, _ = listener.accept()
        listener.close()
        self.near.open(conn, datagram=False)
        await self.near.attach_socket(conn, local)
        client.setblocking(False)
        return client


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback: a cluster agent's link is TCP."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


@asynccontextmanager
async def muxes(tcp: bool = False) -> AsyncIterator[Pair]:
    a, b = tcp_pair() if tcp else socket.socketpair()
    async with anyio.create_task_group() as tg:
        near_link, far_link = Link(a), Link(b)
        pair = Pair(Mux(near_link, tg), Mux(far_link, tg))
        near_link.start()
        far_link.start()
        try:
            yield pair
        finally:
            await near_link.aclose()
            await far_link.aclose()
            tg.cancel_scope.cancel()


@asynccontextmanager
async def server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[str, int]]:
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[:2]
    finally:
        srv.close()


async def greet_and_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HELLO\n")
    await writer.drain()
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def exchange(client: socket.socket, payload: bytes) -> tuple[bytes, bytes]:
    """Read the greeting, send `payload` and half-close, read everything to EOF."""
    reader, writer = await asyncio.open_connection(sock=client)
    greeting = await reader.readexactly(6)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    echoed = await reader.read()
    writer.close()
    return greeting, echoed


async def test_greeting_and_echo_of_every_size() -> None:
    async with muxes() as pair, server(greet_and_echo) as address:
        for size in (0, 1, 8192, 8193, 65536, 262144, 262145, 3_000_000):
            payload = os.urandom(size)
            greeting, echoed = await exchange(await pair.relay(address), payload)
            assert greeting == b"HELLO\n"
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest(), size
        # every connection is forgotten on both sides once closed
        await wait_until(lambda: not pair.near.conns and not pair.far.conns)


async def test_many_connections_at_once() -> None:
    async with muxes() as pair, server(greet_and_echo) as address:
        clients = [await pair.relay(address) for _ in range(200)]
        payloads = [os.urandom(8192 + 13 * i) for i in range(200)]
        results = await asyncio.gather(
            *(exchange(c, p) for c, p in zip(clients, payloads, strict=True))
        )
        assert [g for g, _ in results] == [b"HELLO\n"] * 200
        assert [e for _, e in results] == payloads


async def test_a_slow_reader_holds_its_sender_back() -> None:
    """A reader that does not read: the sender is held by credit, memory stays bounded."""
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        total = 0
        while data := await reader.read(65536):
            total += len(data)
        writer.write(str(total).encode())
        await writer.drain()
        writer.close()

    async with muxes() as pair, server(slow) as address:
        client = await pair.relay(address)
        reader, writer = await asyncio.open_connection(sock=client)
        chunk = b"x" * 65536
        sent = 0
        with anyio.move_on_after(2):
            while sent < 64 * 1024 * 1024:
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
        # far less than 64 MiB got through while nobody read: credit stopped the sender
        assert sent < 16 * 1024 * 1024
        release.set()
        writer.write_eof()
        assert int(await reader.read()) == sent


async def test_a_reset_travels_as_a_reset() -> None:
    async def reset_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async with muxes() as pair, server(reset_at_once) as address:
        reader, writer = await asyncio.open_connection(sock=await pair.relay(address))
        with pytest.raises(ConnectionResetError):
            while await reader.read(65536):
                pass
            writer.write(b"after the reset")
            await writer.drain()
            await reader.read(1)


async def test_frames_of_unknown_connections_are_dropped() -> None:
    async with muxes() as pair, server(greet_and_echo) as address:
        pair.far.link.send_nowait(Data(conn=999, data=b"stray"))
        pair.far.link.send_nowait(Close(conn=998, reset=True))
        greeting, echoed = await exchange(await pair.relay(address), b"still fine")
        assert (greeting, echoed) == (b"HELLO\n", b"still fine")


async def test_the_link_going_away_resets_every_connection() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with muxes() as pair, server(silent) as address:
        reader, _ = await asyncio.open_connection(sock=await pair.relay(address))
        await pair.near.close_all()  # what the intproxy does when its agent link ends
        with pytest.raises(ConnectionResetError):
            await reader.read(1)


async def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


async def test_data_right_behind_its_announcement_is_kept() -> None:
    """A server that speaks first: its greeting may come in the same read as the message
    that announces its connection, before anyone has attached a local end."""
    from mirrord.protocol import IncomingConnection

    async with muxes() as pair, server(greet_and_echo) as address:
        pair.near.announcements = lambda msg: (
            pair.near.open(msg.conn, datagram=False)
            if isinstance(msg, IncomingConnection)
            else None
        )
        announcement = IncomingConnection(
            conn=7, port=1, mode="steal", remote_host="h", remote_port=1, local_host="l",
            local_port=1,
        )  # fmt: skip
        pair.far.link.send_nowait(announcement)
        await pair.far.attach_socket(7, socket.create_connection(address))
        await anyio.sleep(0.2)  # the greeting is on its way, or here already
        assert await pair.near.link.receive() == announcement
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        local, _ = listener.accept()
        listener.close()
        await pair.near.attach_socket(7, local)
        client.setblocking(False)
        with anyio.fail_after(10):  # a lost greeting leaves the client waiting forever
            greeting, echoed = await exchange(client, b"late")
        assert (greeting, echoed) == (b"HELLO\n", b"late")


async def test_a_tcp_link_carries_connections_and_sends_small_frames_at_once() -> None:
    async with muxes(tcp=True) as pair, server(greet_and_echo) as address:
        # a Credit or a request is a small write of its own: with Nagle it would wait for
        # the peer's delayed ACK (~40 ms a round trip through a cluster agent's link)
        for mux in (pair.near, pair.far):
            assert mux.link.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        payload = os.urandom(3 * 1024 * 1024)
        greeting, echoed = await exchange(await pair.relay(address), payload)
        assert greeting == b"HELLO\n"
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
