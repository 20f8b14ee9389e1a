"""The native data plane of a link (wire/pump.py, native/src/pump.c) against peers that
misbehave, go away, or pass descriptors; the relaying itself is tests/test_mux.py's (each
of its tests runs on pumps too). Real sockets on loopback, no root."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from typing import Any

import anyio
import msgpack
import pytest

from mirrord.protocol import Data, IncomingFd, Ping, Pong, ProtocolError
from mirrord.protocol.codec import encode
from mirrord.protocol.flow import INITIAL_WINDOW
from mirrord.protocol.messages import MAX_CHUNK
from mirrord.protocol.pump import PumpSync
from mirrord.wire import pump
from mirrord.wire.link import Link
from mirrord.wire.mux import Mux

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def built() -> None:
    assert pump.available(), "the native pump is not built (python -m mirrord.native.build)"


def pump_threads() -> int:
    return sum(1 for t in os.listdir(f"/proc/{os.getpid()}/task")) - threading.active_count()


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


def frame(body: dict[str, Any]) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


async def test_a_peer_that_sends_a_local_message_ends_the_link() -> None:
    """pump_* messages pass between Python and its pump only; from a peer they would let
    it release frames out of order."""
    ours, peer = socket.socketpair()
    link = Link(ours).with_pump()
    assert link.pumped
    peer.sendall(encode(Ping(seq=1)) + encode(PumpSync(conn=3)) + encode(Ping(seq=2)))
    with anyio.fail_after(5):
        assert await link.receive() == Ping(seq=1)
        with pytest.raises(ProtocolError, match="only this process"):
            await link.receive()
    await link.aclose()
    peer.close()


async def test_a_peer_that_overruns_a_window_ends_the_link() -> None:
    ours, peer = socket.socketpair()
    async with anyio.create_task_group() as tg:
        link = Link(ours).with_pump()
        mux = Mux(link, tg)
        app, local = socket.socketpair()
        await mux.attach_socket(5, local)
        link.start()
        chunk = b"x" * MAX_CHUNK
        for _ in range(INITIAL_WINDOW // MAX_CHUNK + 1):  # one chunk beyond the window
            peer.sendall(encode(Data(conn=5, data=chunk)))
        with anyio.fail_after(5):
            while True:  # (the app reads nothing: the pump keeps what it cannot write)
                try:
                    msg = await link.receive()
                except ProtocolError as exc:
                    assert "overran its flow-control window" in str(exc)
                    break
                raise AssertionError(f"unexpected {msg}")
        await link.aclose()
        tg.cancel_scope.cancel()
    app.close()
    peer.close()


async def test_garbage_from_the_peer_is_named_by_the_decoder() -> None:
    ours, peer = socket.socketpair()
    link = Link(ours).with_pump()
    peer.sendall(frame({"t": "ping", "seq": 1}) + struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    with anyio.fail_after(5):
        assert await link.receive() == Ping(seq=1)
        with pytest.raises(ProtocolError, match="undecodable"):
            await link.receive()
    peer.sendall(struct.pack(">I", 1 << 30))  # over the frame limit: nothing more is read
    await link.aclose()
    peer.close()


async def test_closing_the_link_ends_its_pump_and_resets_what_it_ran() -> None:
    before = pump_threads()
    ours, peer = socket.socketpair()
    async with anyio.create_task_group() as tg:
        link = Link(ours).with_pump()
        mux = Mux(link, tg)
        link.start()
        app, local = socket.socketpair()
        await mux.attach_socket(9, local)
        await wait_until(lambda: pump_threads() == before + 1)
        await link.aclose()
        tg.cancel_scope.cancel()
    await wait_until(lambda: pump_threads() == before)
    peer.settimeout(5)
    assert peer.recv(1 << 20) == b""  # the link's socket is closed
    app.settimeout(5)
    assert app.recv(1) == b""  # the attached socket went with the pump (a unix pair: no RST)
    app.close()
    peer.close()


async def test_a_peer_that_goes_away_resets_the_connections_and_the_link_ends() -> None:
    ours, peer = socket.socketpair()
    async with anyio.create_task_group() as tg:
        link = Link(ours).with_pump()
        mux = Mux(link, tg)
        link.start()
        listener = socket.create_server(("127.0.0.1", 0))
        app = socket.create_connection(listener.getsockname())
        local, _ = listener.accept()
        listener.close()
        await mux.attach_socket(4, local)
        peer.sendall(encode(Data(conn=4, data=b"half a reply")))
        app.settimeout(5)
        assert await anyio.to_thread.run_sync(app.recv, 64) == b"half a reply"
        peer.close()  # the agent is killed mid-connection
        with pytest.raises(ConnectionResetError):
            await anyio.to_thread.run_sync(app.recv, 64)  # a reset, not a clean end
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await link.receive()
        await link.aclose()
        tg.cancel_scope.cancel()
    app.close()


async def test_descriptors_go_through_the_pump_each_with_its_frame() -> None:
    """The agent hands sockets over through its pump (a local agent's unix link): each
    descriptor reaches the intproxy no later than the frame that announces it."""
    a, b = socket.socketpair()
    sender = Link(a).with_pump()
    assert sender.pumped and sender.can_pass_fds
    receiver = Link(b, accept_fds=True)
    pipes = [os.pipe() for _ in range(5)]
    expected: list[Any] = []
    try:
        for i in range(200):
            if i % 40 == 7:
                readable, _ = pipes[i // 40]
                msg: Any = IncomingFd(
                    port=i, remote_host="h", remote_port=1, local_host="l", local_port=2
                )
                sender.send_nowait(msg, readable)
                os.close(readable)
            elif i % 2:
                msg = Ping(seq=i)
                sender.send_nowait(msg)
            else:
                msg = Pong(seq=i)
                sender.send_nowait(msg)
            expected.append(msg)
            if i % 13 == 0:
                await asyncio.sleep(0)  # some in a pass of their own
        with anyio.fail_after(10):
            for want in expected:
                got = await receiver.receive()
                assert got == want
                if isinstance(got, IncomingFd):
                    _, writable = pipes[(got.port - 7) // 40]
                    os.write(writable, b"pipe %d" % got.port)
                    fd = receiver.take_fd()
                    assert os.read(fd, 64) == b"pipe %d" % got.port
                    os.close(fd)
    finally:
        for _, writable in pipes:
            os.close(writable)
        await sender.aclose()
        await receiver.aclose()


async def test_without_the_library_links_stay_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pump, "_tried", True)
    monkeypatch.setattr(pump, "_lib", None)
    ours, peer = socket.socketpair()
    link = Link(ours)
    assert link.with_pump() is link and not link.pumped
    peer.sendall(encode(Ping(seq=1)))
    with anyio.fail_after(5):
        assert await link.receive() == Ping(seq=1)
    await link.aclose()
    peer.close()
