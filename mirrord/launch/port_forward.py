"""`mirrord port-forward`: ports of this host to addresses seen from the target (`-L`),
and the target's ports to ports of this host (`-R`), through a session's intproxy.

- `-L [local_port:]remote_host:remote_port`: a listener on 127.0.0.1:local_port; each
  connection to it becomes a connection made from the target (the name is resolved
  there), relayed as the layer relays an app's.
- `-R [remote_port:]local_port`: what reaches the target's remote_port is stolen, or
  mirrored (the config's incoming mode), to 127.0.0.1:local_port. The subscription is
  held by a listener of ours, as an app's listener would hold it; each connection the
  intproxy brings is passed on to the local port.

Blocking sockets and a thread per direction: a developer's port-forward carries a few
connections, and the intproxy's client (`ProxyClient`) is per thread already.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any

from mirrord.client.proxy import ProxyClient, ProxyUnavailable
from mirrord.errors import MirrordError
from mirrord.protocol import Connect, Connected, RequestFailed, Resolve, Resolved, Subscribe

BUFFER = 256 * 1024
_LOCAL = re.compile(r"(?:(\d{1,5}):)?(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d{1,5})")
_REMOTE = re.compile(r"(?:(\d{1,5}):)?(\d{1,5})")


@dataclass(frozen=True)
class LocalForward:
    """``-L``: 127.0.0.1:``local_port`` -> ``host:port`` as the target reaches it."""

    local_port: int
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> LocalForward:
        m = _LOCAL.fullmatch(text.strip())
        if m is None:
            raise MirrordError(
                f"-L {text}: expected [local_port:]remote_host:remote_port (e.g. 5432:db:5432)"
            )
        port = _port(m.group(3), text)
        local = _port(m.group(1), text) if m.group(1) else port
        return cls(local, m.group(2).strip("[]"), port)

    def __str__(self) -> str:
        return f"127.0.0.1:{self.local_port} -> {self.host}:{self.port} (from the target)"


@dataclass(frozen=True)
class RemoteForward:
    """``-R``: the target's ``remote_port`` -> 127.0.0.1:``local_port``."""

    remote_port: int
    local_port: int

    @classmethod
    def parse(cls, text: str) -> RemoteForward:
        m = _REMOTE.fullmatch(text.strip())
        if m is None:
            raise MirrordError(f"-R {text}: expected [remote_port:]local_port (e.g. 8080:9000)")
        local = _port(m.group(2), text)
        return cls(_port(m.group(1), text) if m.group(1) else local, local)


def _port(digits: str, text: str) -> int:
    port = int(digits)
    if not 0 < port < 65536:
        raise MirrordError(f"{text}: {port} is not a port (1-65535)")
    return port


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """One direction until EOF, then half-close the other side."""
    try:
        while data := src.recv(BUFFER):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def splice(a: socket.socket, b: socket.socket) -> None:
    """Relay both ways until both are done, then close both."""
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    other = threading.Thread(target=_pump, args=(b, a), daemon=True)
    other.start()
    _pump(a, b)
    other.join()
    a.close()
    b.close()


class PortForwarder:
    """Serves the forwards of one session (its intproxy's socket and token)."""

    def __init__(
        self,
        proxy_socket: str,
        proxy_token: str,
        incoming_mode: str = "mirror",
        http_filter: dict[str, Any] | None = None,
    ) -> None:
        self._client_args = (proxy_socket, proxy_token)
        self.incoming_mode = incoming_mode if incoming_mode in ("steal", "mirror") else "mirror"
        self.http_filter = http_filter
        self._local = threading.local()
        self.listeners: list[socket.socket] = []

    def client(self) -> ProxyClient:
        """The intproxy, one connection per thread (as the layer has it)."""
        found = getattr(self._local, "client", None)
        if found is None:
            found = self._local.client = ProxyClient(*self._client_args, name="port-forward")
        return found

    # ---- -L

    def local(self, forward: LocalForward) -> None:
        listener = socket.create_server(("127.0.0.1", forward.local_port), reuse_port=False)
        self.listeners.append(listener)
        threading.Thread(target=self._accept_local, args=(listener, forward), daemon=True).start()

    def _accept_local(self, listener: socket.socket, forward: LocalForward) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: we are done
            threading.Thread(target=self._serve_local, args=(conn, forward), daemon=True).start()

    def _serve_local(self, conn: socket.socket, forward: LocalForward) -> None:
        try:
            remote = self.connect_from_target(forward.host, forward.port)
        except OSError:
            conn.close()  # the client sees the connection end; the target said no
            return
        splice(conn, remote)

    def connect_from_target(self, host: str, port: int) -> socket.socket:
        """A socket whose peer is ``host:port`` as the target connects to it."""
        client = self.client()
        try:
            resolved = client.request(
                Resolve(
                    req=0,
                    host=host,
                    port=port,
                    family=0,
                    type=int(socket.SOCK_STREAM),
                    proto=0,
                    flags=0,
                )
            )
            if isinstance(resolved, RequestFailed):
                raise OSError(errno.EHOSTUNREACH, f"{host}: {resolved.message}")
            assert isinstance(resolved, Resolved) and resolved.addrs
            address = resolved.addrs[0][4]
            reply = client.request(
                Connect(
                    req=0, proto="tcp", host=address, port=port, want_fd=False, nonblocking=False
                )
            )
        except ProxyUnavailable as exc:
            raise OSError(errno.ENETUNREACH, str(exc)) from None
        if isinstance(reply, RequestFailed):
            raise OSError(reply.errno or errno.ECONNREFUSED, reply.message)
        assert isinstance(reply, Connected)
        return socket.create_connection((reply.local_host, reply.local_port))

    # ---- -R

    def remote(self, forward: RemoteForward) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        self.listeners.append(listener)
        reply = self.client().request(
            Subscribe(
                req=0,
                port=forward.remote_port,
                mode=self.incoming_mode,
                http_filter=json.dumps(self.http_filter) if self.http_filter else "",
                local_host="127.0.0.1",
                local_port=listener.getsockname()[1],
                want_fd=False,
                listener=os.fstat(listener.fileno()).st_ino,
            )
        )
        if isinstance(reply, RequestFailed):
            raise MirrordError(f"-R {forward.remote_port}: {reply.message}")
        threading.Thread(target=self._accept_remote, args=(listener, forward), daemon=True).start()

    def _accept_remote(self, listener: socket.socket, forward: RemoteForward) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_remote, args=(conn, forward), daemon=True).start()

    def _serve_remote(self, conn: socket.socket, forward: RemoteForward) -> None:
        try:
            local = socket.create_connection(("127.0.0.1", forward.local_port), timeout=10)
            local.settimeout(None)
        except OSError:
            conn.close()  # nothing listens here: the remote client's connection ends
            return
        splice(conn, local)

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
