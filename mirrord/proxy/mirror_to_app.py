"""Mirrored connections into the app: whole HTTP requests, the app's answers dropped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import h11

from mirrord.http.head import RequestHead
from mirrord.http.split import NotHttp, RequestSplitter, WholeRequest

#: How long a mirrored request waits for the app's answer before the next one goes anyway.
MIRROR_ANSWER_TIMEOUT = 10.0


class MirrorToApp:
    """Mirrored bytes into the app: the target already answered the client, so the app's
    answers are read and dropped.

    HTTP/1.x goes request by request. The app's answer to the first request tells how it
    treats connections: one that keeps them gets the following requests back to back on
    one connection; one that closes after answering (Flask's dev server, HTTP/1.0) gets
    each request on a new connection, so none is lost. A mirror HTTP filter picks which
    requests go at all. Anything that is not HTTP is copied as a plain stream.
    """

    datagram = False

    def __init__(
        self,
        first: anyio.abc.SocketStream,
        reconnect: Callable[[], Awaitable[anyio.abc.SocketStream | None]],
        http_filter: Any,
        tg: anyio.abc.TaskGroup,
    ) -> None:
        self.stream: anyio.abc.SocketStream | None = first
        self.reconnect = reconnect
        self.http_filter = http_filter
        self.tg = tg
        self.splitter: RequestSplitter | None = RequestSplitter()
        self.keeps_connections: bool | None = None  # learnt from the first answer
        self.ended = anyio.Event()

    async def send(self, data: bytes) -> None:
        if self.splitter is None:
            await self._write(data)
            return
        try:
            requests = self.splitter.feed(data)
        except NotHttp:
            leftover, self.splitter = self.splitter.leftover(), None
            await self._write(leftover)
            return
        for request in requests:
            head = request.head
            if self.http_filter is None or self.http_filter.matches(
                head.method, head.path, head.headers
            ):
                await self._deliver(request)

    async def _deliver(self, request: WholeRequest) -> None:
        if self.keeps_connections is None:
            stream = await self._app()
            await stream.send(request.raw)
            with anyio.move_on_after(MIRROR_ANSWER_TIMEOUT):
                self.keeps_connections = await _read_answer(stream, request.head)
            if self.keeps_connections is None:
                self.keeps_connections = True  # no answer yet: assume a kept connection
            if self.keeps_connections:
                self.tg.start_soon(_drain, stream)
            else:
                await self._drop_app()
        elif self.keeps_connections:
            await self._write(request.raw)
        else:
            stream = await self._app()
            self.stream = None  # this one is for this request alone
            async with stream:
                await stream.send(request.raw)
                # wait for the answer: the app then sees the client's requests in its order
                with anyio.move_on_after(MIRROR_ANSWER_TIMEOUT):
                    await _read_answer(stream, request.head)

    async def _app(self) -> anyio.abc.SocketStream:
        if self.stream is None:
            self.stream = await self.reconnect()
            if self.stream is None:
                raise anyio.BrokenResourceError
        return self.stream

    async def _write(self, data: bytes) -> None:
        if data:
            await (await self._app()).send(data)

    async def _drop_app(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await stream.aclose()

    async def receive(self, max_bytes: int) -> bytes:
        await self.ended.wait()
        raise anyio.EndOfStream

    async def send_eof(self) -> None:
        # the client is done: so is the app's copy (the drain ends when the app closes)
        if self.stream is not None:
            try:
                await self.stream.send_eof()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
        self.ended.set()

    async def close(self, reset: bool) -> None:
        await self._drop_app()
        self.ended.set()


async def _drain(stream: anyio.abc.SocketStream) -> None:
    """Read and drop the app's answers until it closes the connection."""
    async with stream:
        try:
            async for _ in stream:
                pass
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass


async def _read_answer(stream: anyio.abc.SocketStream, head: RequestHead) -> bool:
    """Read (and drop) the app's answer to `head`; False if the app closes after it."""
    tracker = h11.Connection(h11.CLIENT)
    # only the request line and Host matter for how the answer is framed
    host = head.header("host") or "mirrord"
    tracker.send(h11.Request(method=head.method, target=head.target, headers=[("Host", host)]))
    tracker.send(h11.EndOfMessage())
    while True:
        event = tracker.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive(65536)
            except anyio.EndOfStream:
                data = b""
            tracker.receive_data(data)
        elif isinstance(event, h11.EndOfMessage):
            return tracker.their_state is not h11.MUST_CLOSE
        elif isinstance(event, h11.ConnectionClosed):
            return False
