"""Outgoing connections of one layer: the agent connects from the target, and the app
gets either the connected socket itself (hand-over, a local agent) or a relay whose bytes
the Mux carries to the agent: an end of a loopback pair made here, or (for a socket bound
to a local port) the address of a listener on 127.0.0.1 to connect to.

A non-blocking connect (asyncio's) waits for the agent at most NONBLOCKING_WAIT: a fast
remote is answered as a blocking connect would be (the socket itself, or the remote's
errno), a slow one gets its relay at once and the outcome later, as mirrord does: the
relayed connection carries the remote's bytes once it connects, or is reset if it fails.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from dataclasses import replace

import anyio
import anyio.abc

from mirrord.protocol import Connect, Connected, ConnectedFd, Message
from mirrord.protocol.messages import with_req
from mirrord.proxy.agent_client import AgentClient, Pending
from mirrord.wire.link import Link
from mirrord.wire.mux import RelayUdpPipe, linger_zero
from mirrord.wire.splice import splice_sockets
from mirrord.wire.wait import within

log = logging.getLogger("mirrord.proxy")
#: How long a relay address waits for the app's connect before the remote side is dropped.
RELAY_ACCEPT_TIMEOUT = 30.0
RELAY_HOST = "127.0.0.1"
#: How long a non-blocking connect may wait for the agent before it gets a relay at once.
NONBLOCKING_WAIT = 0.01


class Outgoing:
    def __init__(
        self, agent: AgentClient, link: Link, tg: anyio.abc.TaskGroup, pass_fds: bool
    ) -> None:
        self.agent = agent
        self.link = link
        self.tg = tg
        self.pass_fds = pass_fds
        self.udp_conns: list[int] = []

    async def connect(self, msg: Connect) -> None:
        # the socket itself when both the layer and the agent link can carry it
        want_fd = msg.want_fd and self.agent.link.can_pass_fds and self.pass_fds
        request = replace(msg, want_fd=want_fd)
        pending = self.agent.send_request(request)
        try:  # a relayed connection's relay is made while the agent connects, not after
            relay = self._relay_for(msg) if msg.proto == "tcp" and not want_fd else None
        except OSError:
            await self.agent.abandon(pending)
            raise
        try:
            nonblocking = msg.nonblocking and msg.proto == "tcp"
            answer = await self.agent.reply_to(pending, NONBLOCKING_WAIT if nonblocking else None)
            if answer is not None:
                await self._deliver(msg, *answer, relay=relay)
            else:
                await self._relay_before_connected(msg, pending, relay or self._relay_for(msg))
        finally:
            if relay is not None:
                relay.close()  # (unused when the connect failed)

    def _relay_for(self, msg: Connect) -> _Relay:
        """The app's socket becomes an end of a loopback pair made here when it can take
        a descriptor (no connect and no accept on the app's path), else it connects to a
        listener (a socket bound to a local port must keep it)."""
        if msg.want_fd and self.link.can_pass_fds:
            try:
                return _PairRelay(socket.AF_INET6 if ":" in msg.host else socket.AF_INET)
            except OSError as exc:  # (no IPv6 here, say): the app connects instead
                log.debug("no loopback pair for %s: %s", msg.host, exc)
        return _ListenerRelay()

    async def _deliver(
        self, msg: Connect, reply: Message, fd: int | None, relay: _Relay | None = None
    ) -> None:
        """The agent's answer to the app, as a blocking connect sees it."""
        if fd is not None:
            try:
                await self.link.send(with_req(reply, msg.req), fd=fd)
            finally:
                os.close(fd)
            return
        if not isinstance(reply, Connected):
            await self.link.send(with_req(reply, msg.req))
            return
        conn = reply.conn  # known to the Mux already (AgentClient.run opened it)
        if msg.proto == "udp":
            udp = await anyio.create_udp_socket(local_host=RELAY_HOST, local_port=0)
            address = udp.extra(anyio.abc.SocketAttribute.raw_socket).getsockname()
            self.agent.mux.attach(conn, RelayUdpPipe(udp))
            self.udp_conns.append(conn)
            await _reply_relay(self.link, msg, address)
            return
        relay = relay or _ListenerRelay()
        try:
            await relay.offer(self.link, msg)
            app = await relay.take()
        finally:
            relay.close()
        if app is None:
            await self.agent.mux.reset(conn)
            return
        await self.agent.mux.attach_socket(conn, app)

    async def _relay_before_connected(self, msg: Connect, pending: Pending, relay: _Relay) -> None:
        try:
            await relay.offer(self.link, msg)
            app = await relay.take()
            answer = await self.agent.reply_to(pending)
        except BaseException:
            await self.agent.abandon(pending)  # (cancelled: its connection is reset)
            raise
        finally:
            relay.close()
        assert answer is not None
        reply, fd = answer
        if app is None:
            if fd is not None:
                os.close(fd)
            elif isinstance(reply, Connected):
                await self.agent.mux.reset(reply.conn)
            return
        if fd is not None:
            # a local agent handed over its socket: our end of the relay carries it
            await splice_sockets(app, socket.socket(fileno=fd))
        elif isinstance(reply, Connected):
            await self.agent.mux.attach_socket(reply.conn, app)
        else:
            # the remote refused or never answered: the app sees a reset connection
            log.info("connect to %s:%d failed after the app got its relay", msg.host, msg.port)
            linger_zero(app)
            app.close()

    async def close(self) -> None:
        for conn in self.udp_conns:
            await self.agent.mux.reset(conn)


async def _reply_relay(link: Link, msg: Connect, relay: tuple) -> None:
    await link.send(
        Connected(
            req=msg.req,
            conn=0,  # the layer knows its connection by the relay address
            local_host=str(relay[0]),
            local_port=int(relay[1]),
            remote_host=msg.host,
            remote_port=msg.port,
        )
    )


class _ListenerRelay:
    """A listener on 127.0.0.1 that the app connects its socket to."""

    def __init__(self) -> None:
        self.listener, self.address = _relay_listener()

    async def offer(self, link: Link, msg: Connect) -> None:
        await _reply_relay(link, msg, self.address)

    async def take(self) -> socket.socket | None:
        """Our end of the app's connection (None if the app never came)."""
        return await _accept_app(self.listener, self.address)

    def close(self) -> None:
        self.listener.close()


class _PairRelay:
    """A connected loopback TCP pair: one end goes to the layer (its socket takes it
    over, as it would a socket handed over by a local agent), the other is ours."""

    def __init__(self, family: socket.AddressFamily) -> None:
        ours, self.theirs = _loopback_pair(family)
        self.ours: socket.socket | None = ours

    async def offer(self, link: Link, msg: Connect) -> None:
        host, port = self.theirs.getsockname()[:2]
        reply = ConnectedFd(
            req=msg.req,
            local_host=host,
            local_port=port,
            remote_host=msg.host,
            remote_port=msg.port,
        )
        try:
            await link.send(reply, fd=self.theirs.fileno())
        finally:
            self.theirs.close()

    async def take(self) -> socket.socket | None:
        ours, self.ours = self.ours, None
        return ours

    def close(self) -> None:
        self.theirs.close()
        if self.ours is not None:
            self.ours.close()


_Relay = _ListenerRelay | _PairRelay


def _loopback_pair(family: socket.AddressFamily) -> tuple[socket.socket, socket.socket]:
    """(ours, theirs): TCP over loopback, `theirs` in `family` (an IPv6 socket reaches
    the IPv4 listener by its mapped address)."""
    listener, (_, port) = _relay_listener()
    with listener:
        listener.setblocking(True)
        theirs = socket.socket(family, socket.SOCK_STREAM)
        try:
            host = RELAY_HOST if family == socket.AF_INET else "::ffff:" + RELAY_HOST
            theirs.connect((host, port))
            ours, peer = listener.accept()
        except BaseException:
            theirs.close()
            raise
    # (anyone on this host may connect to the listener too: take only our own)
    if peer[1] != theirs.getsockname()[1]:
        ours.close()
        theirs.close()
        raise OSError(errno.EADDRINUSE, "another connection reached the relay listener")
    return ours, theirs


def _relay_listener() -> tuple[socket.socket, tuple[str, int]]:
    """(listener, its address): non-blocking, on 127.0.0.1, for one connection."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((RELAY_HOST, 0))
        listener.listen(1)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener, listener.getsockname()


async def _accept_app(listener: socket.socket, relay: tuple) -> socket.socket | None:
    """The app's connection to its relay (it connects right after our reply), taken in
    the loop's readiness callback: no task wake-up between the app's connect and us."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[None] = loop.create_future()
    taken: list[socket.socket] = []

    def readable() -> None:
        try:
            taken.append(listener.accept()[0])
        except (BlockingIOError, InterruptedError):
            return
        loop.remove_reader(listener.fileno())
        if not accepted.done():
            accepted.set_result(None)

    loop.add_reader(listener.fileno(), readable)
    came = False
    try:
        came = await within(accepted, RELAY_ACCEPT_TIMEOUT)
    finally:
        loop.remove_reader(listener.fileno())
        if not came:  # (cancelled, or timed out)
            for sock in taken:
                sock.close()
    if came:
        return taken[0]
    log.warning("the app never connected to relay %s; dropping", relay)
    return None
