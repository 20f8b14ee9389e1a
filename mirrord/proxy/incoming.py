"""The intproxy's half of incoming traffic: subscriptions and connections into the app."""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections import OrderedDict
from dataclasses import dataclass

import anyio
import anyio.abc

from mirrord.mux import TcpPipe
from mirrord.protocol import (
    ConnInfo,
    ConnInfoReply,
    IncomingConnection,
    Message,
    RequestFailed,
    Subscribe,
    Subscribed,
    Unsubscribe,
)
from mirrord.protocol.messages import with_req
from mirrord.proxy.agent_client import AgentClient

log = logging.getLogger("mirrord.proxy")
#: Accepted connections whose origin the layers may still ask about.
CONN_INFO_MEMORY = 65536


class MirroredAppPipe(TcpPipe):
    """The app's answers to a mirrored request go nowhere: the target already answered."""

    async def receive(self, max_bytes: int) -> bytes:
        while True:
            await self.stream.receive(max_bytes)  # EndOfStream when the app closes


@dataclass
class Subscription:
    port: int
    mode: str
    app_host: str
    app_port: int
    owner: object  # the layer session that subscribed


class IncomingRouter:
    """Subscriptions of every layer, and the app-side end of each incoming connection."""

    def __init__(self, agent: AgentClient, tg: anyio.abc.TaskGroup) -> None:
        self.agent = agent
        self.tg = tg
        self.subscriptions: dict[int, Subscription] = {}
        self._origins: OrderedDict[tuple[int, int], ConnInfoReply] = OrderedDict()

    async def subscribe(self, owner: object, msg: Subscribe) -> Message:
        reply = await self.agent.request(msg)
        if isinstance(reply, Subscribed):
            self.subscriptions[msg.port] = Subscription(
                msg.port, msg.mode, msg.local_host, msg.local_port, owner
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

    def conn_info(self, msg: ConnInfo) -> Message:
        origin = self._origins.get((msg.listen_port, msg.peer_port))
        if origin is None:
            return RequestFailed(
                req=msg.req, kind="os", errno=0, message="not an incoming connection"
            )
        return with_req(origin, msg.req)

    def on_incoming(self, msg: IncomingConnection) -> None:
        """Called in order by the agent link reader, before the connection's first Data."""
        self.agent.mux.open(msg.conn, datagram=False)
        self.tg.start_soon(self._deliver, msg)

    async def _deliver(self, msg: IncomingConnection) -> None:
        sub = self.subscriptions.get(msg.port)
        if sub is None:
            await self.agent.mux.reset(msg.conn)
            return
        family = socket.AF_INET6 if ":" in sub.app_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # bind first: the app may accept() and ask who we are before connect() returns here
            sock.bind((sub.app_host, 0))
            self._origins[(sub.app_port, sock.getsockname()[1])] = ConnInfoReply(
                req=0,
                remote_host=msg.remote_host,
                remote_port=msg.remote_port,
                local_host=msg.local_host,
                local_port=msg.local_port,
            )
            while len(self._origins) > CONN_INFO_MEMORY:
                self._origins.popitem(last=False)
            sock.setblocking(False)
            err = sock.connect_ex((sub.app_host, sub.app_port))
            if err == errno.EINPROGRESS:
                await anyio.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            stream = await anyio.abc.SocketStream.from_socket(sock)
        except OSError as exc:
            sock.close()
            log.warning("the app does not accept on %s:%s: %s", sub.app_host, sub.app_port, exc)
            await self.agent.mux.reset(msg.conn)
            return
        pipe = MirroredAppPipe(stream) if msg.mode == "mirror" else TcpPipe(stream)
        self.agent.mux.attach(msg.conn, pipe)
