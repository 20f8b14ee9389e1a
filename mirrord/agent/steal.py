"""Stealing ports: iptables REDIRECT to one listener in the target, connections handed
whole to their subscriber or, with HTTP filters, request by request."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from mirrord.agent.delivery import deliver, hand_over
from mirrord.agent.http_destinations import (
    Channel,
    Destination,
    Drain,
    Sink,
    SocketDestination,
    StealError,
)
from mirrord.agent.http_steal import serve_stolen_http
from mirrord.agent.iptables import MARK, IptablesError, Redirects
from mirrord.agent.outgoing import connect_socket
from mirrord.agent.session import AgentState, ClientSession
from mirrord.http.head import RequestHead
from mirrord.system.procfs import open_connections_on
from mirrord.wire.handler_end import Handler
from mirrord.wire.splice import splice_sockets
from mirrord.wire.tasks import TaskSet

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


#: Pause of the stealing listener after accept() failed (EMFILE: out of descriptors).
ACCEPT_BACKOFF = 0.1
#: how often, with no port stolen, we look whether a redirected connection is still open
RETIRE_POLL = 0.25
#: Requests one subscriber may have in flight (each holds a connection through its intproxy).
MAX_IN_FLIGHT = 64
#: How long a matching request waits for one of those before it is answered 503.
QUEUE_TIMEOUT = 10.0
#: Errors that mean a client (its link, its task group) went away under us.


@dataclass(eq=False)
class _Stealer:
    session: ClientSession
    http_filter: Any  # HttpFilter | None
    want_fd: bool = False
    #: a bounded queue: matching requests past MAX_IN_FLIGHT wait here (then get a 503)
    slots: anyio.Semaphore = field(default_factory=lambda: anyio.Semaphore(MAX_IN_FLIGHT))
    gone: bool = False


class _AppChannel(Channel, Handler):
    """Requests to the developer's app, as one connection of its session's Mux.

    No socket and no task in between (wire.handler_end): the engine's writes become Data
    frames at once, and the app's answers reach the engine in the link's read callback."""

    name = "local app"

    def __init__(self, sink: Sink, stealer: _Stealer) -> None:
        self.sink = sink
        self.stealer = stealer

    # the engine's side
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed and self.end is not None:
            self.end.send(data)

    def write_eof(self) -> None:
        if not self.closed and self.end is not None:
            self.end.send_eof()

    def pause_reading(self) -> None:
        if self.end is not None:
            self.end.hold_credit(True)  # the client reads slowly: so must the app's answers go

    def resume_reading(self) -> None:
        if self.end is not None:
            self.end.hold_credit(False)

    def close(self, abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.stealer.slots.release()
            if self.end is not None:
                self.end.close(reset=abort)

    # the Mux's side
    def peer_data(self, data: bytes) -> None:
        if not self.closed:
            self.sink.target_data(self, data)

    def peer_eof(self) -> None:
        if not self.closed:
            self.sink.target_eof(self)

    def peer_gone(self, reset: bool) -> None:
        if not self.closed:
            self.close()
            error = "the local app's connection was reset" if reset else ""
            self.sink.target_lost(self, error or "the local app closed the connection")

    def send_paused(self, paused: bool) -> None:
        self.sink.target_paused(paused)


class _StealerDestination:
    """A matching request's way to a subscriber: a new connection of its session's Mux."""

    def __init__(self, stealer: _Stealer, target: tuple[str, int], peer: tuple[str, int]):
        self.key = stealer
        self.stealer = stealer
        self.target = target
        self.peer = peer

    async def open(self, sink: Sink) -> Channel:
        stealer = self.stealer
        try:
            stealer.slots.acquire_nowait()  # (a timed wait costs a cancel scope: only if full)
        except anyio.WouldBlock:
            await self._wait_for_slot()
        channel = _AppChannel(sink, stealer)
        if stealer.gone or not await deliver(
            stealer.session, channel, self.target, self.peer, "steal"
        ):
            channel.close()
            raise StealError("the local app's session is gone", fallback=True)
        return channel

    async def _wait_for_slot(self) -> None:
        try:
            with anyio.fail_after(QUEUE_TIMEOUT):
                await self.stealer.slots.acquire()
        except TimeoutError:
            raise StealError(
                f"the local app has {MAX_IN_FLIGHT} requests in flight and took no other"
                f" for {QUEUE_TIMEOUT:.0f} s",
                503,
            ) from None


class StealService:
    """One listener in the target; REDIRECT rules send subscribed ports to it.

    Every stolen connection is served in a task of its own, and whatever goes wrong in it
    (a client of the agent that went away mid-delivery) ends that connection only."""

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.subs: dict[int, list[_Stealer]] = {}
        # filtered connections being served, per port: they go once the port is released
        self.drains: dict[int, Drain] = {}
        # one listener and one table per IP version; IPv6 only where the target has it
        self.listeners: list[socket.socket] = []
        self.redirects: list[Redirects] = []
        # iptables runs in a worker thread, one change at a time and in order
        self._rules = anyio.Lock()
        self._retiring = False
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
        self.connections = TaskSet("a stolen connection")
        state.tg.start_soon(self.connections.run)
        for sock in self.listeners:
            state.tg.start_soon(self._accept_loop, sock)

    async def subscribe(
        self, session: ClientSession, port: int, http_filter: Any, want_fd: bool = False
    ) -> None:
        async with self._rules:
            taken = self.subs.setdefault(port, [])
            if any(s.session is session for s in taken):
                return
            if taken and (http_filter is None or any(s.http_filter is None for s in taken)):
                # filtered steals share a port; a whole-port steal cannot share it
                raise SubscribeError(
                    errno.EADDRINUSE,
                    f"port {port} of the target is already stolen by another session",
                )
            try:
                await anyio.to_thread.run_sync(self._add_rules, port)
            except IptablesError as exc:
                if not taken:
                    del self.subs[port]
                raise SubscribeError(errno.EPERM, str(exc)) from None
            # a client on this host may take the stolen sockets themselves: nothing to relay
            taken.append(_Stealer(session, http_filter, want_fd and session.link.can_pass_fds))
        log.info("stealing port %d%s", port, " (filtered)" if http_filter else "")

    def _add_rules(self, port: int) -> None:
        self.redirects[0].add(port)  # IPv4 is a must
        for redirects in self.redirects[1:]:
            try:
                redirects.add(port)
            except IptablesError as exc:
                log.info("port %d: no IPv6 stealing: %s", port, exc)

    def _release_rules(self, port: int) -> None:
        for redirects in self.redirects:
            redirects.release(port)

    async def unsubscribe(self, session: ClientSession, port: int) -> None:
        async with self._rules:
            for stealer in self.subs.get(port, []):
                if stealer.session is session:
                    stealer.gone = True
            left = [s for s in self.subs.get(port, []) if s.session is not session]
            if left:
                self.subs[port] = left
                return
            if self.subs.pop(port, None) is not None:
                await anyio.to_thread.run_sync(self._release_rules, port)
                self.drains.pop(port, Drain()).start()
                log.info("released port %d", port)
            if not self.subs and not self._retiring:
                self._retiring = True
                assert self.state.tg is not None
                self.state.tg.start_soon(self._retire_rules)

    async def _retire_rules(self) -> None:
        """With no port stolen, our chain goes once no connection it redirected is open.

        A released port's rules only send new connections past us (see Redirects.release):
        the redirected ones still open, relayed here or handed over, need them. All of
        those have our listener's port as their local port, whoever holds them now."""
        ours = {sock.getsockname()[1] for sock in self.listeners}
        try:
            while True:
                await anyio.sleep(RETIRE_POLL)
                async with self._rules:
                    if self.subs:
                        return  # stealing again: the chain is in use
                    try:
                        still_open = await anyio.to_thread.run_sync(open_connections_on, ours)
                    except OSError as exc:
                        log.info("cannot list connections (%s): rules stay until exit", exc)
                        return
                    if still_open == 0:
                        await anyio.to_thread.run_sync(self._remove_rules)
                        log.info("no port stolen and no redirected connection left: rules removed")
                        return
        finally:
            self._retiring = False

    def _remove_rules(self) -> None:
        for redirects in self.redirects:
            redirects.close()

    async def drop_session(self, session: ClientSession) -> None:
        for port in list(self.subs):
            await self.unsubscribe(session, port)

    def close(self) -> None:
        """At the agent's exit (also on SIGTERM), after the loop: every rule goes."""
        self.subs.clear()
        self._remove_rules()

    async def _accept_loop(self, listener: socket.socket) -> None:
        # raw accept(): a stream object would start reading, and bytes read here could
        # not travel with a socket handed over to the client
        # (the loop's sock_accept tries accept() before it waits: in a burst, one wake-up
        # per connection fewer than waiting for readability each time)
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: the connection waits in the backlog; so do we
                log.warning("stealing: accept failed (%s); retrying in %.1f s", exc, ACCEPT_BACKOFF)
                await anyio.sleep(ACCEPT_BACKOFF)
                continue
            self.connections.spawn(self._handle, conn, peer)

    async def _handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        handed_on = False
        try:
            handed_on = await self._serve(conn, peer)
        except Exception:
            log.exception("a stolen connection from %s:%s failed", *peer[:2])
        finally:
            # a socket given to a transport is the event loop's to close: closing its
            # number again could close whatever connection was given that number since
            if not handed_on:
                with contextlib.suppress(OSError):
                    conn.close()

    async def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> bool:
        """Serve one stolen connection; True if its socket now belongs to someone else (a
        client's Mux)."""
        try:
            target = original_destination(conn)
        except OSError:
            return False
        port = target[1]
        stealers = self.subs.get(port, [])
        whole = [s for s in stealers if s.http_filter is None or not s.http_filter.applies_to(port)]
        if whole and whole[0].want_fd:
            if await hand_over(whole[0].session, conn, target, peer):
                return False  # the client holds its own copy now; ours is to close
            return await self._pass_through(conn, target)
        if whole:
            if await deliver(whole[0].session, conn, target, peer, "steal"):
                return True
            # its session is gone: the connection goes on to the original service
            return await self._pass_through(conn, target)
        if stealers:
            await self._filtered(conn, port, target, peer)
            return True
        return await self._pass_through(conn, target)

    async def _pass_through(self, conn: socket.socket, target: tuple[str, int]) -> bool:
        """On to the original service, joined on loop callbacks; True once joined."""
        try:
            original = await connect_socket("tcp", *target, mark=MARK)
        except OSError:
            return False
        await splice_sockets(conn, original)
        return True

    async def _filtered(
        self, conn: socket.socket, port: int, target: tuple[str, int], peer: tuple[str, int]
    ) -> None:
        def choose(head: RequestHead) -> Destination | None:
            # the subscribers of now: one that left since the connection came gets no more
            for stealer in self.subs.get(port, ()):
                if stealer.http_filter is not None and stealer.http_filter.matches(
                    head.method, head.path, head.headers
                ):
                    return _StealerDestination(stealer, target, peer)
            return None

        original = SocketDestination(
            None, "original service", lambda: connect_socket("tcp", *target, mark=MARK)
        )
        drain = self.drains.setdefault(port, Drain())
        await serve_stolen_http(conn, choose, original, drain=drain)
