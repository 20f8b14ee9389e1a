"""Incoming traffic: the app's listening sockets receive the target's connections.

bind(P) binds for real (P if free, else an ephemeral port) and registers the socket with
the intproxy; listen() subscribes the target's port at the agent through the intproxy,
which then opens one local connection to the app per remote one. getsockname() reports
P, and an accepted socket reports the remote client (getpeername) and the target's
address (getsockname).

A listening socket often lives in more than one process: reloaders and prefork servers
(uvicorn --reload/--workers, werkzeug's reloader, gunicorn) bind in one process and
listen or accept in another that inherited the descriptor under any number. So what is
known of a listener is kept by the socket's inode at the intproxy, and a process that
meets a listening socket it does not know asks about it once.

Runs inside the user's app: standard library, wrapt and msgpack only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Any

from mirrord.client.proxy import ProxyUnavailable, failure_to_oserror
from mirrord.layer.context import (
    Context,
    Listening,
    Redirect,
    called_by_debugger,
    ip_kind,
    peer_shape,
)
from mirrord.layer.patching import PatchFamily
from mirrord.layer.sockets import adopt_socket
from mirrord.protocol import (
    ConnInfo,
    ConnInfoReply,
    ListenerInfo,
    ListenerInfoReply,
    RegisterListener,
    RequestFailed,
    Subscribe,
    Subscribed,
)
from mirrord.protocol.origins import Origin

_INET = (socket.AF_INET, socket.AF_INET6)
#: The listen backlog of a subscribed listener. The target's clients queue at the agent;
#: the intproxy's connections into the app come in bursts, and a SYN dropped by a full
#: queue (http.server's is 5) waits a whole second for its retransmission.
TARGET_BACKLOG = 1024
# the real method, for our own use once getsockname is patched to report the app's view
_real_getsockname = socket.socket.getsockname


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


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
        if isinstance(host, str) and (
            self.ctx.debugger.keeps_local(host, port)
            or (ip_kind(host) == "loopback" and called_by_debugger())
        ):
            return False  # a debugger's port is the developer's, never the target's
        return not (
            settings.ignore_localhost
            and isinstance(host, str)
            and ip_kind(host) == "loopback"
            and host not in ("0.0.0.0", "::")
        )

    # -- what this process knows of a listening socket ------------------------------

    def listener(self, sock: socket.socket, ask: bool = True) -> Listening | None:
        """What is known of `sock` as one of the app's listeners (None: not one).

        Known here when this process bound it; else, if `ask`, the intproxy is asked once
        (the socket came from another process); the answer is kept either way."""
        fd = sock.fileno()
        known = self.ctx.listening.get(fd)
        not_ours = self.ctx.not_listeners.get(fd)
        if known is None and not_ours is None and not ask:
            return None
        try:
            inode = _inode(sock)
        except OSError:
            return None
        if known is not None and known.inode == inode:
            return known
        if not_ours == inode:
            return None
        if not ask:
            return None
        self.ctx.listening.pop(fd, None)
        try:
            reply = self.ctx.client.request(ListenerInfo(req=0, listener=inode))
        except ProxyUnavailable:
            return None
        if not isinstance(reply, ListenerInfoReply) or not reply.known:
            self.ctx.not_listeners[fd] = inode
            return None
        listening = Listening(inode, reply.requested_port, reply.remote_port, reply.subscribed)
        self.ctx.listening[fd] = listening
        return listening

    # -- wrappers -------------------------------------------------------------------

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
        listening = Listening(_inode(sock), port, self.settings.port_mapping.get(port, port))
        self.ctx.not_listeners.pop(sock.fileno(), None)
        self.ctx.listening[sock.fileno()] = listening
        request = RegisterListener(
            req=0,
            listener=listening.inode,
            requested_port=listening.requested_port,
            remote_port=listening.remote_port,
        )
        try:
            self.ctx.client.request(request)
        except ProxyUnavailable:
            pass  # listen() will say so; a bound socket is still a local socket
        return None

    def _listen(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        result = wrapped(*args, **kwargs)
        listening = self.listener(sock)
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
            listener=listening.inode,
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
        requested = args[0] if args else kwargs.get("backlog", 0)
        if isinstance(requested, int) and requested < TARGET_BACKLOG:
            with contextlib.suppress(OSError):
                wrapped(TARGET_BACKLOG)
        return result

    def _accept(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        conn, address = wrapped(*args, **kwargs)
        listening = self.listener(sock)
        if listening is None or not listening.subscribed:
            return conn, address
        real_port = _real_getsockname(sock)[1]
        known = self.ctx.client.table_origin(":" in address[0], address[1], real_port)
        stolen = None
        if known is None or known.ask:
            try:
                reply, stolen = self.ctx.client.request_fd(
                    ConnInfo(req=0, listen_port=real_port, peer_port=address[1])
                )
            except ProxyUnavailable:
                return conn, address
            if not isinstance(reply, ConnInfoReply):
                return conn, address  # a local client, not one of the target's
            known = Origin.of(reply)
        local = peer_shape(conn.family, known.local_host, known.local_port)
        if stolen is not None:
            # the stolen socket itself takes the stand-in's place: no byte is relayed
            self.ctx.forget_fd(conn.fileno())
            adopt_socket(conn, stolen, "tcp")
            peer = conn.getpeername()
            # it was REDIRECTed to the agent's port: report the port the client asked for
            self.ctx.redirects[conn.fileno()] = Redirect(
                relay=(peer[0], peer[1]), remote=peer, local=local
            )
            return conn, peer
        remote = peer_shape(conn.family, known.remote_host, known.remote_port)
        self.ctx.redirects[conn.fileno()] = Redirect(
            relay=(address[0], address[1]), remote=remote, local=local
        )
        return conn, remote

    def _getsockname(self, wrapped: Any, sock: Any, args: tuple, kwargs: dict) -> Any:
        name = wrapped(*args, **kwargs)
        fd = sock.fileno()
        redirect = self.ctx.redirects.get(fd)
        if redirect is not None and redirect.local is not None:
            return redirect.local
        if sock.family not in _INET or sock.type != socket.SOCK_STREAM:
            return name
        # only a listening socket may be a listener of another process: ask about those
        ask = (
            fd not in self.ctx.listening
            and fd not in self.ctx.not_listeners
            and _is_listening(sock)
        )
        listening = self.listener(sock, ask=ask)
        if listening is not None:
            return peer_shape(sock.family, name[0], listening.requested_port)
        return name


def _is_listening(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
