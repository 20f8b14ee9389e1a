"""connect() on the loop (the agent's connections from the target, the intproxy's into the
app): errno kept, timeout, cancellation; real loopback sockets, asyncio and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from helpers import event_loops

from mirrord.wire.connect import connect, connect_to

pytestmark = pytest.mark.anyio


@pytest.fixture(params=event_loops())
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@contextlib.contextmanager
def full_listener() -> Iterator[tuple[str, int]]:
    """The address of a listener whose backlog is full: the kernel drops the next SYN, so
    a connect to it waits (retransmits) instead of completing or failing."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    queued = []
    try:
        for _ in range(8):
            sock = socket.socket()
            queued.append(sock)
            sock.setblocking(False)
            sock.connect_ex(listener.getsockname())
        yield listener.getsockname()
    finally:
        listener.close()
        for sock in queued:
            sock.close()


async def test_a_connection_is_made_and_carries_bytes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = await connect_to(f"127.0.0.1:{server.getsockname()[1]}", timeout=5)
        peer, _ = server.accept()
        with sock, peer:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            sock.send(b"ping")
            assert peer.recv(4) == b"ping"


async def test_a_refused_connection_keeps_its_errno() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    with pytest.raises(OSError) as caught:
        await connect_to(f"127.0.0.1:{port}", timeout=5)
    assert caught.value.errno == errno.ECONNREFUSED
    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_a_connect_that_hangs_times_out_and_leaves_no_watcher() -> None:
    with full_listener() as address, socket.socket() as sock:
        with pytest.raises(OSError) as caught:
            await connect(sock, address, timeout=0.3)
        assert caught.value.errno == errno.ETIMEDOUT
        # the loop watches the descriptor no more (a stale watcher would fire on reuse)
        assert not asyncio.get_running_loop().remove_writer(sock.fileno())


async def test_a_cancelled_connect_leaves_no_watcher() -> None:
    with full_listener() as address, socket.socket() as sock:
        with anyio.move_on_after(0.2) as scope:
            await connect(sock, address, timeout=30)
        assert scope.cancelled_caught
        assert not asyncio.get_running_loop().remove_writer(sock.fileno())


# ------------------------------------------------------- the intproxy's one-shot relay listener


async def test_the_apps_connection_to_its_relay_is_taken_and_a_late_one_is_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mirrord.proxy import outgoing

    listener, relay = outgoing._relay_listener()
    with listener:
        app = socket.create_connection(relay)
        taken = await outgoing._accept_app(listener, relay)
        assert taken is not None
        with app, taken:
            app.send(b"hi")
            assert taken.recv(2) == b"hi"
    monkeypatch.setattr(outgoing, "RELAY_ACCEPT_TIMEOUT", 0.2)
    listener, relay = outgoing._relay_listener()
    with listener:
        with anyio.fail_after(5):
            assert await outgoing._accept_app(listener, relay) is None  # the app never came
        # no watcher is left on the listener (remove_reader says whether there was one)
        assert not asyncio.get_running_loop().remove_reader(listener.fileno())


async def test_a_relay_wait_that_is_cancelled_leaves_no_socket_behind() -> None:
    from mirrord.proxy import outgoing

    listener, relay = outgoing._relay_listener()
    with listener:
        with anyio.move_on_after(0.2):
            await outgoing._accept_app(listener, relay)
        assert not asyncio.get_running_loop().remove_reader(listener.fileno())
        app = socket.create_connection(relay)  # after the wait: nobody takes it
        with app:
            await anyio.sleep(0.05)
            app.setblocking(False)
            with pytest.raises(BlockingIOError):
                app.recv(1)  # neither data nor a close: queued, not accepted and dropped
