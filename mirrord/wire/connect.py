"""connect() on an event loop, keeping the errno (agent and intproxy side)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Any

from mirrord.wire.wait import within


async def connect(
    sock: socket.socket, address: tuple[Any, ...] | str, timeout: float | None = None
) -> None:
    """Connect `sock` without blocking the loop. A failure is the OSError of its errno
    (anyio.connect_tcp folds it into a generic message); the caller closes the socket."""
    sock.setblocking(False)
    err = sock.connect_ex(address)
    if err in (errno.EINPROGRESS, errno.EAGAIN):  # EAGAIN: a unix socket's full backlog
        if not await _writable(sock, timeout):
            raise OSError(errno.ETIMEDOUT, f"connect to {address} timed out")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        where = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
        raise OSError(err, f"connect to {where}: {os.strerror(err)}")


async def _writable(sock: socket.socket, timeout: float | None) -> bool:
    """Wait until `sock` is writable (True) or `timeout` passed (False): a stolen
    connection of a filtered steal connects once per request."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def writable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, writable)
    try:
        return await within(ready, timeout)
    finally:
        loop.remove_writer(fd)


async def connect_to(address: str, timeout: float | None = None) -> socket.socket:
    """A socket connected to `unix:PATH` or `HOST:PORT` ([v6]:PORT)."""
    if address.startswith("unix:"):
        family, target = socket.AF_UNIX, address[5:]
    else:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        target = (host, int(port))  # type: ignore[assignment]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        await connect(sock, target, timeout)
    except BaseException:
        sock.close()
        raise
    if family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
