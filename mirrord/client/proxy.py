"""A blocking link to the intproxy: pooled unix sockets, thread- and fork-safe.

Runs inside the user's app (the layer) and in the CLI: standard library and msgpack only.
"""

from __future__ import annotations

import array
import errno
import itertools
import mmap
import os
import socket
import threading

from mirrord.protocol import (
    ClientHandshake,
    Codec,
    ConnectedFd,
    ConnInfoReply,
    Message,
    ProtocolError,
    RequestFailed,
    origins,
)
from mirrord.protocol.codec import encode
from mirrord.protocol.messages import with_req

#: Longer than the agent's own connect timeout, so its answer arrives first.
REQUEST_TIMEOUT = 45.0


class ProxyUnavailable(OSError):
    """The intproxy cannot be reached or stopped answering."""


#: Room for the descriptors one read may bring (each ConnectedFd carries one).
_FD_SPACE = socket.CMSG_SPACE(16 * 4)


class _Channel:
    def __init__(self, path: str, token: str, name: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(REQUEST_TIMEOUT)
        self.codec = Codec()
        self.fds: list[int] = []
        try:
            self.sock.connect(path)
            handshake = ClientHandshake(token, f"{name} pid {os.getpid()}")
            self.sock.sendall(encode(handshake.hello))
            handshake.receive(self.receive())
        except BaseException:
            self.sock.close()
            raise

    def receive(self) -> Message:
        while (msg := self.codec.next_message()) is None:
            data, ancillary, _flags, _addr = self.sock.recvmsg(
                65536, _FD_SPACE, socket.MSG_CMSG_CLOEXEC
            )
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % 4
                    self.fds.extend(array.array("i", payload[:usable]))
            if not data:
                raise ProxyUnavailable(errno.ECONNABORTED, "mirrord: the intproxy closed the link")
            self.codec.feed(data)
        return msg

    def take_fd(self) -> int:
        if not self.fds:
            raise ProtocolError("a reply announced a socket that did not arrive")
        return self.fds.pop(0)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.sock.close()


class ProxyClient:
    """Synchronous request/reply with the intproxy, safe across threads and fork().

    Channels are pooled: a request takes an idle one (or opens one) and gives it back,
    so a thread that ends holds nothing and an app that ran a thousand threads keeps a
    handful of descriptors; the intproxy knows the app is alive by its idle channel."""

    #: Idle channels kept open; more are opened while threads wait on requests at once.
    IDLE_CHANNELS = 4

    def __init__(self, path: str, token: str, name: str = "layer") -> None:
        """`name` tells the intproxy who we are: "layer" inside the app, "cli" for the
        CLI's own requests (which do not show that the app's layer loaded)."""
        self.path = path
        self.token = token
        self.name = name
        self._ids = itertools.count(1)
        self._pid = os.getpid()
        self._idle: list[_Channel] = []
        self._open: set[_Channel] = set()  # idle or in use, for after_fork()
        self._lock = threading.Lock()
        self._table: mmap.mmap | None = None
        self._no_table = False

    def table_origin(self, ipv6: bool, port: int, app_port: int) -> origins.Origin | None:
        """What the intproxy's origin table says about its connection from `port` to the
        app's `app_port`, without asking it; None when the table does not know."""
        table = self._table
        if table is None:
            if self._no_table:
                return None
            table = self._open_table()
            if table is None:
                return None
        return origins.read_origin(table, ipv6, port, app_port)

    def _open_table(self) -> mmap.mmap | None:
        try:
            with open(origins.table_path(self.path), "rb") as f:
                table = mmap.mmap(f.fileno(), origins.TABLE_SIZE, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            self._no_table = True  # an intproxy without one: every accept asks
            return None
        with self._lock:
            if self._table is None:
                self._table = table
            else:
                table.close()  # another thread mapped it first
        return self._table

    def _checkout(self) -> _Channel:
        if self._pid != os.getpid():
            self.after_fork()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            channel = _Channel(self.path, self.token, self.name)
        except ProtocolError as exc:
            raise ProxyUnavailable(
                errno.ECONNREFUSED, f"mirrord: intproxy refused: {exc}"
            ) from None
        except OSError as exc:
            raise ProxyUnavailable(
                exc.errno or errno.ECONNREFUSED, f"mirrord: cannot reach the intproxy: {exc}"
            ) from None
        with self._lock:
            self._open.add(channel)
        return channel

    def _checkin(self, channel: _Channel) -> None:
        with self._lock:
            if channel in self._open and len(self._idle) < self.IDLE_CHANNELS:
                self._idle.append(channel)
                return
        self._drop(channel)

    def connect(self) -> None:
        """Open a channel now and keep it (the app's presence keeps the intproxy alive)."""
        self._checkin(self._checkout())

    def request(self, msg: Message) -> Message:
        """Send a request (its `req` is filled in) and wait for its reply."""
        reply, fd = self.request_fd(msg)
        if fd is not None:
            os.close(fd)
        return reply

    def request_fd(self, msg: Message) -> tuple[Message, int | None]:
        """Like `request`, with the socket a ConnectedFd reply carries (now the caller's)."""
        channel = self._checkout()
        req = next(self._ids)
        try:
            channel.sock.sendall(encode(with_req(msg, req)))
            while True:
                reply = channel.receive()
                fd = channel.take_fd() if _carries_fd(reply) else None
                if getattr(reply, "req", None) == req:
                    break
                if fd is not None:
                    os.close(fd)
        except (OSError, ProtocolError) as exc:
            self._drop(channel)
            if isinstance(exc, ProxyUnavailable):
                raise
            raise ProxyUnavailable(
                errno.ECONNABORTED, f"mirrord: intproxy link failed: {exc}"
            ) from None
        self._checkin(channel)
        return reply, fd

    def notify(self, msg: Message) -> None:
        """Send a message that has no reply."""
        channel = self._checkout()
        try:
            channel.sock.sendall(encode(msg))
        except OSError as exc:
            self._drop(channel)
            raise ProxyUnavailable(
                errno.ECONNABORTED, f"mirrord: intproxy link failed: {exc}"
            ) from None
        self._checkin(channel)

    def open_channels(self) -> int:
        """How many channels to the intproxy this process holds (idle or in use)."""
        return len(self._open)

    def _drop(self, channel: _Channel) -> None:
        channel.close()
        with self._lock:
            self._open.discard(channel)
            if channel in self._idle:
                self._idle.remove(channel)

    def after_fork(self) -> None:
        """In a forked child: the parent's channels are not ours to use."""
        for channel in list(self._open):
            channel.close()
        self._open = set()
        self._idle = []
        self._lock = threading.Lock()
        self._pid = os.getpid()


def failure_to_oserror(reply: RequestFailed) -> OSError:
    """The OSError (subclass by errno) a local call would have raised."""
    code = reply.errno or errno.EIO
    return OSError(code, f"{os.strerror(code)} (mirrord: {reply.message})")


def _carries_fd(reply: Message) -> bool:
    return isinstance(reply, ConnectedFd) or (isinstance(reply, ConnInfoReply) and reply.has_fd)
