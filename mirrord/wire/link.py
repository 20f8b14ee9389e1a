"""A framed message link over an anyio byte stream (agent and intproxy side).

Over a unix socket a frame may carry a file descriptor (SCM_RIGHTS). Descriptors arrive
no later than the bytes of their frame and in order, so the reader queues them and the
consumer of a fd-carrying message takes the next one.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from mirrord.protocol import (
    ClientHandshake,
    Codec,
    Error,
    Message,
    ProtocolError,
    RequestFailed,
    ServerHandshake,
)
from mirrord.protocol.codec import encode

log = logging.getLogger("mirrord")
READ_SIZE = 256 * 1024
#: Descriptors one read may bring; more would be silently closed by the kernel.
MAX_FDS_PER_READ = 64


class Link:
    """Sends and receives whole messages; one writer at a time."""

    def __init__(self, stream: anyio.abc.ByteStream, accept_fds: bool = False) -> None:
        self.stream = stream
        self._codec = Codec()
        self._send_lock = anyio.Lock()
        self._fds: deque[int] = deque()
        self.can_pass_fds = isinstance(stream, anyio.abc.UNIXSocketStream)
        # only the intproxy takes descriptors (from its agent); anyone else's are closed
        self._accept_fds = accept_fds and self.can_pass_fds

    async def send(self, msg: Message, fd: int | None = None) -> None:
        frame = encode(msg)
        async with self._send_lock:
            if fd is None:
                await self.stream.send(frame)
            else:
                assert isinstance(self.stream, anyio.abc.UNIXSocketStream)
                await self.stream.send_fds(frame, [fd])

    async def receive(self) -> Message:
        """The next message; anyio.EndOfStream when the peer is gone."""
        while True:
            msg = self._codec.next_message()
            if msg is not None:
                return msg
            if self._accept_fds:
                assert isinstance(self.stream, anyio.abc.UNIXSocketStream)
                data, fds = await self.stream.receive_fds(READ_SIZE, MAX_FDS_PER_READ)
                self._fds.extend(fds)
                if len(self._fds) > MAX_FDS_PER_READ:
                    raise ProtocolError("the peer sent descriptors nobody asked for")
            else:
                data = await self.stream.receive(READ_SIZE)
            self._codec.feed(data)

    def take_fd(self) -> int:
        """The descriptor that came with the message just received."""
        if not self._fds:
            raise ProtocolError("a message announced a descriptor that did not arrive")
        return self._fds.popleft()

    async def guarded(self, handler: Callable[[Any], Awaitable[None]], msg: Any, side: str) -> None:
        """Run one request's handler; if it fails, the peer gets a RequestFailed and the
        link's other requests go on."""
        try:
            await handler(msg)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the peer is gone
        except Exception as exc:
            log.exception("request %s failed", msg.TAG)
            await self.reply_failure(msg.req, errno.EIO, f"{side}: {exc}")

    async def reply_failure(self, req: int, code: int, text: str, kind: str = "os") -> None:
        """Best effort, bounded: the peer may be gone or stuck."""
        with anyio.move_on_after(1):
            try:
                await self.send(RequestFailed(req=req, kind=kind, errno=code, message=text))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def fail(self, exc: ProtocolError) -> None:
        """Tell the peer why it is being dropped, best effort."""
        with anyio.move_on_after(1):
            try:
                await self.send(Error(code=exc.code, message=str(exc)))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def accept_handshake(self, token: str) -> str:
        """Server side of the first exchange; returns the client's name."""
        handshake = ServerHandshake(token)
        try:
            await self.send(handshake.receive(await self.receive()))
        except ProtocolError as exc:
            await self.fail(exc)
            raise
        return handshake.client

    async def handshake(self, token: str, client: str) -> None:
        """Client side of the first exchange."""
        handshake = ClientHandshake(token, client)
        await self.send(handshake.hello)
        handshake.receive(await self.receive())

    async def aclose(self) -> None:
        while self._fds:
            os.close(self._fds.popleft())
        await self.stream.aclose()
