"""Serving the layers (the app and its children) over a unix socket."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.abc

from mirrord.protocol import (
    Connect,
    Connected,
    ConnInfo,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Subscribe,
    Unsubscribe,
)
from mirrord.protocol.messages import with_req
from mirrord.proxy.agent_client import AgentClient
from mirrord.proxy.incoming import IncomingRouter
from mirrord.wire.link import Link
from mirrord.wire.mux import RelayUdpPipe, TcpPipe

log = logging.getLogger("mirrord.proxy")
#: How long a relay address waits for the app's connect before the remote side is dropped.
RELAY_ACCEPT_TIMEOUT = 30.0
RELAY_HOST = "127.0.0.1"


@dataclass
class ProxyState:
    token: str
    agent: AgentClient
    incoming: IncomingRouter
    pass_fds: bool = True
    layers: int = 0
    ever_connected: bool = False
    #: a layer of the app (not the CLI's own client) has connected
    app_layer_seen: bool = False
    last_change: float = field(default_factory=time.monotonic)


class LayerSession:
    """One layer connection: forwards its requests, sets up relay sockets."""

    def __init__(self, state: ProxyState, link: Link, tg: anyio.abc.TaskGroup) -> None:
        self.state = state
        self.link = link
        self.tg = tg
        self.udp_conns: list[int] = []
        #: requests that need more than forwarding to the agent
        self.handlers: dict[type[Message], Callable[[Any], Awaitable[None]]] = {
            Connect: self.connect,
            Subscribe: self.subscribe,
            ConnInfo: self.conn_info,
        }

    async def serve(self) -> None:
        while True:
            msg = await self.link.receive()
            handler = self.handlers.get(type(msg))
            if handler is not None:
                self.tg.start_soon(self.link.guarded, handler, msg, "intproxy")
            elif isinstance(msg, Ping):
                await self.link.send(Pong(seq=msg.seq))
            elif isinstance(msg, Unsubscribe):
                await self.state.incoming.unsubscribe(msg.port)
            elif hasattr(msg, "req"):
                # a plain request (name lookup, env, files...): the agent answers it
                self.tg.start_soon(self.link.guarded, self.forward, msg, "intproxy")
            else:
                raise ProtocolError(f"unexpected {msg.TAG} from a layer", "unexpected")

    async def subscribe(self, msg: Subscribe) -> None:
        await self.link.send(await self.state.incoming.subscribe(self, msg))

    async def conn_info(self, msg: ConnInfo) -> None:
        reply, fd = self.state.incoming.conn_info(msg)
        try:
            await self.link.send(reply, fd=fd)
        finally:
            if fd is not None:
                os.close(fd)

    async def forward(self, msg: Any) -> None:
        reply = await self.state.agent.request(msg)
        await self.link.send(with_req(reply, msg.req))

    async def connect(self, msg: Connect) -> None:
        agent = self.state.agent
        # the socket itself when both the layer and the agent link can carry it
        want_fd = msg.want_fd and agent.link.can_pass_fds and self.state.pass_fds
        reply, fd = await agent.request_fd(replace(msg, want_fd=want_fd))
        if fd is not None:
            try:
                await self.link.send(with_req(reply, msg.req), fd=fd)
            finally:
                os.close(fd)
            return
        if not isinstance(reply, Connected):
            await self.link.send(with_req(reply, msg.req))
            return
        conn = reply.conn
        agent.mux.open(conn, datagram=msg.proto == "udp")
        if msg.proto == "udp":
            udp = await anyio.create_udp_socket(local_host=RELAY_HOST, local_port=0)
            relay = udp.extra(anyio.abc.SocketAttribute.raw_socket).getsockname()
            agent.mux.attach(conn, RelayUdpPipe(udp))
            self.udp_conns.append(conn)
            await self._reply_relay(msg, reply, relay)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((RELAY_HOST, 0))
        sock.listen(1)
        listener = await anyio.abc.SocketListener.from_socket(sock)
        try:
            relay = sock.getsockname()
            await self._reply_relay(msg, reply, relay)
            # the app connects right after our reply; one connection per relay address
            with anyio.move_on_after(RELAY_ACCEPT_TIMEOUT):
                stream = await listener.accept()
                agent.mux.attach(conn, TcpPipe(stream))
                return
            log.warning("the app never connected to relay %s; dropping", relay)
            await agent.mux.reset(conn)
        finally:
            await listener.aclose()

    async def _reply_relay(self, msg: Connect, reply: Connected, relay: tuple) -> None:
        await self.link.send(
            Connected(
                req=msg.req,
                conn=reply.conn,
                local_host=str(relay[0]),
                local_port=int(relay[1]),
                remote_host=reply.remote_host,
                remote_port=reply.remote_port,
            )
        )

    async def close(self) -> None:
        await self.state.incoming.drop_owner(self)
        for conn in self.udp_conns:
            await self.state.agent.mux.reset(conn)


async def handle_layer(state: ProxyState, stream: anyio.abc.ByteStream) -> None:
    link = Link(stream)
    state.layers += 1
    state.ever_connected = True
    state.last_change = time.monotonic()
    try:
        with anyio.fail_after(10):
            client = await link.accept_handshake(state.token)
        if not client.startswith("cli "):
            state.app_layer_seen = True
        async with anyio.create_task_group() as tg:
            session = LayerSession(state, link, tg)
            try:
                await session.serve()
            except ProtocolError as exc:
                log.warning("layer %s broke the protocol: %s", client, exc)
                await link.fail(exc)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
            finally:
                with anyio.CancelScope(shield=True):
                    await session.close()
                tg.cancel_scope.cancel()
    except (ProtocolError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        log.warning("a layer was dropped during the handshake")
    finally:
        state.layers -= 1
        state.last_change = time.monotonic()
        with anyio.CancelScope(shield=True):
            await link.aclose()
