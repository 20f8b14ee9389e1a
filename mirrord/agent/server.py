"""The agent: serves its clients from inside the target's namespaces."""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from mirrord.agent import outgoing
from mirrord.link import Link
from mirrord.mux import Mux
from mirrord.protocol import (
    Connect,
    Connected,
    ConnectedFd,
    Env,
    GetEnv,
    Message,
    Ping,
    Pong,
    ProtocolError,
    RequestFailed,
    Resolve,
    Resolved,
)

log = logging.getLogger("mirrord.agent")
HANDSHAKE_TIMEOUT = 10.0


@dataclass
class AgentState:
    token: str
    env: dict[str, str]
    idle_timeout: float
    clients: int = 0
    last_change: float = field(default_factory=time.monotonic)
    next_conn: int = 1

    def new_conn_id(self) -> int:
        conn, self.next_conn = self.next_conn, self.next_conn + 1
        return conn


class ClientSession:
    """One client (an intproxy or a CLI): its requests and its connections."""

    def __init__(self, state: AgentState, link: Link, tg: anyio.abc.TaskGroup) -> None:
        self.state = state
        self.link = link
        self.tg = tg
        self.mux = Mux(link, tg)

    async def serve(self) -> None:
        while True:
            msg = await self.link.receive()
            if not await self.mux.handle(msg):
                await self.dispatch(msg)

    async def dispatch(self, msg: Message) -> None:
        if isinstance(msg, Connect):
            self.tg.start_soon(self._guarded, self.connect, msg)
        elif isinstance(msg, Resolve):
            self.tg.start_soon(self._guarded, self.resolve, msg)
        elif isinstance(msg, GetEnv):
            await self.link.send(Env(req=msg.req, env=self.state.env))
        elif isinstance(msg, Ping):
            await self.link.send(Pong(seq=msg.seq))
        else:
            raise ProtocolError(f"unexpected {msg.TAG} from a client", "unexpected")

    async def _guarded(self, handler: Callable[[Any], Awaitable[None]], msg: Any) -> None:
        """One request's failure must not take the client's other work down."""
        try:
            await handler(msg)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client is gone
        except Exception as exc:
            log.exception("request %s failed", msg.TAG)
            failure = RequestFailed(
                req=msg.req, kind="os", errno=errno.EIO, message=f"agent: {exc}"
            )
            with anyio.move_on_after(1):
                try:
                    await self.link.send(failure)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass

    async def connect(self, msg: Connect) -> None:
        try:
            if msg.want_fd and self.link.can_pass_fds:
                await self._connect_fd(msg)
                return
            pipe, local = await outgoing.open_pipe(msg.proto, msg.host, msg.port)
        except OSError as exc:
            await self.link.send(
                RequestFailed(req=msg.req, kind="os", errno=exc.errno or 0, message=str(exc))
            )
            return
        conn = self.state.new_conn_id()
        # announce before attaching, so the client knows the conn when its Data arrives
        await self.link.send(
            Connected(
                req=msg.req,
                conn=conn,
                local_host=local[0],
                local_port=local[1],
                remote_host=msg.host,
                remote_port=msg.port,
            )
        )
        self.mux.attach(conn, pipe)

    async def _connect_fd(self, msg: Connect) -> None:
        """Same host: hand over the connected socket itself, so no byte needs relaying."""
        sock = await outgoing.connect_socket(msg.proto, msg.host, msg.port)
        try:
            local = sock.getsockname()
            reply = ConnectedFd(
                req=msg.req,
                local_host=local[0],
                local_port=local[1],
                remote_host=msg.host,
                remote_port=msg.port,
            )
            await self.link.send(reply, fd=sock.fileno())
        finally:
            sock.close()

    async def resolve(self, msg: Resolve) -> None:
        try:
            addrs = await outgoing.resolve(
                msg.host, msg.port, msg.family, msg.type, msg.proto, msg.flags
            )
        except socket.gaierror as exc:
            reply: Message = RequestFailed(
                req=msg.req, kind="gai", errno=exc.errno or 0, message=str(exc.strerror)
            )
        except (OSError, UnicodeError) as exc:
            reply = RequestFailed(req=msg.req, kind="os", errno=0, message=str(exc))
        else:
            reply = Resolved(req=msg.req, addrs=addrs)
        await self.link.send(reply)


async def handle_client(state: AgentState, stream: anyio.abc.ByteStream) -> None:
    link = Link(stream)
    state.clients += 1
    state.last_change = time.monotonic()
    try:
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            client = await link.accept_handshake(state.token)
        log.info("client %r connected", client)
        async with anyio.create_task_group() as tg:
            session = ClientSession(state, link, tg)
            try:
                await session.serve()
            except ProtocolError as exc:
                log.warning("client %r broke the protocol: %s", client, exc)
                await link.fail(exc)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                log.info("client %r disconnected", client)
            finally:
                await session.mux.close_all()
                tg.cancel_scope.cancel()
    except ProtocolError as exc:
        log.warning("rejected a client: %s", exc)
    except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
        log.warning("client dropped during handshake: %r", exc)
    finally:
        state.clients -= 1
        state.last_change = time.monotonic()
        with anyio.CancelScope(shield=True):
            await link.aclose()


async def serve(listener: anyio.abc.Listener[anyio.abc.ByteStream], state: AgentState) -> None:
    """Serve until no client has been connected for the idle timeout."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, lambda s: handle_client(state, s))
        while True:
            await anyio.sleep(0.1)
            idle = time.monotonic() - state.last_change
            if state.clients == 0 and idle >= state.idle_timeout:
                log.info("no client for %.1fs: exiting", idle)
                tg.cancel_scope.cancel()
                return
