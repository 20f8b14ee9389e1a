"""Outgoing connections and name resolution, from inside the target's namespaces."""

from __future__ import annotations

import errno
import socket

import anyio
import anyio.abc

from mirrord.mux import ConnectedUdpPipe, Pipe, TcpPipe
from mirrord.protocol.messages import AddrInfo

CONNECT_TIMEOUT = 30.0


async def open_pipe(proto: str, host: str, port: int) -> tuple[Pipe, tuple[str, int]]:
    """Connect from here; returns the pipe and its local address. Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if proto == "udp":
        udp = await anyio.create_connected_udp_socket(
            host, port, family=socket.AF_INET6 if ":" in host else socket.AF_INET
        )
        local = udp.extra(anyio.abc.SocketAttribute.local_address)
        return ConnectedUdpPipe(udp), (str(local[0]), int(local[1]))
    if proto != "tcp":
        raise OSError(errno.EPROTONOSUPPORT, f"unsupported protocol {proto!r}")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # connect by hand: anyio.connect_tcp folds the errno into a generic message
        err = sock.connect_ex((host, port))
        if err == errno.EINPROGRESS:
            with anyio.fail_after(CONNECT_TIMEOUT):
                await anyio.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect to {host}:{port}: {errno.errorcode.get(err, err)}")
        stream = await anyio.abc.SocketStream.from_socket(sock)
    except TimeoutError:
        sock.close()
        raise OSError(errno.ETIMEDOUT, f"connect to {host}:{port} timed out") from None
    except BaseException:
        sock.close()
        raise
    local = sock.getsockname()
    return TcpPipe(stream), (local[0], local[1])


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
