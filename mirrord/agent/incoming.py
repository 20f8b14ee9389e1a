"""Incoming traffic at the target: stealing ports (iptables) and mirroring them (sniffing).

Services are agent-wide (several clients may subscribe to the same port with different
HTTP filters); each client's subscriptions end with it.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from mirrord.agent.iptables import MARK, IptablesError, Redirects
from mirrord.agent.session import AgentState, ClientSession, Feature
from mirrord.mux import TcpPipe
from mirrord.protocol import IncomingConnection, Subscribe, Subscribed, Unsubscribe

log = logging.getLogger("mirrord.agent")
SO_ORIGINAL_DST = 80


class SubscribeError(OSError):
    pass


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where a REDIRECTed connection was going (IPv4)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


async def connect_unredirected(host: str, port: int) -> anyio.abc.SocketStream:
    """A connection to the original service that our own OUTPUT rule lets through."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
        sock.setblocking(False)
        err = sock.connect_ex((host, port))
        if err == errno.EINPROGRESS:
            await anyio.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect to {host}:{port}")
        return await anyio.abc.SocketStream.from_socket(sock)
    except BaseException:
        sock.close()
        raise


async def splice(a: anyio.abc.ByteStream, b: anyio.abc.ByteStream) -> None:
    """Copy both ways until both sides are done; half-closes travel along."""

    async def copy(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
        try:
            async for chunk in src:
                await dst.send(chunk)
            await dst.send_eof()  # type: ignore[attr-defined]
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(copy, a, b)
        tg.start_soon(copy, b, a)


@dataclass(eq=False)
class _Stealer:
    session: ClientSession
    http_filter: Any  # HttpFilter | None


class StealService:
    """One listener in the target; REDIRECT rules send subscribed ports to it."""

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(1024)
        self.redirects = Redirects(self.sock.getsockname()[1])
        self.subs: dict[int, list[_Stealer]] = {}
        assert state.tg is not None
        state.tg.start_soon(self._accept_loop)

    def subscribe(self, session: ClientSession, port: int, http_filter: Any) -> None:
        taken = self.subs.setdefault(port, [])
        if any(s.session is session for s in taken):
            return
        if taken and (http_filter is None or any(s.http_filter is None for s in taken)):
            # filtered steals share a port; a whole-port steal cannot share it
            raise SubscribeError(
                errno.EADDRINUSE, f"port {port} of the target is already stolen by another session"
            )
        try:
            self.redirects.add(port)
        except IptablesError as exc:
            raise SubscribeError(errno.EPERM, str(exc)) from None
        taken.append(_Stealer(session, http_filter))
        log.info("stealing port %d%s", port, " (filtered)" if http_filter else "")

    def unsubscribe(self, session: ClientSession, port: int) -> None:
        left = [s for s in self.subs.get(port, []) if s.session is not session]
        if left:
            self.subs[port] = left
            return
        if self.subs.pop(port, None) is not None:
            self.redirects.remove(port)
            log.info("released port %d", port)

    def drop_session(self, session: ClientSession) -> None:
        for port in list(self.subs):
            self.unsubscribe(session, port)

    def close(self) -> None:
        self.subs.clear()
        self.redirects.close()

    async def _accept_loop(self) -> None:
        listener = await anyio.abc.SocketListener.from_socket(self.sock)
        async with listener:
            while True:
                stream = await listener.accept()
                assert self.state.tg is not None
                self.state.tg.start_soon(self._handle, stream)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        try:
            target = original_destination(raw)
            peer = raw.getpeername()
        except OSError:
            await stream.aclose()
            return
        stealers = self.subs.get(target[1], [])
        whole = [
            s for s in stealers if s.http_filter is None or not s.http_filter.applies_to(target[1])
        ]
        if whole:
            await deliver(whole[0].session, TcpPipe(stream), target, peer, "steal")
        elif stealers:
            await self._filtered(stream, stealers, target, peer)
        else:
            await self._pass_through(stream, target)

    async def _pass_through(self, stream: anyio.abc.SocketStream, target: tuple[str, int]) -> None:
        async with stream:
            try:
                original = await connect_unredirected(*target)
            except OSError:
                return
            async with original:
                await splice(stream, original)

    async def _filtered(
        self,
        stream: anyio.abc.SocketStream,
        stealers: list[_Stealer],
        target: tuple[str, int],
        peer: tuple[str, int],
    ) -> None:
        from mirrord.agent.http_steal import serve_stolen_http

        async def choose(head: Any) -> anyio.abc.ByteStream | None:
            for stealer in stealers:
                if stealer.http_filter.matches(head.method, head.target, head.headers):
                    # a socket pair: one end for the HTTP engine, the other relayed to the app
                    ours, theirs = socket.socketpair()
                    await deliver(
                        stealer.session,
                        TcpPipe(await anyio.abc.SocketStream.from_socket(theirs)),
                        target,
                        peer,
                        "steal",
                    )
                    return await anyio.abc.SocketStream.from_socket(ours)
            return None

        async with stream:
            await serve_stolen_http(stream, choose, lambda: connect_unredirected(*target))


async def deliver(
    session: ClientSession, pipe: TcpPipe, target: tuple[str, int], peer: tuple[str, int], mode: str
) -> None:
    """Announce an incoming connection to a client, then relay it."""
    conn = session.state.new_conn_id()
    await session.link.send(
        IncomingConnection(
            conn=conn,
            port=target[1],
            mode=mode,
            remote_host=peer[0],
            remote_port=peer[1],
            local_host=target[0],
            local_port=target[1],
        )
    )
    session.mux.attach(conn, pipe)


class IncomingFeature(Feature):
    handles = (Subscribe, Unsubscribe)

    def __init__(self, session: ClientSession) -> None:
        super().__init__(session)
        self.steals: set[int] = set()

    def _stealing(self) -> StealService:
        shared = self.session.state.shared
        if "steal" not in shared:
            shared["steal"] = StealService(self.session.state)
        service: StealService = shared["steal"]
        return service

    async def handle(self, msg: Subscribe | Unsubscribe) -> None:
        if isinstance(msg, Unsubscribe):
            if msg.port in self.steals:
                self.steals.discard(msg.port)
                self._stealing().unsubscribe(self.session, msg.port)
            return
        if msg.mode != "steal":
            await self.session.reply_failure(
                msg, errno.EOPNOTSUPP, f"mode {msg.mode!r} is not available"
            )
            return
        try:
            http_filter = _parse_filter(msg.http_filter)
            self._stealing().subscribe(self.session, msg.port, http_filter)
        except (SubscribeError, ValueError) as exc:
            await self.session.reply_failure(
                msg, getattr(exc, "errno", None) or errno.EINVAL, str(exc)
            )
            return
        self.steals.add(msg.port)
        await self.session.link.send(Subscribed(req=msg.req, port=msg.port))

    async def aclose(self) -> None:
        if self.steals and "steal" in self.session.state.shared:
            self._stealing().drop_session(self.session)
        self.steals.clear()


def _parse_filter(text: str) -> Any:
    if not text:
        return None
    from mirrord.agent.http_filter import HttpFilter

    return HttpFilter.from_config(json.loads(text))
