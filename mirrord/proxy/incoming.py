"""The intproxy's half of incoming traffic: subscriptions and connections into the app."""

from __future__ import annotations

import logging
import mmap
import os
import socket
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import anyio
import anyio.abc

from mirrord.protocol import (
    ConnInfo,
    ConnInfoReply,
    IncomingConnection,
    IncomingFd,
    Message,
    RequestFailed,
    origins,
)
from mirrord.proxy.agent_client import AgentClient
from mirrord.proxy.listeners import Listeners
from mirrord.proxy.mirror_to_app import MirrorToApp
from mirrord.wire.connect import connect
from mirrord.wire.splice import splice_sockets
from mirrord.wire.tasks import TaskSet

log = logging.getLogger("mirrord.proxy")
#: Accepted connections whose origin the layers may still ask about.
CONN_INFO_MEMORY = 65536
#: How long a stolen socket waits for the app's accept() to claim it before we relay it.
CLAIM_TIMEOUT = 5.0


@dataclass(eq=False)
class _Origin:
    """Who is behind a connection into the app; with the stolen socket until claimed."""

    info: ConnInfoReply
    fd: int | None = None
    claimed: anyio.Event = field(default_factory=anyio.Event)


class IncomingRouter:
    """Subscriptions of every layer, and the app-side end of each incoming connection."""

    def __init__(
        self,
        agent: AgentClient,
        tg: anyio.abc.TaskGroup,
        pass_fds: bool = True,
        table: mmap.mmap | None = None,
    ) -> None:
        self.agent = agent
        self.tg = tg
        self.listeners = Listeners(agent, pass_fds)
        # for layers that ask (and for stolen sockets); `table` spares the others the asking
        self._origins: OrderedDict[tuple[int, int], _Origin] = OrderedDict()
        self._table = table
        self.deliveries = TaskSet("a connection into the app")
        tg.start_soon(self.deliveries.run)

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
        """Called in order by the agent link reader (the connection is open in the Mux
        already, its Data waiting there)."""
        if isinstance(msg, IncomingConnection):
            self.deliveries.spawn(self._deliver, msg)
        elif fd is not None:
            self.deliveries.spawn(self._deliver_fd, msg, fd)

    async def _connect_app(
        self, msg: IncomingConnection | IncomingFd, origin: _Origin
    ) -> socket.socket | None:
        """A connection into the app for `msg`, its origin known before the app accepts."""
        sub = self.listeners.subscriptions.get(msg.port)
        if sub is None:
            return None
        family = socket.AF_INET6 if ":" in sub.app_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # bind first: the app may accept() and ask who we are before connect() returns here
            sock.bind((sub.app_host, 0))
            port = sock.getsockname()[1]
            self._origins[(sub.app_port, port)] = origin
            if self._table is not None:
                found = origins.Origin.of(origin.info, ask=origin.fd is not None)
                origins.write_origin(
                    self._table, family == socket.AF_INET6, port, sub.app_port, found
                )
            while len(self._origins) > CONN_INFO_MEMORY:
                _, stale = self._origins.popitem(last=False)
                if stale.fd is not None:
                    os.close(stale.fd)
                    stale.fd = None
            await connect(sock, (sub.app_host, sub.app_port))
            return sock
        except OSError as exc:
            sock.close()
            log.warning("the app does not accept on %s:%s: %s", sub.app_host, sub.app_port, exc)
            return None

    async def _deliver(self, msg: IncomingConnection) -> None:
        app = await self._connect_app(msg, _Origin(_info(msg)))
        if app is None:
            await self.agent.mux.reset(msg.conn)
            return
        if msg.mode != "mirror":
            await self.agent.mux.attach_socket(msg.conn, app)
            return

        async def reconnect() -> anyio.abc.SocketStream | None:
            again = await self._connect_app(msg, _Origin(_info(msg)))
            return None if again is None else await anyio.abc.SocketStream.from_socket(again)

        sub = self.listeners.subscriptions[msg.port]
        stream = await anyio.abc.SocketStream.from_socket(app)
        self.agent.mux.attach(msg.conn, MirrorToApp(stream, reconnect, sub.http_filter, self.tg))

    async def _deliver_fd(self, msg: IncomingFd, fd: int) -> None:
        """The app's accept() claims the socket itself; if it never asks, relay bytes."""
        probe = socket.socket(fileno=fd)
        family = probe.family
        probe.detach()
        sub = self.listeners.subscriptions.get(msg.port)
        if sub is None:
            os.close(fd)
            return
        app_family = socket.AF_INET6 if ":" in sub.app_host else socket.AF_INET
        # an accepted socket can only take the place of one of its own family (IPv6
        # clients of an IPv4 listener are relayed); an offered fd belongs to the origin
        origin = _Origin(_info(msg), fd if family == app_family else None)
        owned: int | None = None if origin.fd is not None else fd
        app: socket.socket | None = None
        try:
            app = await self._connect_app(msg, origin)
            if app is None:
                return
            if owned is None:
                with anyio.move_on_after(CLAIM_TIMEOUT):
                    await origin.claimed.wait()  # (the app may have claimed it already)
                if origin.claimed.is_set():
                    return  # the app holds the stolen socket; ours was a stand-in
                owned, origin.fd = origin.fd, None
            assert owned is not None
            stolen, owned = socket.socket(fileno=owned), None
            joined: socket.socket = app
            app = None  # splice_sockets closes both
            await splice_sockets(joined, stolen)
        finally:
            if app is not None:
                app.close()
            for leftover in (owned, origin.fd):
                if leftover is not None:
                    os.close(leftover)
            origin.fd = None


def create_origin_table(path: str) -> mmap.mmap | None:
    """The origin table the layers read (see mirrord.protocol.origins), only ours to read;
    None if it cannot be made here (the layers then ask about each connection: a file
    too short to map reads as no table)."""
    fd = -1
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, origins.TABLE_SIZE)  # sparse: pages appear as slots are written
        return mmap.mmap(fd, origins.TABLE_SIZE)
    except OSError as exc:
        log.info("no origin table at %s: %s", path, exc)
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def _info(msg: IncomingConnection | IncomingFd) -> ConnInfoReply:
    return ConnInfoReply(
        req=0,
        remote_host=msg.remote_host,
        remote_port=msg.remote_port,
        local_host=msg.local_host,
        local_port=msg.local_port,
        has_fd=False,
    )
