"""Serving links: one accept loop and one life of a served link, for the agent (its
clients: intproxies, the CLI) and the intproxy (its layers) alike."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import anyio
import anyio.abc

from mirrord.protocol import ProtocolError
from mirrord.wire.link import Link

log = logging.getLogger("mirrord")
HANDSHAKE_TIMEOUT = 10.0
#: Back-off when accept() fails for want of descriptors (EMFILE/ENFILE): the ones in use
#: are released as connections end, and the loop must outlive the shortage.
ACCEPT_BACKOFF = 0.1
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


async def accept_forever(
    listener: socket.socket, handle: Callable[[socket.socket], Coroutine[Any, Any, None]]
) -> None:
    """Accept connections on `listener` and run `handle` for each in a task of its own."""
    listener.setblocking(False)
    async with anyio.create_task_group() as tg:
        while True:
            await anyio.wait_readable(listener)
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:
                if exc.errno not in _OUT_OF_DESCRIPTORS:
                    raise
                log.warning("cannot accept a connection: %s; retrying", exc.strerror)
                await anyio.sleep(ACCEPT_BACKOFF)
                continue
            tg.start_soon(_isolated, handle, conn)


async def _isolated(
    handle: Callable[[socket.socket], Coroutine[Any, Any, None]], conn: socket.socket
) -> None:
    """One connection's failure is logged and ends that connection alone."""
    try:
        await handle(conn)
    except Exception:
        log.exception("a served connection failed")


class Session(Protocol):
    """What serves one link once its peer has introduced itself."""

    async def serve(self) -> None: ...
    async def aclose(self) -> None: ...


async def serve_link(
    sock: socket.socket,
    token: str,
    open_session: Callable[[Link, anyio.abc.TaskGroup, str], Session],
    role: str,
    accept_fds: bool = False,
    native: bool = False,
) -> None:
    """The life of one served link: the handshake (token and version), then the
    session's requests until the peer goes; a peer that breaks the protocol is told why
    and dropped, and the session's own cleanup always runs. `native`: the link's data
    plane goes to a native pump after the handshake (wire/pump.py)."""
    try:
        link = Link(sock, accept_fds=accept_fds)
    except OSError:
        sock.close()
        return
    try:
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            peer = await link.accept_handshake(token)
            if native:
                await link.flush()  # (the welcome is ours to send, not the pump's)
                link = link.with_pump()
    except (
        ProtocolError,
        TimeoutError,
        anyio.EndOfStream,
        anyio.BrokenResourceError,
        OSError,
    ) as exc:
        log.warning("%s: a peer was dropped during the handshake: %r", role, exc)
        await link.aclose()
        return
    log.info("%s: %s connected", role, peer)
    try:
        async with anyio.create_task_group() as tg:
            session = open_session(link, tg, peer)
            try:
                await session.serve()
            except ProtocolError as exc:
                log.warning("%s: %s broke the protocol: %s", role, peer, exc)
                await link.fail(exc)
            except (
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ):
                log.info("%s: %s disconnected", role, peer)
            finally:
                with anyio.CancelScope(shield=True):
                    await session.aclose()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await link.aclose()
