"""Serving the layers (the app and its children) over a unix socket."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from mirrord.protocol import (
    Connect,
    ConnInfo,
    ListenerClosed,
    ListenerInfo,
    Message,
    Ping,
    Pong,
    RegisterListener,
    Subscribe,
)
from mirrord.protocol.directions import FORWARDED_REQUESTS, refusal
from mirrord.protocol.messages import with_req
from mirrord.proxy.agent_client import AgentClient
from mirrord.proxy.incoming import IncomingRouter
from mirrord.proxy.outgoing import Outgoing
from mirrord.wire.link import Link
from mirrord.wire.serve import serve_link
from mirrord.wire.tasks import TaskSet

log = logging.getLogger("mirrord.proxy")


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
        self.outgoing = Outgoing(state.agent, link, tg, state.pass_fds)
        self.requests = TaskSet("a request of a layer")
        tg.start_soon(self.requests.run)
        #: requests that need more than forwarding to the agent
        self.handlers: dict[type[Message], Callable[[Any], Awaitable[None]]] = {
            Connect: self.outgoing.connect,  # (one read with the handshake; else _connect_at_once)
            Subscribe: self.subscribe,
            ConnInfo: self.conn_info,
            RegisterListener: self.listener_request,
            ListenerInfo: self.listener_request,
        }
        link.frame_handler = self._connect_at_once

    def _connect_at_once(self, msg: Message) -> bool:
        """A Connect starts as the link reads it, without waking `serve` first: a new
        connection's round trip to the agent is the app's to wait for. (Only Connect:
        the other requests keep their order with what `serve` handles itself.)"""
        if type(msg) is not Connect:
            return False
        self.requests.spawn(self.link.guarded, self.outgoing.connect, msg, "intproxy")
        return True

    async def serve(self) -> None:
        while True:
            msg = await self.link.receive()
            handler = self.handlers.get(type(msg))
            if handler is not None:
                self.requests.spawn(self.link.guarded, handler, msg, "intproxy")
            elif isinstance(msg, Ping):
                await self.link.send(Pong(seq=msg.seq))
            elif isinstance(msg, ListenerClosed):
                await self.state.incoming.listeners.sweep()
            elif type(msg) in FORWARDED_REQUESTS:
                # a plain request (name lookup, env, files...): the agent answers it
                self.requests.spawn(self.link.guarded, self.forward, msg, "intproxy")
            else:
                await self.refuse(msg)

    async def refuse(self, msg: Message) -> None:
        """What a layer may not send: a request is answered with an error, the rest
        dropped; the layer's other requests (and everyone else's) go on."""
        log.warning("a layer sent %s, which the intproxy does not take", msg.TAG)
        reply = refusal(msg, "the intproxy")
        if reply is not None:
            await self.link.send(reply)

    async def subscribe(self, msg: Subscribe) -> None:
        await self.link.send(await self.state.incoming.listeners.subscribe(msg))

    async def listener_request(self, msg: RegisterListener | ListenerInfo) -> None:
        listeners = self.state.incoming.listeners
        reply = (
            listeners.register(msg) if isinstance(msg, RegisterListener) else listeners.info(msg)
        )
        await self.link.send(reply)

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

    async def aclose(self) -> None:
        # its process may have held the last descriptor of a listener
        await self.state.incoming.listeners.sweep()
        await self.outgoing.close()


async def handle_layer(state: ProxyState, sock: socket.socket) -> None:
    state.layers += 1
    state.ever_connected = True
    state.last_change = time.monotonic()

    def open_session(link: Link, tg: anyio.abc.TaskGroup, peer: str) -> LayerSession:
        if not peer.startswith("cli "):
            state.app_layer_seen = True
        return LayerSession(state, link, tg)

    try:
        await serve_link(sock, state.token, open_session, "intproxy")
    finally:
        state.layers -= 1
        state.last_change = time.monotonic()
