"""Mirrored connections into the app: HTTP request by request, the app's answers dropped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import h11

from mirrord.http.head import RequestHead
from mirrord.http.split import NotHttp, RequestEnd, RequestStart, RequestStream

#: How long a mirrored request waits for the app's answer before the next one goes anyway.
MIRROR_ANSWER_TIMEOUT = 10.0


class MirrorToApp:
    """Mirrored bytes into the app: the target already answered the client, so the app's
    answers are read and dropped.

    HTTP/1.x goes request by request, each as it arrives (a large body streams through,
    it is never held whole). The app's answer to the first request tells how it treats
    connections: one that keeps them gets the following requests back to back on one
    connection; one that closes after answering (Flask's dev server, HTTP/1.0) gets each
    request on a new connection, so none is lost. A mirror HTTP filter picks which
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
        self.requests: RequestStream | None = RequestStream()
        self.keeps_connections: bool | None = None  # learnt from the first answer
        self.ended = anyio.Event()
        self._head: RequestHead | None = None  # of the request going to the app now
        self._to: anyio.abc.SocketStream | None = None  # where it goes
        self._draining: anyio.abc.SocketStream | None = None

    async def send(self, data: bytes) -> None:
        if self.requests is None:
            await self._write(data)
            return
        try:
            parts = self.requests.feed(data)
        except NotHttp:
            leftover, self.requests = self.requests.leftover(), None
            await self._write(leftover)
            return
        for part in parts:
            if isinstance(part, RequestStart):
                head = part.head
                if self.http_filter is None or self.http_filter.matches(
                    head.method, head.path, head.headers
                ):
                    self._head, self._to = head, await self._connection_for_request()
            if self._to is None:
                continue  # a request the filter leaves out
            await self._to.send(part.raw)
            if isinstance(part, RequestEnd):
                await self._request_sent()

    async def _connection_for_request(self) -> anyio.abc.SocketStream:
        if self.keeps_connections is False:
            self.stream = None  # each request on a connection of its own
            stream = await self.reconnect()
            if stream is None:
                raise anyio.BrokenResourceError
            return stream
        return await self._app()

    async def _request_sent(self) -> None:
        stream, head = self._to, self._head
        self._to = self._head = None
        assert stream is not None and head is not None
        if self.keeps_connections is None:
            with anyio.move_on_after(MIRROR_ANSWER_TIMEOUT):
                self.keeps_connections = await _read_answer(stream, head)
            if self.keeps_connections is None:
                self.keeps_connections = True  # no answer yet: assume a kept connection
            if self.keeps_connections:
                self._draining = stream  # the drain closes it, once the app is done
                self.tg.start_soon(_drain, stream, self.ended)
            else:
                await self._drop_app()
        elif not self.keeps_connections:
            async with stream:
                # wait for the answer: the app then sees the client's requests in its order
                with anyio.move_on_after(MIRROR_ANSWER_TIMEOUT):
                    await _read_answer(stream, head)

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
            if stream is not self._draining:  # (closing under the app's answers: EPIPE)
                await stream.aclose()

    async def receive(self, max_bytes: int) -> bytes:
        await self.ended.wait()
        raise anyio.EndOfStream

    async def send_eof(self) -> None:
        # the client is done: so is the app's copy (the drain ends when the app closes)
        for stream in {self.stream, self._to} - {None}:
            try:
                await stream.send_eof()  # type: ignore[union-attr]
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
        self.ended.set()

    async def close(self, reset: bool) -> None:
        await self._drop_app()
        if self._to is not None:  # a request of its own connection, cut short
            to, self._to = self._to, None
            await to.aclose()
        self.ended.set()


async def _drain(stream: anyio.abc.SocketStream, ended: anyio.Event) -> None:
    """Read and drop the app's answers until it closes the connection, or until it has
    had MIRROR_ANSWER_TIMEOUT to answer after the client's end."""

    async def give_up_after_the_end(scope: anyio.CancelScope) -> None:
        await ended.wait()
        await anyio.sleep(MIRROR_ANSWER_TIMEOUT)
        scope.cancel()

    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(give_up_after_the_end, tg.cancel_scope)
        try:
            async for _ in stream:
                pass
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        tg.cancel_scope.cancel()


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
