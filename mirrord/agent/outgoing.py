"""Outgoing connections, name resolution and the environment, as the target sees them."""

from __future__ import annotations

import errno
import socket

import anyio
import anyio.abc

from mirrord.agent.session import Feature
from mirrord.protocol import Connect, Connected, ConnectedFd, Env, GetEnv, Resolve, Resolved
from mirrord.protocol.messages import AddrInfo
from mirrord.wire.connect import connect
from mirrord.wire.mux import ConnectedUdpPipe, Pipe

CONNECT_TIMEOUT = 30.0


async def connect_socket(
    proto: str, host: str, port: int, mark: int | None = None
) -> socket.socket:
    """A socket connected from here (the target's namespace). Raises OSError.

    `mark`: an fwmark, for connections the agent's own iptables rules must let through."""
    if proto not in ("tcp", "udp"):
        raise OSError(errno.EPROTONOSUPPORT, f"unsupported protocol {proto!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    try:
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        await connect(sock, (host, port), CONNECT_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_end(proto: str, host: str, port: int) -> tuple[Pipe | socket.socket, tuple]:
    """Connect from here: the local end to relay (a TCP socket as it is, UDP as a pipe)
    and its local address."""
    sock = await connect_socket(proto, host, port)
    local = sock.getsockname()
    if proto == "udp":
        return ConnectedUdpPipe(await anyio.abc.ConnectedUDPSocket.from_socket(sock)), local[:2]
    return sock, local[:2]


async def resolve(
    host: str, port: int | str | None, family: int, type: int, proto: int, flags: int
) -> list[AddrInfo]:
    """getaddrinfo as the target does it (its resolv.conf, hosts and DNS servers)."""
    infos = await anyio.to_thread.run_sync(
        socket.getaddrinfo, host, port, family, type, proto, flags, abandon_on_cancel=True
    )
    return [
        (int(fam), int(typ), int(pro), canon, str(addr[0]), int(addr[1]))
        for fam, typ, pro, canon, addr in infos
        if fam in (socket.AF_INET, socket.AF_INET6)
    ]


class OutgoingFeature(Feature):
    """Connect, Resolve and GetEnv requests of one client."""

    handles = (Connect, Resolve, GetEnv)

    async def handle(self, msg: Connect | Resolve | GetEnv) -> None:
        if isinstance(msg, Connect):
            await self.connect(msg)
        elif isinstance(msg, Resolve):
            await self.resolve(msg)
        else:
            await self.session.link.send(Env(req=msg.req, env=self.session.state.env))

    async def connect(self, msg: Connect) -> None:
        link = self.session.link
        try:
            if msg.want_fd and link.can_pass_fds:
                await self._connect_fd(msg)
                return
            end, local = await open_end(msg.proto, msg.host, msg.port)
        except OSError as exc:
            await self.session.reply_failure(msg, exc.errno or 0, str(exc))
            return
        conn = self.session.state.new_conn_id()
        # announce before attaching, so the client knows the conn when its Data arrives
        await link.send(
            Connected(
                req=msg.req,
                conn=conn,
                local_host=local[0],
                local_port=local[1],
                remote_host=msg.host,
                remote_port=msg.port,
            )
        )
        if isinstance(end, socket.socket):
            await self.session.mux.attach_socket(conn, end)
        else:
            self.session.mux.attach(conn, end)

    async def _connect_fd(self, msg: Connect) -> None:
        """Same host: hand over the connected socket itself, so no byte needs relaying."""
        sock = await connect_socket(msg.proto, msg.host, msg.port)
        try:
            local = sock.getsockname()
            reply = ConnectedFd(
                req=msg.req,
                local_host=local[0],
                local_port=local[1],
                remote_host=msg.host,
                remote_port=msg.port,
            )
            await self.session.link.send(reply, fd=sock.fileno())
        finally:
            sock.close()

    async def resolve(self, msg: Resolve) -> None:
        try:
            addrs = await resolve(msg.host, msg.port, msg.family, msg.type, msg.proto, msg.flags)
        except socket.gaierror as exc:
            await self.session.reply_failure(msg, exc.errno or 0, str(exc.strerror), kind="gai")
        except (OSError, UnicodeError) as exc:
            await self.session.reply_failure(msg, 0, str(exc))
        else:
            await self.session.link.send(Resolved(req=msg.req, addrs=addrs))
