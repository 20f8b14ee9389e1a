"""The intproxy's one link to the agent: requests by id, connections through a Mux."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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

log = logging.getLogger("mirrord.proxy")


@dataclass(eq=False)
class _Pending:
    done: anyio.Event = field(default_factory=anyio.Event)
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
        self._pending: dict[int, _Pending] = {}
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
        req = next(self._ids)
        if self.gone is not None:
            return self._failure(req), None
        pending = self._pending[req] = _Pending(connects=getattr(msg, "proto", None))
        try:
            await self.link.send(with_req(msg, req))
            await pending.done.wait()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return self._failure(req), None
        except BaseException:
            # cancelled while the answer was on its way: nobody will use what it brought
            if pending.fd is not None:
                os.close(pending.fd)
            if isinstance(pending.reply, Connected) and pending.connects is not None:
                with anyio.CancelScope(shield=True):
                    await self.mux.reset(pending.reply.conn)
            raise
        finally:
            self._pending.pop(req, None)
        assert pending.reply is not None
        return pending.reply, pending.fd

    def _announced(self, msg: Message) -> None:
        """A message that announces a connection opens it in the Mux before its first
        Data, which may follow in the same read: a server that speaks first."""
        if isinstance(msg, IncomingConnection):
            self.mux.open(msg.conn, datagram=False)
        elif isinstance(msg, Connected):
            pending = self._pending.get(msg.req)
            if pending is not None and pending.connects is not None:
                self.mux.open(msg.conn, datagram=pending.connects == "udp")

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
                    pending.reply, pending.fd = msg, fd
                    pending.done.set()
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
                pending.reply = self._failure(req)
                pending.done.set()
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
