"""The intproxy's one link to the agent: requests by id, connections through a Mux."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.abc

from mirrord.protocol import (
    Connected,
    ConnectedFd,
    IncomingConnection,
    IncomingFd,
    Message,
    Ping,
    Pong,
    ProtocolError,
    RequestFailed,
)
from mirrord.protocol.messages import with_req
from mirrord.wire.link import Link
from mirrord.wire.mux import Mux
from mirrord.wire.wait import within

log = logging.getLogger("mirrord.proxy")


@dataclass(eq=False)
class Pending:
    """A request sent to the agent, until its reply is taken (`AgentClient.reply_to`)."""

    req: int
    done: asyncio.Future[None]  # (a future, not an Event: waited on with a timeout cheaply)
    reply: Message | None = None
    fd: int | None = None
    #: a Connect of this protocol: its connection must be known before its first Data
    connects: str | None = None


class AgentGone(Exception):
    pass


class AgentClient:
    """Sends requests to the agent and matches their replies; relays connections."""

    def __init__(self, link: Link, tg: anyio.abc.TaskGroup) -> None:
        self.link = link
        self.mux = Mux(link, tg)
        self.mux.announcements = self._announced
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self.gone: str | None = None
        #: what the transport can tell about its end (a Kubernetes port-forward's error)
        self.why_ended: Callable[[], str] | None = None
        self.gone_at = 0.0  # time.monotonic() when the link ended
        #: called for each IncomingConnection/IncomingFd (with its socket), in order,
        #: before the connection's first Data frame
        self.on_incoming: Callable[[IncomingConnection | IncomingFd, int | None], None] | None = (
            None
        )

    async def request(self, msg: Message) -> Message:
        """Send `msg` with a fresh request id; the agent's reply (or a RequestFailed)."""
        reply, fd = await self.request_fd(msg)
        if fd is not None:
            os.close(fd)
        return reply

    async def request_fd(self, msg: Message) -> tuple[Message, int | None]:
        """Like `request`, with the descriptor a ConnectedFd reply carries (the caller's)."""
        answer = await self.reply_to(self.send_request(msg))
        assert answer is not None
        return answer

    def send_request(self, msg: Message) -> Pending:
        """Send `msg` now with a fresh request id; the caller then takes its reply with
        `reply_to` (a wait without a task of its own)."""
        req = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        pending = Pending(req, future, connects=getattr(msg, "proto", None))
        if self.gone is None:
            self._pending[req] = pending
            try:
                self.link.send_nowait(with_req(msg, req))
                return pending
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                del self._pending[req]
        self._settle(pending, self._failure(req), None)
        return pending

    async def reply_to(
        self, pending: Pending, timeout: float | None = None
    ) -> tuple[Message, int | None] | None:
        """The reply to a request of `send_request` (and its descriptor, the caller's);
        None if it did not come within `timeout` (ask again later)."""
        try:
            await self.link.drain()
            if not await within(pending.done, timeout):
                return None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._pending.pop(pending.req, None)
            return self._failure(pending.req), None
        except BaseException:
            await self.abandon(pending)
            raise
        self._pending.pop(pending.req, None)
        assert pending.reply is not None
        return pending.reply, pending.fd

    async def abandon(self, pending: Pending) -> None:
        """Nobody will take the reply (cancelled while it was on its way): what it
        brought, or brings later, is dropped. Harmless twice."""
        self._pending.pop(pending.req, None)
        self._settle(pending, self._failure(pending.req), None)  # (if it had not come)
        fd, reply = pending.fd, pending.reply
        pending.fd = pending.reply = None
        if fd is not None:
            os.close(fd)
        if isinstance(reply, Connected) and pending.connects is not None:
            with anyio.CancelScope(shield=True):
                await self.mux.reset(reply.conn)

    @staticmethod
    def _settle(pending: Pending, reply: Message, fd: int | None) -> None:
        if not pending.done.done():
            pending.reply, pending.fd = reply, fd
            pending.done.set_result(None)

    def _announced(self, msg: Message) -> bool:
        """Seen as the link reads it. A message that announces a connection opens it in
        the Mux before its first Data, which may follow in the same read (a server that
        speaks first); a reply without a descriptor goes to its request at once (True:
        taken), with no wake-up of `run` in between."""
        if isinstance(msg, IncomingConnection):
            self.mux.open(msg.conn, datagram=False)
            return False
        req = getattr(msg, "req", None)
        pending = None if req is None else self._pending.get(req)
        if pending is None or isinstance(msg, ConnectedFd):
            return False  # (a descriptor is taken in order, by `run`)
        if isinstance(msg, Connected) and pending.connects is not None:
            self.mux.open(msg.conn, datagram=pending.connects == "udp")
        self._settle(pending, msg, None)
        return True

    def _failure(self, req: int) -> RequestFailed:
        return RequestFailed(
            req=req,
            kind="os",
            errno=errno.ECONNABORTED,
            message=f"mirrord: no connection to the agent ({self.gone or 'lost'})",
        )

    async def run(self) -> None:
        """Read the agent's frames until the link ends; then fail everything cleanly."""
        reason = "the agent closed the connection"
        try:
            while True:
                msg = await self.link.receive()  # connection frames went to the Mux already
                if isinstance(msg, IncomingConnection | IncomingFd):
                    # (an IncomingConnection's conn is open already: see _announced)
                    fd = self.link.take_fd() if isinstance(msg, IncomingFd) else None
                    if self.on_incoming is None:
                        if fd is not None:
                            os.close(fd)
                        raise ProtocolError("an incoming connection nobody subscribed to")
                    self.on_incoming(msg, fd)
                    continue
                fd = self.link.take_fd() if isinstance(msg, ConnectedFd) else None
                req = getattr(msg, "req", None)
                if req is not None and (pending := self._pending.get(req)) is not None:
                    self._settle(pending, msg, fd)
                elif fd is not None:
                    os.close(fd)
                elif not isinstance(msg, Pong):
                    log.warning("unexpected %s from the agent", msg.TAG)
        except ProtocolError as exc:
            reason = f"the agent broke the protocol: {exc}"
            await self.link.fail(exc)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            # a transport that knows why it ended says so (a broken port-forward)
            reason = (self.why_ended and self.why_ended()) or reason
        finally:
            self.gone, self.gone_at = reason, time.monotonic()
            log.warning("agent link ended: %s", reason)
            for req, pending in list(self._pending.items()):
                self._settle(pending, self._failure(req), None)
            with anyio.CancelScope(shield=True):
                await self.mux.close_all()

    async def keepalive(self, interval: float = 10.0) -> None:
        for seq in itertools.count():
            await anyio.sleep(interval)
            if self.gone:
                return
            try:
                await self.link.send(Ping(seq=seq))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return
