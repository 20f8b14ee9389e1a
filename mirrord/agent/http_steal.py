"""Filtered steal: serve one stolen HTTP/1.x client connection request by request.

Each request on the (kept-alive) client connection is routed on its own by ``choose``: to the
developer's app, or (None) to the original service. One connection to each destination serves
every request of the client connection while both ends keep it alive. Requests are handled one
at a time, so responses reach the client in order; a pipelining client's next request waits in
a bounded buffer.

Only heads are parsed (`http_framing`); the bytes forwarded are the bytes received, never
re-serialised. The data path is asyncio protocol callbacks: a chunk of a body goes from one
socket to the other in the callback that received it, with no task switch and no copy beyond
the kernel's. The one coroutine per connection only opens destinations and waits for the end.

Whatever cannot be followed (not HTTP/1.x, an accepted Upgrade or CONNECT, a framing error) is
relayed raw, both ways, from that point on, to where the current request was going (the original
service if no request was read yet): no byte of the client is dropped. A destination that fails
before answering gets the client a ``502 Bad Gateway`` naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import cast

from mirrord.agent.http_destinations import (
    DRAIN_IDLE_TIMEOUT,
    FIRST_BYTES_TIMEOUT,
    LINGER_TIMEOUT,
    MAX_PIPELINED,
    Channel,
    Destination,
    Drain,
    SocketDestination,
    StealError,
    _ClientProtocol,
    _closing,
)
from mirrord.agent.http_framing import (
    NotHttp,
    Request,
    Response,
    parse_request,
    parse_response,
)
from mirrord.http.head import RequestHead
from mirrord.wire.wait import within

__all__ = [
    "Channel",
    "Destination",
    "Drain",
    "RequestHead",
    "SocketDestination",
    "StealError",
    "serve_stolen_http",
]

log = logging.getLogger("mirrord.agent")


class _Engine:
    """The state of one client connection: the request in flight and where it went."""

    def __init__(
        self,
        client: asyncio.Transport,
        choose: Callable[[RequestHead], Destination | None],
        original: Destination,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.choose = choose
        self.original = original
        self.buf = bytearray()  # client bytes not yet forwarded
        self.client_eof_seen = False
        self.phase = "head"  # head, route, body, wait, raw, closing, done
        self.request: Request | None = None
        self.response: Response | None = None
        self.rbuf = bytearray()  # a response head not yet complete
        self.response_started = False
        self.got_100 = False
        self.channel: Channel | None = None
        self._key: object = None  # the destination of `channel`
        self.idle: dict[object, Channel] = {}  # kept-alive channels between requests
        self.raw_eofs = 0
        self._pauses: set[str] = set()
        self._wake: asyncio.Future[None] = self.loop.create_future()
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self._linger: asyncio.TimerHandle | None = None
        self._idle_close: asyncio.TimerHandle | None = None
        self.draining = False

    def drain(self) -> None:
        # the next response tells the client to close (no race with its next request);
        # a kept-alive connection that stays idle is closed after a while, as servers
        # close idle ones: it would otherwise hold our rules (StealService._retire_rules)
        # for as long as the client keeps it
        self.draining = True
        if self.request is not None:
            self._idle_close = self.loop.call_later(DRAIN_IDLE_TIMEOUT, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._idle_close = None
        if self.between_requests and self.phase == "head":
            self._close_after_response()

    @property
    def between_requests(self) -> bool:
        """Nothing of the next request received yet: closing now loses nothing."""
        return self.phase == "head" and not self.buf

    # --- flow control of the client's reading ---------------------------------------------

    def _pause(self, reason: str) -> None:
        if not self._pauses:
            with contextlib.suppress(RuntimeError):
                self.client.pause_reading()
        self._pauses.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._pauses:
            self._pauses.discard(reason)
            if not self._pauses and not self.client.is_closing():
                with contextlib.suppress(RuntimeError):
                    self.client.resume_reading()

    def client_paused(self, paused: bool) -> None:
        channel = self.channel
        if channel is not None and not channel.closed:
            channel.pause_reading() if paused else channel.resume_reading()

    def target_paused(self, paused: bool) -> None:
        self._pause("target") if paused else self._resume("target")

    # --- the client -------------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self.phase == "body":
            self._forward_body(data)
        elif self.phase == "raw":
            assert self.channel is not None
            self.channel.write(data)
        elif self.phase in ("head", "route", "wait"):
            self.buf += data
            if self.phase == "head":
                self._next_head()
            elif self.phase == "wait" and len(self.buf) > MAX_PIPELINED:
                self._pause("pipelined")  # (while routing, reading is paused already)
        # closing: discarded (linger), done: nothing

    def client_eof(self) -> None:
        self.client_eof_seen = True
        if self.phase == "raw":
            assert self.channel is not None
            self.channel.write_eof()
            self._raw_eof()
        elif self.phase == "closing" or (self.phase == "head" and not self.buf):
            self._finish()
        elif self.phase in ("head", "body"):
            self._finish(abort=True)  # the client gave up mid-request
        # route, wait: the request is whole; answer it, then close

    def client_lost(self) -> None:
        self._finish(abort=True)

    def _next_head(self) -> None:
        """Parse the next request head from `buf` (phase head), and have it routed."""
        if self.request is not None:  # between requests: blank lines may be ignored
            stripped = self.buf.lstrip(b"\r\n")
            if len(stripped) != len(self.buf):
                self.buf = bytearray(stripped)
        if not self.buf:
            if self.client_eof_seen:
                self._finish()
            return
        try:
            request = parse_request(self.buf)
        except NotHttp:
            self._go_raw_to_original()
            return
        if request is None:
            if self.client_eof_seen:
                self._go_raw_to_original()
            return
        self.request = request
        self.phase = "route"
        self._pause("route")
        self._wakeup()

    def _forward_body(self, data: bytes | bytearray) -> None:
        request, channel = self.request, self.channel
        assert request is not None and channel is not None
        try:
            end = request.body.feed(data)
        except NotHttp:
            channel.write(data)
            self._go_raw()
            return
        if end == len(data):
            channel.write(data)
        else:
            channel.write(memoryview(data)[:end])
            self.buf += memoryview(data)[end:]
        if request.body.done:
            self._request_done()

    def _request_done(self) -> None:
        self.phase = "wait"
        if len(self.buf) > MAX_PIPELINED:
            self._pause("pipelined")
        if self.response is not None and self.response.body.done:
            self._exchange_done()

    # --- the destination ----------------------------------------------------------------------

    def target_data(self, channel: Channel, data: bytes) -> None:
        if channel is not self.channel:
            # an idle kept-alive channel spoke unasked: it is not reusable
            self._drop_idle(channel)
            return
        if self.phase == "raw":
            self.client.write(data)
            return
        if self.phase not in ("body", "wait"):
            return
        request = self.request
        assert request is not None
        if self.rbuf:
            self.rbuf += data
            data, self.rbuf = bytes(self.rbuf), bytearray()
        pos = 0
        try:
            while pos < len(data):
                response = self.response
                if response is None:
                    response = parse_response(data, pos, request)
                    if response is None:
                        self.rbuf += memoryview(data)[pos:]
                        break
                    if response.status < 200 and not response.switched:
                        self.got_100 = self.got_100 or response.status == 100
                        self._to_client(memoryview(data)[pos : pos + response.raw_length])
                        pos += response.raw_length
                        continue
                    self.response = response
                    if response.switched:
                        self._to_client(memoryview(data)[pos:])
                        self._go_raw()
                        return
                    head_end = pos + response.raw_length
                    end = response.body.feed(data, head_end)
                    if self.draining:  # the one change we make: tell the client to go
                        response.keep_alive = False
                        self._to_client(_closing(data[pos:head_end]))
                        self._to_client(memoryview(data)[head_end:end])
                    else:
                        self._to_client(memoryview(data)[pos:end])
                    pos = end
                else:
                    end = response.body.feed(data, pos)
                    self._to_client(memoryview(data)[pos:end] if pos or end < len(data) else data)
                    pos = end
                if self.response is not None and self.response.body.done:
                    if pos < len(data):  # bytes after the response: not ours to forward
                        self.response.keep_alive = False
                    self._response_done()
                    return
        except NotHttp:  # what we could not follow goes on unchanged, and raw from now on
            self._to_client(memoryview(data)[pos:])
            self._go_raw()

    def _to_client(self, data: bytes | memoryview) -> None:
        if data:
            self.response_started = True
            self.client.write(data)

    def target_eof(self, channel: Channel) -> None:
        if channel is not self.channel:
            self._drop_idle(channel)
        elif self.phase == "raw":
            self.client.write_eof() if self.client.can_write_eof() else None
            self._raw_eof()
        elif self.response is not None and self.response.body.until_close:
            self.response.body.done = True
            self.response.keep_alive = False
            self._response_done()
        elif self.phase in ("body", "wait", "route"):
            self._target_failed(f"the {channel.name} closed the connection")

    def target_lost(self, channel: Channel, error: str) -> None:
        if channel is not self.channel:
            self._drop_idle(channel)
        elif self.phase == "raw":
            self._finish(abort=True)
        elif self.response is not None and self.response.body.until_close:
            self.target_eof(channel)
        elif self.phase in ("body", "wait", "route"):
            self._target_failed(error)

    def _target_failed(self, error: str) -> None:
        if self.response_started:
            self._finish(abort=True)  # the client saw part of a response: only closing tells
        else:
            self.bad_gateway(error)

    def _drop_idle(self, channel: Channel) -> None:
        for key, kept in list(self.idle.items()):
            if kept is channel:
                del self.idle[key]
        channel.close()

    def _response_done(self) -> None:
        request = self.request
        assert request is not None
        if self.phase == "body":
            # the final response came before the whole request body: if the destination goes
            # on reading, so do we; if it closes, or the client waits for a 100, stop here
            response = self.response
            assert response is not None
            if not response.keep_alive or (request.expects_continue and not self.got_100):
                self._close_after_response()
            return
        self._exchange_done()

    def _exchange_done(self) -> None:
        request, response, channel = self.request, self.response, self.channel
        assert request is not None and response is not None and channel is not None
        if (
            not (request.keep_alive and response.keep_alive)
            or self.client_eof_seen
            or self.draining
        ):
            self._close_after_response()
            return
        self.idle[self._key] = channel
        self.channel, self.response, self.got_100, self.response_started = None, None, False, False
        self.phase = "head"
        self._resume("pipelined")
        self._next_head()

    # --- endings --------------------------------------------------------------------------------

    def bad_gateway(self, reason: str, status: int = 502) -> None:
        log.info("stolen request failed: %s", reason)
        body = f"mirrord: {reason}\n".encode("utf-8", "replace")
        title = b"Bad Gateway" if status == 502 else b"Service Unavailable"
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, title, len(body))
        )
        method = self.request.method if self.request is not None else b""
        if not self.client.is_closing():
            self.client.write(head if method == b"HEAD" else head + body)
        self._close_after_response()

    def _close_after_response(self) -> None:
        """Half-close to the client and discard what it still sends, for a little while.

        Closing a socket with unread bytes makes the kernel send a reset, and the client may
        then lose the response it has not read yet."""
        for channel in (self.channel, *self.idle.values()):
            if channel is not None:
                channel.close()
        self.channel = None
        self.idle.clear()
        if self.client_eof_seen or self.client.is_closing():
            self._finish()
            return
        self.phase = "closing"
        self._pauses.clear()
        with contextlib.suppress(RuntimeError):
            self.client.resume_reading()
        if self.client.can_write_eof():
            self.client.write_eof()
        self._linger = self.loop.call_later(LINGER_TIMEOUT, self._finish)

    def _finish(self, abort: bool = False) -> None:
        if self.phase == "done":
            return
        self.phase = "done"
        for timer in (self._linger, self._idle_close):
            if timer is not None:
                timer.cancel()
        for channel in (self.channel, *self.idle.values()):
            if channel is not None:
                channel.close(abort=abort)
        self.channel = None
        self.idle.clear()
        if abort:
            self.client.abort()
        else:
            self.client.close()
        if not self.finished.done():
            self.finished.set_result(None)
        self._wakeup()

    # --- raw relay ------------------------------------------------------------------------------

    def _go_raw_to_original(self) -> None:
        self.request = None
        self.phase = "route"
        self._pause("route")
        self._wakeup()

    def _go_raw(self) -> None:
        """From here on, bytes pass unchanged both ways between client and the channel."""
        channel = self.channel
        assert channel is not None
        for key, kept in list(self.idle.items()):
            kept.close()
            del self.idle[key]
        self.phase = "raw"
        self._pauses.discard("pipelined")
        self._pauses.discard("route")
        if self.buf:
            channel.write(self.buf)
            self.buf = bytearray()
        if self.rbuf:
            self.client.write(self.rbuf)
            self.rbuf = bytearray()
        if self.client_eof_seen:
            channel.write_eof()
            self._raw_eof()
        if not self._pauses:
            with contextlib.suppress(RuntimeError):
                self.client.resume_reading()

    def _raw_eof(self) -> None:
        self.raw_eofs += 1
        if self.raw_eofs == 2:
            self._finish()

    # --- the coroutine side: opening destinations ---------------------------------------------

    def _wakeup(self) -> None:
        if not self._wake.done():
            self._wake.set_result(None)

    async def run(self) -> None:
        while self.phase != "done":
            await self._wake
            self._wake = self.loop.create_future()
            if self.phase == "route":
                await self._route()

    async def _route(self) -> None:
        request = self.request
        if request is None:  # not HTTP: the rest goes raw to a fresh connection to the original
            idle = self.idle.pop(self.original.key, None)
            if idle is not None:
                idle.close()
            try:
                channel = await self._channel(self.original)
            except StealError:
                self._finish(abort=True)
                return
            if self.phase != "route":  # the client went away meanwhile
                channel.close()
                return
            self.channel = channel
            self._go_raw()
            channel.release()
            return
        destination = self.choose(request.head) or self.original
        try:
            try:
                channel = await self._channel(destination)
            except StealError as exc:
                if not exc.fallback:
                    raise
                log.info("%s: the request goes to the original service", exc)
                destination = self.original
                channel = await self._channel(destination)
        except StealError as exc:
            if self.phase == "route":
                self.bad_gateway(str(exc), exc.status)
            return
        if self.phase != "route":  # the client went away meanwhile
            channel.close()
            return
        self.channel = channel
        self._key = destination.key
        self.phase = "body"
        channel.release()
        head, self.buf = self.buf[: request.raw_length], self.buf[request.raw_length :]
        channel.write(head)
        pending, self.buf = self.buf, bytearray()
        self._resume("route")
        if request.body.done:
            self.buf = pending
            self._request_done()
        elif pending:
            self._forward_body(pending)
        if self.phase == "body" and self.client_eof_seen:
            self._finish(abort=True)  # the client ended before its request did

    async def _channel(self, destination: Destination) -> Channel:
        kept = self.idle.pop(destination.key, None)
        if kept is not None and not kept.closed:
            return kept
        return await destination.open(self)


async def serve_stolen_http(
    client: socket.socket,
    choose: Callable[[RequestHead], Destination | None],
    original: Destination,
    *,
    first_bytes_timeout: float = FIRST_BYTES_TIMEOUT,
    drain: Drain | None = None,
) -> None:
    """Serve one stolen client connection until it ends, then close everything involved.

    `choose(head)` gives the destination of a request, or None for `original`. A destination
    failing to open (StealError) is answered with its status (502, or 503 when busy). A client
    that sends nothing for `first_bytes_timeout` seconds is relayed raw to the original service.
    When `drain` starts, the connection closes once between requests (also when cancelled).
    """
    loop = asyncio.get_running_loop()
    client.setblocking(False)
    with contextlib.suppress(OSError):
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    protocol = _ClientProtocol()
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, client)
    engine = _Engine(cast(asyncio.Transport, transport), choose, original)
    drain = drain or Drain()
    drain.engines.add(engine)
    if drain.started:
        engine.draining = True
    try:
        await within(protocol.arrived, first_bytes_timeout)
        protocol.engine = engine
        if protocol.early_lost:
            engine.client_lost()
        elif not protocol.arrived.done():
            engine._go_raw_to_original()  # a server-first protocol, or an idle client
        else:
            for data in protocol.early:
                engine.client_data(data)
            protocol.early.clear()
            if protocol.eof_seen:
                engine.client_eof()
        await engine.run()
        await engine.finished
        # a graceful close first flushes what the client did not read yet: bounded
        if not await within(protocol.closed, LINGER_TIMEOUT):
            transport.abort()
    finally:
        drain.engines.discard(engine)
        # cancelled (the agent exits): an idle kept-alive connection ends as HTTP allows
        engine._finish(abort=engine.phase != "done" and not engine.between_requests)
