"""connect() on an event loop, keeping the errno (agent and intproxy side)."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import anyio


async def connect(
    sock: socket.socket, address: tuple[Any, ...], timeout: float | None = None
) -> None:
    """Connect `sock` without blocking the loop. A failure is the OSError of its errno
    (anyio.connect_tcp folds it into a generic message); the caller closes the socket."""
    sock.setblocking(False)
    err = sock.connect_ex(address)
    if err == errno.EINPROGRESS:
        try:
            with anyio.fail_after(timeout):
                await anyio.wait_writable(sock)
        except TimeoutError:
            raise OSError(
                errno.ETIMEDOUT, f"connect to {address[0]}:{address[1]} timed out"
            ) from None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"connect to {address[0]}:{address[1]}: {os.strerror(err)}")
