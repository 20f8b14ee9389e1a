"""Incoming traffic: the app's listening sockets receive the target's connections.

bind(P) binds for real (P if free, else an ephemeral port) and remembers P; listen()
subscribes the target's port at the agent through the intproxy, which then opens one
local connection to the app per remote one. getsockname() reports P, and an accepted
socket reports the remote client (getpeername) and the target's address (getsockname).
Runs inside the user's app: standard library, wrapt and msgpack only.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from mirrord.layer.client import ProxyUnavailable, failure_to_oserror
from mirrord.layer.context import Context, Listening, Redirect, ip_kind, peer_shape
from mirrord.layer.patching import PatchFamily
from mirrord.layer.sockets import adopt_socket
from mirrord.protocol import ConnInfo, ConnInfoReply, RequestFailed, Subscribe, Subscribed

_INET = (socket.AF_INET, socket.AF_INET6)
# the real method, for our own use once getsockname is patched to report the app's view
_real_getsockname = socket.socket.getsockname


class IncomingPatches(PatchFamily):
    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx
        self.settings = ctx.settings.incoming

    def patches(self) -> list[tuple[str, str, Any]]:
        if self.settings.mode == "off":
            return []
        return [
            ("socket", "socket.bind", self._bind),
            ("socket", "socket.listen", self._listen),
            ("socket", "socket.accept", self._accept),
            ("socket", "socket.getsockname", self._getsockname),
        ]

    def wanted(self, sock: socket.socket, address: Any) -> bool:
        """Does binding `sock` to `address` make a listener the target's traffic reaches?"""
        if sock.family not in _INET or sock.type != socket.SOCK_STREAM:
            return False
        if not isinstance(address, tuple) or len(address) < 2 or not isinstance(address[1], int):
            return False
        port = address[1]
        settings = self.settings
        if port == 0 or port in settings.ignore_ports:
            return False
        if settings.ports is not None and port not in settings.ports:
            return False
        host = address[0]
        return not (
            settings.ignore_localhost
            and isinstance(host, str)
            and ip_kind(host) == "loopback"
            and host not in ("0.0.0.0", "::")
        )

    def _bind(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        address: Any = args[0] if args else kwargs.get("address")
        if not self.wanted(sock, address):
            return wrapped(*args, **kwargs)
        port = address[1]
        local_port = self.settings.listen_ports.get(port, port)
        try:
            wrapped((address[0], local_port, *address[2:]))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or port in self.settings.listen_ports:
                raise
            # the port is taken on this machine: any port will do, the app still sees its own
            wrapped((address[0], 0, *address[2:]))
        remote_port = self.settings.port_mapping.get(port, port)
        self.ctx.listening[sock.fileno()] = Listening(
            requested=tuple(address), remote_port=remote_port
        )
        return None

    def _listen(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        result = wrapped(*args, **kwargs)
        listening = self.ctx.listening.get(sock.fileno())
        if listening is None or listening.subscribed:
            return result
        host, port = _real_getsockname(sock)[:2]
        if ip_kind(host) == "loopback" or host in ("0.0.0.0", "::", ""):
            host = "::1" if sock.family == socket.AF_INET6 and ":" in host else "127.0.0.1"
        request = Subscribe(
            req=0,
            port=listening.remote_port,
            mode=self.settings.mode,
            http_filter=self.settings.http_filter,
            local_host=host,
            local_port=port,
            want_fd=True,
        )
        try:
            reply = self.ctx.client.request(request)
        except ProxyUnavailable as exc:
            raise OSError(errno.ENETUNREACH, str(exc)) from None
        if isinstance(reply, RequestFailed):
            raise failure_to_oserror(reply)
        if not isinstance(reply, Subscribed):
            raise OSError(errno.EPROTO, "mirrord: unexpected answer to a subscription")
        listening.subscribed = True
        return result

    def _accept(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        conn, address = wrapped(*args, **kwargs)
        listening = self.ctx.listening.get(sock.fileno())
        if listening is None or not listening.subscribed:
            return conn, address
        real_port = _real_getsockname(sock)[1]
        try:
            reply, stolen = self.ctx.client.request_fd(
                ConnInfo(req=0, listen_port=real_port, peer_port=address[1])
            )
        except ProxyUnavailable:
            return conn, address
        if not isinstance(reply, ConnInfoReply):
            return conn, address  # a local client, not one of the target's
        if stolen is not None:
            # the stolen socket itself takes the stand-in's place: no byte is relayed
            self.ctx.forget_fd(conn.fileno())
            adopt_socket(conn, stolen, "tcp")
            peer = conn.getpeername()
            # it was REDIRECTed to the agent's port: report the port the client asked for
            self.ctx.redirects[conn.fileno()] = Redirect(
                relay=(peer[0], peer[1]),
                remote=peer,
                local=peer_shape(conn.family, reply.local_host, reply.local_port),
            )
            return conn, peer
        remote = peer_shape(conn.family, reply.remote_host, reply.remote_port)
        self.ctx.redirects[conn.fileno()] = Redirect(
            relay=(address[0], address[1]),
            remote=remote,
            local=peer_shape(conn.family, reply.local_host, reply.local_port),
        )
        return conn, remote

    def _getsockname(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        name = wrapped(*args, **kwargs)
        fd = sock.fileno()
        listening = self.ctx.listening.get(fd)
        if listening is not None:
            return peer_shape(sock.family, name[0], listening.requested[1])
        redirect = self.ctx.redirects.get(fd)
        if redirect is not None and redirect.local is not None:
            return redirect.local
        return name
