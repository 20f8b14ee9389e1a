"""The Mux alone: two of them on the two ends of a real socket pair, relaying real TCP
connections on loopback, as the intproxy and the agent do (no lab, no root). Each test
runs with the links' data plane in Python and in the native pump (wire/pump.py)."""

from __future__ import annotations

import asyncio
import contextlib
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
from mirrord.protocol.flow import MAX_WINDOW
from mirrord.wire import pump
from mirrord.wire.handler_end import Handler
from mirrord.wire.link import Link
from mirrord.wire.mux import Mux, linger_zero

pytestmark = pytest.mark.anyio


@pytest.fixture(params=event_loops())
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


PLANE = {"native": False}


@pytest.fixture(autouse=True, params=["python", "native", "native-copying"])
def plane(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Where the Muxes' sockets are run: by the event loop, or by native pumps (which
    splice bulk bytes, or with MIRRORD_PUMP_SPLICE=0 copy them as any other)."""
    if request.param != "python":
        assert pump.available(), "the native pump is not built (python -m mirrord.native.build)"
    if request.param == "native-copying":
        monkeypatch.setenv("MIRRORD_PUMP_SPLICE", "0")
    PLANE["native"] = request.param != "python"
    yield request.param
    PLANE["native"] = False


class Pair:
    """Mux `near` (the intproxy's) and `far` (the agent's), linked by a socket pair."""

    def __init__(self, near: Mux, far: Mux) -> None:
        self.near, self.far = near, far
        self.next_conn = 1
        self.nodelay: list[int] = []

    async def relay(
        self, server_address: tuple[str, int], buffers: int | None = None
    ) -> socket.socket:
        """A client socket whose connection reaches `server_address` through both Muxes.

        `buffers`: the kernel buffer size of the sockets made here (else they autotune)."""
        conn, self.next_conn = self.next_conn, self.next_conn + 1
        await asyncio.sleep(0)  # the server (on this loop) accepts: its backlog is short
        remote = socket.create_connection(server_address)
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        local, _ = listener.accept()
        listener.close()
        if buffers is not None:
            for sock in (remote, client, local):
                fix_buffers(sock, buffers)
        await self.far.attach_socket(conn, remote)
        self.near.open(conn, datagram=False)
        await self.near.attach_socket(conn, local)
        client.setblocking(False)
        return client


def fix_buffers(sock: Any, size: int) -> None:
    """Both kernel buffers of `sock` fixed at `size` (no autotuning: some kernels let a
    loopback socket's receive buffer grow to 32 MiB)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


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
        nodelay = (
            [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in (a, b)] if tcp else []
        )
        if PLANE["native"]:
            near_link, far_link = near_link.with_pump(), far_link.with_pump()
            assert near_link.pumped and far_link.pumped
        pair = Pair(Mux(near_link, tg), Mux(far_link, tg))
        pair.nodelay = nodelay  # (the link sockets' own: a pump runs them out of our sight)
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


@pytest.mark.parametrize("tcp", [False, True], ids=["unix-link", "tcp-link"])
async def test_bulk_transfers_at_once_each_arrive_whole(tcp: bool) -> None:
    """Big payloads of several connections interleave on the link (natively, each frame's
    payload then goes by splice behind its head, and what a full link does not take is
    queued behind it)."""
    async with muxes(tcp=tcp) as pair, server(greet_and_echo) as address:
        clients = [await pair.relay(address) for _ in range(4)]
        payloads = [os.urandom(6_000_000 + 4099 * i) for i in range(4)]
        results = await asyncio.gather(
            *(exchange(c, p) for c, p in zip(clients, payloads, strict=True))
        )
        for (greeting, echoed), payload in zip(results, payloads, strict=True):
            assert greeting == b"HELLO\n"
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def test_a_connection_reset_in_the_middle_of_a_bulk_transfer_costs_the_others_nothing() -> (
    None
):
    """The server resets one upload after its first bytes while the rest of its frames are
    on the link; another upload, at the same time, arrives whole."""

    async def reset_or_count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(1)
        if first == b"r":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            writer.transport.abort()
            return
        digest, total = hashlib.sha256(first), 1
        while data := await reader.read(1 << 20):
            digest.update(data)
            total += len(data)
        writer.write(f"{total} {digest.hexdigest()}".encode())
        await writer.drain()
        writer.close()

    async def upload(client: socket.socket, payload: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(sock=client)
        try:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            return await reader.read()
        except ConnectionError:
            return b"reset"
        finally:
            writer.close()

    async with muxes() as pair, server(reset_or_count) as address:
        doomed, kept = await pair.relay(address), await pair.relay(address)
        payload = b"k" + os.urandom(20_000_000)
        results = await asyncio.gather(
            upload(doomed, b"r" + os.urandom(20_000_000)), upload(kept, payload)
        )
        assert results[0] in (b"reset", b"")
        assert results[1] == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()


#: the kernel buffers of the slow reader's sockets
BUFFERS = 256 * 1024


async def test_a_slow_reader_holds_its_sender_back() -> None:
    """A reader that does not read: the sender is held by credit, memory stays bounded."""
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fix_buffers(writer.get_extra_info("socket"), BUFFERS)
        await release.wait()
        total = 0
        while data := await reader.read(65536):
            total += len(data)
        writer.write(str(total).encode())
        await writer.drain()
        writer.close()

    async with muxes() as pair, server(slow) as address:
        client = await pair.relay(address, buffers=BUFFERS)
        reader, writer = await asyncio.open_connection(sock=client)
        chunk = b"x" * 65536
        sent = 0
        with anyio.move_on_after(2):
            while sent < 64 * 1024 * 1024:
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
        # far less than 64 MiB got through while nobody read: credit stopped the sender
        # (its window may grow to MAX_WINDOW while the kernel's buffers on the way still
        # take bytes: a fast sender sees them as a fast reader; the kernel doubles each
        # size set, for its bookkeeping)
        assert sent < MAX_WINDOW + 4 * 2 * 2 * BUFFERS + 1024 * 1024  # (+ the writer's own)
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
        with contextlib.suppress(ConnectionResetError):  # (the far side's reset, natively)
            await reader.read()

    async with muxes() as pair, server(silent) as address:
        reader, _ = await asyncio.open_connection(sock=await pair.relay(address))
        await pair.far.link.aclose()
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


async def test_frames_of_one_pass_arrive_whole_in_order_each_descriptor_with_its_frame() -> None:
    """What one pass of the loop writes leaves together; a frame with a descriptor goes in
    a call of its own, and its caller may close the descriptor as soon as it returns. Through
    a pump (a local agent handing sockets over), each descriptor still reaches the peer no
    later than the frame that announces it."""
    from mirrord.protocol import IncomingFd, Ping

    a, b = socket.socketpair()
    sender, receiver = Link(a), Link(b, accept_fds=True)
    if PLANE["native"]:
        sender = sender.with_pump()
        assert sender.pumped and sender.can_pass_fds
    pipes = [os.pipe() for _ in range(3)]
    expected: list[Any] = []
    try:
        for i in range(300):  # written without yielding to the loop (but for the pump)
            if i % 100 == 50:
                readable, _ = pipes[i // 100]
                msg: Any = IncomingFd(
                    port=i, remote_host="h", remote_port=1, local_host="l", local_port=2
                )
                sender.send_nowait(msg, readable)
                os.close(readable)  # ours to close once the call returns
            elif i % 2:
                msg = Ping(seq=i)
                sender.send_nowait(msg)
            else:
                msg = Data(conn=i, data=os.urandom(i * 37))
                sender.send_data(msg.conn, msg.data)
            expected.append(msg)
            if PLANE["native"] and i % 13 == 0:
                await asyncio.sleep(0)  # the pump gets them over several reads too
        with anyio.fail_after(10):
            for want in expected:
                got = await receiver.receive()
                assert got == want
                if isinstance(got, IncomingFd):
                    _, writable = pipes[(got.port - 50) // 100]
                    os.write(writable, b"pipe %d" % got.port)
                    fd = receiver.take_fd()
                    assert os.read(fd, 64) == b"pipe %d" % got.port
                    os.close(fd)
    finally:
        for _, writable in pipes:
            os.close(writable)
        await sender.aclose()
        await receiver.aclose()


async def test_a_tcp_link_carries_connections_and_sends_small_frames_at_once() -> None:
    async with muxes(tcp=True) as pair, server(greet_and_echo) as address:
        # a Credit or a request is a small write of its own: with Nagle it would wait for
        # the peer's delayed ACK (~40 ms a round trip through a cluster agent's link)
        assert pair.nodelay and all(pair.nodelay)
        payload = os.urandom(3 * 1024 * 1024)
        greeting, echoed = await exchange(await pair.relay(address), payload)
        assert greeting == b"HELLO\n"
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


# --------------------------------------------------------------------------- handler ends
# (the agent's HTTP engine reaches the developer's app this way: an object on the far
# side, the app's socket on the near one)


class Recorder(Handler):
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.gone: bool | None = None
        self.paused: list[bool] = []

    def peer_data(self, data: bytes) -> None:
        self.data += data

    def peer_eof(self) -> None:
        self.eof = True

    def peer_gone(self, reset: bool) -> None:
        self.gone = reset

    def send_paused(self, paused: bool) -> None:
        self.paused.append(paused)


@asynccontextmanager
async def handled(pair: Pair) -> AsyncIterator[tuple[Recorder, socket.socket]]:
    """A Recorder on the far Mux joined to an app socket (non-blocking) on the near one."""
    conn, pair.next_conn = pair.next_conn, pair.next_conn + 1
    recorder = Recorder()
    pair.far.attach_handler(conn, recorder)
    app, local = tcp_pair()
    pair.near.open(conn, datagram=False)
    await pair.near.attach_socket(conn, local)
    app.setblocking(False)
    with app:
        yield recorder, app


async def read_to_eof(sock: socket.socket) -> bytes:
    got = bytearray()
    with anyio.fail_after(10):
        while data := await asyncio.get_running_loop().sock_recv(sock, 1 << 20):
            got += data
    return bytes(got)


async def test_a_handler_end_carries_bytes_both_ways_and_ends_after_both_eofs() -> None:
    async with muxes() as pair, handled(pair) as (recorder, app):
        loop = asyncio.get_running_loop()
        payload, answer = os.urandom(3_000_000), os.urandom(2_500_000)
        assert recorder.end is not None
        recorder.end.send(payload[:1000])
        recorder.end.send(bytearray(payload[1000:]))  # (a bytearray the caller may reuse)
        recorder.end.send_eof()
        await loop.sock_sendall(app, answer)
        app.shutdown(socket.SHUT_WR)
        assert hashlib.sha256(await read_to_eof(app)).digest() == hashlib.sha256(payload).digest()
        await wait_until(lambda: recorder.gone is not None)
        assert bytes(recorder.data) == answer and recorder.eof and recorder.gone is False
        await wait_until(lambda: not pair.near.conns and not pair.far.conns)


async def test_a_handler_that_closes_or_resets_is_seen_by_the_app() -> None:
    async with muxes() as pair:
        async with handled(pair) as (recorder, app):
            assert recorder.end is not None
            recorder.end.send(b"partial answer")
            recorder.end.close()
            assert await read_to_eof(app) == b"partial answer"
        async with handled(pair) as (recorder, app):
            assert recorder.end is not None
            recorder.end.close(reset=True)
            with pytest.raises(ConnectionResetError):
                await read_to_eof(app)
        assert recorder.gone is None  # its own close is not news to the handler
        await wait_until(lambda: not pair.near.conns and not pair.far.conns)


async def test_an_app_that_resets_tells_the_handler() -> None:
    async with muxes() as pair, handled(pair) as (recorder, app):
        linger_zero(app)
        app.close()
        await wait_until(lambda: recorder.gone is not None)
        assert recorder.gone is True


async def test_a_handler_is_paused_while_the_app_does_not_read_and_holds_credit_back() -> None:
    async with muxes() as pair, handled(pair) as (recorder, app):
        end = recorder.end
        assert end is not None
        loop = asyncio.get_running_loop()
        payload = os.urandom(32 * 1024 * 1024)
        for i in range(0, len(payload), 1 << 20):
            end.send(payload[i : i + (1 << 20)])
        assert recorder.paused == [True]  # the app reads nothing: credit ran out
        # and the other way: a handler that holds credit gets no more than one window
        end.hold_credit(True)
        sending = asyncio.ensure_future(loop.sock_sendall(app, b"y" * (16 * 1024 * 1024)))
        await anyio.sleep(0.5)
        assert len(recorder.data) <= pair.far.receive_credit.window
        end.hold_credit(False)
        got = bytearray()
        while len(got) < len(payload):
            got += await loop.sock_recv(app, 1 << 20)
        assert bytes(got) == payload and recorder.paused == [True, False]
        await sending
        await wait_until(lambda: len(recorder.data) == 16 * 1024 * 1024)
