"""Outgoing TCP and UDP: connect/sendto to remote addresses go through relays.

`connect(remote)` asks the intproxy to connect from the target, then connects the real
socket to the relay address it got; getpeername()/recvfrom() report the remote address.
Runs inside the user's app: standard library, wrapt and msgpack only.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from mirrord.client.proxy import ProxyUnavailable, failure_to_oserror
from mirrord.layer.context import Context, Redirect, called_by_debugger, ip_kind, peer_shape
from mirrord.layer.dns import DnsPatches
from mirrord.layer.patching import PatchFamily
from mirrord.protocol import Connect, Connected, ConnectedFd, RequestFailed

_INET = (socket.AF_INET, socket.AF_INET6)
_PROTO = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}


class SocketPatches(PatchFamily):
    def __init__(self, ctx: Context, dns: DnsPatches) -> None:
        super().__init__()
        self.ctx = ctx
        self.dns = dns

    def patches(self) -> list[tuple[str, str, Any]]:
        return [
            ("socket", "socket.connect", self._connect),
            ("socket", "socket.connect_ex", self._connect_ex),
            ("socket", "socket.getpeername", self._getpeername),
            ("socket", "socket.sendto", self._sendto),
            ("socket", "socket.recvfrom", self._recvfrom),
            ("socket", "socket.recvfrom_into", self._recvfrom_into),
            ("socket", "socket.close", self._close),
        ]

    # -- deciding -------------------------------------------------------------------

    def route(self, sock: socket.socket, address: Any) -> tuple[str, str, int] | None:
        """(proto, ip, port) when this destination goes through the target, else None."""
        if sock.family not in _INET or not isinstance(address, tuple) or len(address) < 2:
            return None
        proto = _PROTO.get(sock.type)
        settings = self.ctx.settings
        if proto is None or not (settings.tcp if proto == "tcp" else settings.udp):
            return None
        host, port = address[0], address[1]
        if not isinstance(host, str) or not isinstance(port, int):
            return None
        kind = ip_kind(host)
        if kind is None:
            host = self._resolve_for_connect(sock, host, port)
            kind = ip_kind(host)
        if kind == "loopback" and (
            settings.ignore_localhost
            or self.ctx.debugger.keeps_local(host, port)
            or called_by_debugger()
        ):
            return None
        if not settings.outgoing_filter.is_remote(proto, host, port, self.ctx.names_of(host)):
            return None
        return proto, host, port

    def _resolve_for_connect(self, sock: socket.socket, host: str, port: int) -> str:
        # socket.connect(("name", port)) resolves inside C, past our getaddrinfo patch
        infos = socket.getaddrinfo(host, port, sock.family, sock.type)
        return str(infos[0][4][0])

    def _ask_connect(
        self, proto: str, host: str, port: int, want_fd: bool, nonblocking: bool = False
    ) -> tuple[Connected, None] | tuple[ConnectedFd, int]:
        """Ask the intproxy to connect from the target; errors as the OSError a local
        connect would raise."""
        request = Connect(
            req=0, proto=proto, host=host, port=port, want_fd=want_fd, nonblocking=nonblocking
        )
        try:
            reply, fd = self.ctx.client.request_fd(request)
        except ProxyUnavailable as exc:
            raise OSError(errno.ENETUNREACH, str(exc)) from None
        if isinstance(reply, ConnectedFd) and fd is not None:
            return reply, fd
        if isinstance(reply, Connected):
            return reply, None
        if isinstance(reply, RequestFailed):
            raise failure_to_oserror(reply)
        raise OSError(errno.EPROTO, "mirrord: unexpected answer to connect")

    def _connect_remote(
        self, sock: socket.socket, proto: str, host: str, port: int
    ) -> Redirect | None:
        """Connect `sock` from the target: the relay to connect to, or None when the
        socket was replaced by one the agent connected (same host: no relaying at all)."""
        fd = sock.fileno()
        known = self.ctx.redirects.get(fd)
        if known is not None and known.remote[:2] == peer_shape(sock.family, host, port)[:2]:
            return known  # connect() again on a connecting socket: same relay, same errno
        # a non-blocking socket (asyncio's) must not wait for a slow remote: see Connect
        nonblocking = sock.gettimeout() == 0.0
        reply, new_fd = self._ask_connect(proto, host, port, _adoptable(sock, host), nonblocking)
        if new_fd is not None:
            adopt_socket(sock, new_fd, proto)
            self.ctx.forget_fd(fd)
            remote = peer_shape(sock.family, host, port)
            peer = sock.getpeername()
            if not _same_address(sock.family, peer, remote):
                # an end of the intproxy's relay, not the agent's socket
                self.ctx.redirects[fd] = Redirect(relay=peer[:2], remote=remote)
            return None
        redirect = Redirect(
            relay=(reply.local_host, reply.local_port),
            remote=peer_shape(sock.family, host, port),
        )
        self.ctx.redirects[fd] = redirect
        return redirect

    def _relay_address(self, sock: socket.socket, relay: tuple[str, int]) -> tuple[Any, ...]:
        return peer_shape(sock.family, relay[0], relay[1])

    # -- wrappers -------------------------------------------------------------------

    def _connect(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        route = self.route(sock, args[0] if args else kwargs.get("address"))
        if route is None:
            return wrapped(*args, **kwargs)
        redirect = self._connect_remote(sock, *route)
        if redirect is None:
            return None
        return wrapped(self._relay_address(sock, redirect.relay))

    def _connect_ex(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        try:
            route = self.route(sock, args[0] if args else kwargs.get("address"))
            if route is None:
                return wrapped(*args, **kwargs)
            redirect = self._connect_remote(sock, *route)
        except socket.gaierror:
            raise
        except OSError as exc:
            return exc.errno or errno.EIO
        if redirect is None:
            return 0
        return wrapped(self._relay_address(sock, redirect.relay))

    def _remote_of(self, sock: Any, address: Any) -> Any:
        """The remote address if `address` is this socket's relay, else `address`."""
        redirect = self.ctx.redirects.get(sock.fileno())
        # compare with the relay: a reused fd must not inherit a stale redirect
        if (
            redirect is not None
            and isinstance(address, tuple)
            and tuple(address[:2]) == self._relay_address(sock, redirect.relay)[:2]
        ):
            return redirect.remote
        return address

    def _getpeername(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        return self._remote_of(sock, wrapped(*args, **kwargs))

    def _udp_relay(self, sock: Any, address: Any) -> tuple[Any, ...] | None:
        route = self.route(sock, address)
        if route is None or route[0] != "udp":
            return None
        fd = sock.fileno()
        remote = (route[1], route[2])
        relays = self.ctx.udp_relays.setdefault(fd, {})
        relay = relays.get(remote)
        if relay is None:
            reply, _ = self._ask_connect("udp", remote[0], remote[1], want_fd=False)
            relay = relays[remote] = (reply.local_host, reply.local_port)
            self.ctx.udp_remotes.setdefault(fd, {})[relay] = peer_shape(sock.family, *remote)
        return self._relay_address(sock, relay)

    def _sendto(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        if len(args) in (2, 3):
            relay = self._udp_relay(sock, args[-1])
            if relay is not None:
                return wrapped(*args[:-1], relay)
        return wrapped(*args, **kwargs)

    def _translate(self, sock: Any, address: Any) -> Any:
        fd = sock.fileno()
        remotes = self.ctx.udp_remotes.get(fd)
        if remotes and isinstance(address, tuple):
            remote = remotes.get((address[0].removeprefix("::ffff:"), address[1]))
            if remote is not None:
                return remote
        return self._remote_of(sock, address)

    def _recvfrom(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        data, address = wrapped(*args, **kwargs)
        return data, self._translate(sock, address)

    def _recvfrom_into(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        nbytes, address = wrapped(*args, **kwargs)
        return nbytes, self._translate(sock, address)

    def _close(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        fd = sock.fileno()
        if fd >= 0 and getattr(sock, "_io_refs", 0) <= 0:
            self.ctx.forget_fd(fd)
        return wrapped(*args, **kwargs)


#: Options an app may have set before connect(), carried over to an adopted socket.
_CARRIED_OPTIONS = {
    "tcp": [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        (socket.IPPROTO_TCP, socket.TCP_NODELAY),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    ],
    "udp": [(socket.SOL_SOCKET, socket.SO_BROADCAST)],
}


def _adoptable(sock: socket.socket, host: str) -> bool:
    """Can `sock` take over a socket connected in the target, losing nothing?"""
    if (sock.family == socket.AF_INET6) != (":" in host):
        return False
    try:
        # a socket bound to a local address or port must keep it: relay instead
        return sock.getsockname()[1] == 0
    except OSError:
        return False


def _same_address(family: int, a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    try:
        return a[1] == b[1] and socket.inet_pton(family, a[0]) == socket.inet_pton(family, b[0])
    except (OSError, ValueError):
        return False


def adopt_socket(sock: socket.socket, new_fd: int, proto: str) -> None:
    """Make `sock`'s descriptor refer to `new_fd`'s socket (connected in the target)."""
    try:
        new = socket.socket(fileno=new_fd)
        try:
            for level, option in _CARRIED_OPTIONS[proto]:
                try:
                    new.setsockopt(level, option, sock.getsockopt(level, option))
                except OSError:
                    pass
        finally:
            new.detach()
        timeout = sock.gettimeout()
        os.dup2(new_fd, sock.fileno(), inheritable=sock.get_inheritable())
        # the adopted description's blocking mode must match the socket object's timeout
        sock.settimeout(timeout)
    finally:
        os.close(new_fd)
