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
from mirrord.agent.outgoing import connect_socket
from mirrord.agent.session import AgentState, ClientSession, Feature
from mirrord.protocol import IncomingConnection, IncomingFd, Subscribe, Subscribed, Unsubscribe
from mirrord.wire.mux import Pipe, splice

log = logging.getLogger("mirrord.agent")
SO_ORIGINAL_DST = 80


class SubscribeError(OSError):
    pass


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where a REDIRECTed connection was going (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST)."""
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, packed = struct.unpack_from("!2xH4x16s", raw)
        return socket.inet_ntop(socket.AF_INET6, packed), port
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


async def connect_unredirected(host: str, port: int) -> anyio.abc.SocketStream:
    """A connection to the original service that our own OUTPUT rule lets through."""
    sock = await connect_socket("tcp", host, port, mark=MARK)
    return await anyio.abc.SocketStream.from_socket(sock)


@dataclass(eq=False)
class _Stealer:
    session: ClientSession
    http_filter: Any  # HttpFilter | None
    want_fd: bool = False


class StealService:
    """One listener in the target; REDIRECT rules send subscribed ports to it."""

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.subs: dict[int, list[_Stealer]] = {}
        # one listener and one table per IP version; IPv6 only where the target has it
        self.listeners: list[socket.socket] = []
        self.redirects: list[Redirects] = []
        for family, anywhere, tool in (
            (socket.AF_INET, "0.0.0.0", "iptables"),
            (socket.AF_INET6, "::", "ip6tables"),
        ):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((anywhere, 0))
                sock.listen(1024)
            except OSError as exc:
                sock.close()
                log.info("no %s listener for stealing: %s", tool, exc)
                continue
            self.listeners.append(sock)
            self.redirects.append(Redirects(sock.getsockname()[1], tool))
        assert state.tg is not None
        for sock in self.listeners:
            state.tg.start_soon(self._accept_loop, sock)

    def subscribe(
        self, session: ClientSession, port: int, http_filter: Any, want_fd: bool = False
    ) -> None:
        taken = self.subs.setdefault(port, [])
        if any(s.session is session for s in taken):
            return
        if taken and (http_filter is None or any(s.http_filter is None for s in taken)):
            # filtered steals share a port; a whole-port steal cannot share it
            raise SubscribeError(
                errno.EADDRINUSE, f"port {port} of the target is already stolen by another session"
            )
        try:
            self.redirects[0].add(port)  # IPv4 is a must
        except IptablesError as exc:
            raise SubscribeError(errno.EPERM, str(exc)) from None
        for redirects in self.redirects[1:]:
            try:
                redirects.add(port)
            except IptablesError as exc:
                log.info("port %d: no IPv6 stealing: %s", port, exc)
        # a client on this host may take the stolen sockets themselves: nothing to relay
        taken.append(_Stealer(session, http_filter, want_fd and session.link.can_pass_fds))
        log.info("stealing port %d%s", port, " (filtered)" if http_filter else "")

    def unsubscribe(self, session: ClientSession, port: int) -> None:
        left = [s for s in self.subs.get(port, []) if s.session is not session]
        if left:
            self.subs[port] = left
            return
        if self.subs.pop(port, None) is not None:
            for redirects in self.redirects:
                redirects.remove(port)
            log.info("released port %d", port)

    def drop_session(self, session: ClientSession) -> None:
        for port in list(self.subs):
            self.unsubscribe(session, port)

    def close(self) -> None:
        self.subs.clear()
        for redirects in self.redirects:
            redirects.close()

    async def _accept_loop(self, listener: socket.socket) -> None:
        # raw accept(): a stream object would start reading, and bytes read here could
        # not travel with a socket handed over to the client
        listener.setblocking(False)
        while True:
            await anyio.wait_readable(listener)
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            assert self.state.tg is not None
            self.state.tg.start_soon(self._handle, conn, peer)

    async def _handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            target = original_destination(conn)
        except OSError:
            conn.close()
            return
        stealers = self.subs.get(target[1], [])
        whole = [
            s for s in stealers if s.http_filter is None or not s.http_filter.applies_to(target[1])
        ]
        if whole and whole[0].want_fd:
            await hand_over(whole[0].session, conn, target, peer)
            return
        conn.setblocking(False)
        if whole:
            await deliver(whole[0].session, conn, target, peer, "steal")
            return
        stream = await anyio.abc.SocketStream.from_socket(conn)
        if stealers:
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
                if stealer.http_filter.matches(head.method, head.path, head.headers):
                    # a socket pair: one end for the HTTP engine, the other relayed to the app
                    ours, theirs = socket.socketpair()
                    await deliver(stealer.session, theirs, target, peer, "steal")
                    return await anyio.abc.SocketStream.from_socket(ours)
            return None

        async with stream:
            await serve_stolen_http(stream, choose, lambda: connect_unredirected(*target))


class MirrorPipe:
    """The agent's end of a mirrored connection: sniffed bytes go out, answers are dropped.

    The sniffer must never wait for a slow app: past `LIMIT` buffered bytes the mirrored
    connection is cut (the app sees a reset) instead of stalling every other capture.
    """

    datagram = False
    LIMIT = 16 * 1024 * 1024

    def __init__(self) -> None:
        self.buf = bytearray()
        self.ended = False
        self.broken = False
        self._ready = anyio.Event()

    def feed(self, data: bytes) -> None:
        if len(self.buf) + len(data) > self.LIMIT:
            self.broken = True
        else:
            self.buf += data
        self._ready.set()

    def finish(self, reset: bool) -> None:
        self.ended = True
        self.broken = self.broken or reset
        self._ready.set()

    async def receive(self, max_bytes: int) -> bytes:
        while not self.buf or self.broken:
            if self.broken:
                raise anyio.BrokenResourceError
            if self.ended:
                raise anyio.EndOfStream
            self._ready = anyio.Event()
            await self._ready.wait()
        chunk = bytes(self.buf[:max_bytes])
        del self.buf[:max_bytes]
        return chunk

    async def send(self, data: bytes) -> None:
        pass  # the target itself answered the client

    async def send_eof(self) -> None:
        pass

    async def close(self, reset: bool) -> None:
        self.buf.clear()
        self.ended = True
        self._ready.set()


class MirrorService:
    """Sniffs subscribed ports in the target and copies each client's bytes to subscribers."""

    def __init__(self, state: AgentState) -> None:
        from mirrord.agent.sniffer import Sniffer

        self.state = state
        self.sniffer = Sniffer([])
        self.subs: dict[int, list[ClientSession]] = {}
        self.pipes: dict[Any, list[MirrorPipe]] = {}
        assert state.tg is not None
        state.tg.start_soon(self._run)

    def subscribe(self, session: ClientSession, port: int) -> None:
        sessions = self.subs.setdefault(port, [])
        if session not in sessions:
            sessions.append(session)
        self.sniffer.update_ports(self.subs)
        log.info("mirroring port %d", port)

    def unsubscribe(self, session: ClientSession, port: int) -> None:
        sessions = [s for s in self.subs.get(port, []) if s is not session]
        if sessions:
            self.subs[port] = sessions
        elif self.subs.pop(port, None) is not None:
            self.sniffer.update_ports(self.subs)

    def drop_session(self, session: ClientSession) -> None:
        for port in list(self.subs):
            self.unsubscribe(session, port)

    def close(self) -> None:
        self.subs.clear()
        log.info("mirror capture: %s", self.sniffer.stats())
        self.sniffer.close()

    async def _run(self) -> None:
        from mirrord.agent.reassembly import StreamClosed, StreamData, StreamOpened

        assert self.state.tg is not None
        async for event in self.sniffer:
            if isinstance(event, StreamData):
                for pipe in self.pipes.get(event.flow, ()):
                    pipe.feed(event.data)
            elif isinstance(event, StreamOpened):
                flow = event.flow
                pipes = self.pipes[flow] = []
                for session in self.subs.get(flow.dport, ()):
                    pipe = MirrorPipe()
                    pipes.append(pipe)
                    # bytes wait in the pipe until the client has heard of the connection
                    self.state.tg.start_soon(
                        deliver,
                        session,
                        pipe,
                        (flow.dst, flow.dport),
                        (flow.src, flow.sport),
                        "mirror",
                    )
            elif isinstance(event, StreamClosed):
                for pipe in self.pipes.pop(event.flow, ()):
                    pipe.finish(event.reset)


async def deliver(
    session: ClientSession,
    end: Pipe | socket.socket,
    target: tuple[str, int],
    peer: tuple[str, int],
    mode: str,
) -> None:
    """Announce an incoming connection to a client, then relay it (a socket as it is)."""
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
    if isinstance(end, socket.socket):
        await session.mux.attach_socket(conn, end)
    else:
        session.mux.attach(conn, end)


async def hand_over(
    session: ClientSession, conn: socket.socket, target: tuple[str, int], peer: tuple[str, int]
) -> None:
    """Give a stolen connection's socket to a client on this host, and forget it."""
    try:
        await session.link.send(
            IncomingFd(
                port=target[1],
                remote_host=peer[0],
                remote_port=peer[1],
                local_host=target[0],
                local_port=target[1],
            ),
            fd=conn.fileno(),
        )
    finally:
        conn.close()


class IncomingFeature(Feature):
    handles = (Subscribe, Unsubscribe)

    def __init__(self, session: ClientSession) -> None:
        super().__init__(session)
        self.ports: dict[int, str] = {}  # port -> mode

    def _service(self, mode: str) -> StealService | MirrorService:
        shared = self.session.state.shared
        if mode not in shared:
            shared[mode] = (StealService if mode == "steal" else MirrorService)(self.session.state)
        service: StealService | MirrorService = shared[mode]
        return service

    async def handle(self, msg: Subscribe | Unsubscribe) -> None:
        if isinstance(msg, Unsubscribe):
            mode = self.ports.pop(msg.port, None)
            if mode is not None:
                self._service(mode).unsubscribe(self.session, msg.port)
            return
        if msg.mode not in ("steal", "mirror"):
            await self.session.reply_failure(msg, errno.EINVAL, f"unknown mode {msg.mode!r}")
            return
        try:
            http_filter = _parse_filter(msg.http_filter)
            service = self._service(msg.mode)
            if isinstance(service, StealService):
                service.subscribe(self.session, msg.port, http_filter, msg.want_fd)
            else:
                service.subscribe(self.session, msg.port)
        except (OSError, ValueError) as exc:
            code = getattr(exc, "errno", None) or errno.EINVAL
            await self.session.reply_failure(msg, code, str(exc))
            return
        self.ports[msg.port] = msg.mode
        await self.session.link.send(Subscribed(req=msg.req, port=msg.port))

    async def aclose(self) -> None:
        for mode in set(self.ports.values()):
            self._service(mode).drop_session(self.session)
        self.ports.clear()


def _parse_filter(text: str) -> Any:
    """mirrord's http_filter object; without any filter in it, the port is stolen whole."""
    config = json.loads(text) if text else {}
    if not any(key != "ports" for key in config):
        return None
    from mirrord.http.filter import HttpFilter

    return HttpFilter.from_config(config)
