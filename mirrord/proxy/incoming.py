"""The intproxy's half of incoming traffic: subscriptions and connections into the app."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.abc
import h11

from mirrord.http.head import RequestHead
from mirrord.http.split import NotHttp, RequestSplitter, WholeRequest
from mirrord.protocol import (
    ConnInfo,
    ConnInfoReply,
    IncomingConnection,
    IncomingFd,
    Message,
    RequestFailed,
    Subscribe,
    Subscribed,
    Unsubscribe,
)
from mirrord.protocol.messages import with_req
from mirrord.proxy.agent_client import AgentClient
from mirrord.wire.connect import connect
from mirrord.wire.mux import Pipe, TcpPipe, splice

log = logging.getLogger("mirrord.proxy")
#: Accepted connections whose origin the layers may still ask about.
CONN_INFO_MEMORY = 65536
#: How long a stolen socket waits for the app's accept() to claim it before we relay it.
CLAIM_TIMEOUT = 5.0


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


@dataclass
class Subscription:
    port: int
    mode: str
    app_host: str
    app_port: int
    owner: object  # the layer session that subscribed
    http_filter: Any = None  # mirror: which requests the app gets


@dataclass(eq=False)
class _Origin:
    """Who is behind a connection into the app; with the stolen socket until claimed."""

    info: ConnInfoReply
    fd: int | None = None
    claimed: anyio.Event = field(default_factory=anyio.Event)


class IncomingRouter:
    """Subscriptions of every layer, and the app-side end of each incoming connection."""

    def __init__(self, agent: AgentClient, tg: anyio.abc.TaskGroup, pass_fds: bool = True) -> None:
        self.agent = agent
        self.tg = tg
        self.pass_fds = pass_fds
        self.subscriptions: dict[int, Subscription] = {}
        self._origins: OrderedDict[tuple[int, int], _Origin] = OrderedDict()

    async def subscribe(self, owner: object, msg: Subscribe) -> Message:
        want_fd = msg.want_fd and self.pass_fds and self.agent.link.can_pass_fds
        reply = await self.agent.request(replace(msg, want_fd=want_fd))
        if isinstance(reply, Subscribed):
            self.subscriptions[msg.port] = Subscription(
                msg.port,
                msg.mode,
                msg.local_host,
                msg.local_port,
                owner,
                _mirror_filter(msg) if msg.mode == "mirror" else None,
            )
        return with_req(reply, msg.req)

    async def unsubscribe(self, port: int) -> None:
        if self.subscriptions.pop(port, None) is not None:
            try:
                await self.agent.link.send(Unsubscribe(port=port))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def drop_owner(self, owner: object) -> None:
        """A layer is gone: so are its listening sockets."""
        for sub in [s for s in self.subscriptions.values() if s.owner is owner]:
            await self.unsubscribe(sub.port)

    def conn_info(self, msg: ConnInfo) -> tuple[Message, int | None]:
        """The origin of a connection the app accepted, and the stolen socket if unclaimed
        (the caller sends it on and closes it)."""
        origin = self._origins.get((msg.listen_port, msg.peer_port))
        if origin is None:
            failure = RequestFailed(req=msg.req, kind="os", errno=0, message="not incoming")
            return failure, None
        fd, origin.fd = origin.fd, None
        if fd is not None:
            origin.claimed.set()
        return replace(origin.info, req=msg.req, has_fd=fd is not None), fd

    def on_incoming(self, msg: IncomingConnection | IncomingFd, fd: int | None) -> None:
        """Called in order by the agent link reader, before the connection's first Data."""
        if isinstance(msg, IncomingConnection):
            self.agent.mux.open(msg.conn, datagram=False)
            self.tg.start_soon(self._deliver, msg)
        elif fd is not None:
            self.tg.start_soon(self._deliver_fd, msg, fd)

    async def _connect_app(
        self, msg: IncomingConnection | IncomingFd, origin: _Origin
    ) -> anyio.abc.SocketStream | None:
        """A connection into the app for `msg`, its origin known before the app accepts."""
        sub = self.subscriptions.get(msg.port)
        if sub is None:
            return None
        family = socket.AF_INET6 if ":" in sub.app_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # bind first: the app may accept() and ask who we are before connect() returns here
            sock.bind((sub.app_host, 0))
            self._origins[(sub.app_port, sock.getsockname()[1])] = origin
            while len(self._origins) > CONN_INFO_MEMORY:
                _, stale = self._origins.popitem(last=False)
                if stale.fd is not None:
                    os.close(stale.fd)
                    stale.fd = None
            await connect(sock, (sub.app_host, sub.app_port))
            return await anyio.abc.SocketStream.from_socket(sock)
        except OSError as exc:
            sock.close()
            log.warning("the app does not accept on %s:%s: %s", sub.app_host, sub.app_port, exc)
            return None

    async def _deliver(self, msg: IncomingConnection) -> None:
        stream = await self._connect_app(msg, _Origin(_info(msg)))
        if stream is None:
            await self.agent.mux.reset(msg.conn)
            return
        if msg.mode == "mirror":
            sub = self.subscriptions[msg.port]
            pipe: Pipe = MirrorToApp(
                stream,
                lambda: self._connect_app(msg, _Origin(_info(msg))),
                sub.http_filter,
                self.tg,
            )
        else:
            pipe = TcpPipe(stream)
        self.agent.mux.attach(msg.conn, pipe)

    async def _deliver_fd(self, msg: IncomingFd, fd: int) -> None:
        """The app's accept() claims the socket itself; if it never asks, relay bytes."""
        probe = socket.socket(fileno=fd)
        family = probe.family
        probe.detach()
        sub = self.subscriptions.get(msg.port)
        if sub is None:
            os.close(fd)
            return
        app_family = socket.AF_INET6 if ":" in sub.app_host else socket.AF_INET
        # an accepted socket can only take the place of one of its own family (IPv6
        # clients of an IPv4 listener are relayed); an offered fd belongs to the origin
        origin = _Origin(_info(msg), fd if family == app_family else None)
        owned: int | None = None if origin.fd is not None else fd
        try:
            stream = await self._connect_app(msg, origin)
            if stream is None:
                return
            async with stream:
                if owned is None:
                    with anyio.move_on_after(CLAIM_TIMEOUT):
                        await origin.claimed.wait()  # (the app may have claimed it already)
                    if origin.claimed.is_set():
                        return  # the app holds the stolen socket; ours was a stand-in
                    owned, origin.fd = origin.fd, None
                assert owned is not None
                relay_sock, owned = socket.socket(fileno=owned), None
                stolen = await anyio.abc.SocketStream.from_socket(relay_sock)
                async with stolen:
                    await splice(stream, stolen)
        finally:
            for leftover in (owned, origin.fd):
                if leftover is not None:
                    os.close(leftover)
            origin.fd = None


def _info(msg: IncomingConnection | IncomingFd) -> ConnInfoReply:
    return ConnInfoReply(
        req=0,
        remote_host=msg.remote_host,
        remote_port=msg.remote_port,
        local_host=msg.local_host,
        local_port=msg.local_port,
        has_fd=False,
    )


def _mirror_filter(msg: Subscribe) -> Any:
    """The HttpFilter a mirror subscription asked for (the agent checked it already)."""
    config = json.loads(msg.http_filter) if msg.http_filter else {}
    if not any(key != "ports" for key in config):
        return None
    from mirrord.http.filter import HttpFilter

    http_filter = HttpFilter.from_config(config)
    return http_filter if http_filter.applies_to(msg.port) else None
