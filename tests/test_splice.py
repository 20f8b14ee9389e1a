"""Two sockets joined on loop callbacks (the agent's pass-through to the original service):
real TCP on loopback, asyncio and uvloop, no root."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from typing import Any

import anyio
import pytest
from helpers import event_loops

from mirrord.wire.splice import splice_sockets

pytestmark = pytest.mark.anyio


@pytest.fixture(params=event_loops())
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


async def joined(server_address: tuple[str, int], tg: anyio.abc.TaskGroup) -> socket.socket:
    """A client socket joined by splice_sockets to a connection to `server_address`."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    upstream = socket.create_connection(server_address)
    tg.start_soon(splice_sockets, accepted, upstream)
    client.setblocking(False)
    return client


async def test_bytes_both_ways_and_half_closes() -> None:
    async def echo_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # to the client's half-close
        writer.write(hashlib.sha256(data).digest())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo_then_close, "127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        for size in (0, 1, 70_000, 5_000_000):
            payload = os.urandom(size)
            reader, writer = await asyncio.open_connection(
                sock=await joined(server.sockets[0].getsockname(), tg)
            )
            writer.write(payload)
            writer.write_eof()
            assert await reader.read() == hashlib.sha256(payload).digest()
            writer.close()
    server.close()


async def test_a_reset_travels_as_a_reset() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        reader, _ = await asyncio.open_connection(
            sock=await joined(server.sockets[0].getsockname(), tg)
        )
        with pytest.raises(ConnectionResetError):
            await reader.read()
    server.close()


async def test_many_at_once_end_and_leave_nothing_open() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        writer.write(b"world")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    before = len(os.listdir("/proc/self/fd"))
    async with anyio.create_task_group() as tg:

        async def one() -> bytes:
            reader, writer = await asyncio.open_connection(
                sock=await joined(server.sockets[0].getsockname(), tg)
            )
            writer.write(b"hello")
            data = await reader.read()
            writer.close()
            return data

        results = await asyncio.gather(*(one() for _ in range(100)))
    assert results == [b"world"] * 100
    await anyio.sleep(0.1)
    server.close()
    assert len(os.listdir("/proc/self/fd")) <= before + 2
