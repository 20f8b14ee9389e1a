"""What the target sees, asked straight through the session's intproxy: names, outgoing
connections and files. The layer asks the same questions for a patched app; here a
library call asks them, so nothing in this process is patched."""

from __future__ import annotations

import inspect
import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any, TypeVar

from mirrord.client.proxy import ProxyClient, ProxyUnavailable, failure_to_oserror
from mirrord.errors import MirrordError
from mirrord.protocol import (
    Connect,
    Connected,
    ConnectedFd,
    ConnInfo,
    ConnInfoReply,
    FileClose,
    FileData,
    FileEntries,
    FileListDir,
    FileOpen,
    FileOpened,
    FileRead,
    FileStat,
    FileStatResult,
    ListenerClosed,
    ListenerInfo,
    Message,
    RequestFailed,
    Resolve,
    Resolved,
    Subscribe,
)
from mirrord.protocol.files import MAX_FILE_CHUNK, STAT_FIELDS

M = TypeVar("M", bound=Message)


class OwnedClient(ProxyClient):
    """A ProxyClient for one job of the session (its requests, a subscription), whose
    channels end when it is closed."""

    def __init__(self, path: str, token: str) -> None:
        super().__init__(path, token, name="session")  # so the intproxy's log says

    def close(self) -> None:
        self.after_fork()  # closes every channel and forgets it

    def subscribe(self, port: int, mode: str, http_filter: str, listener: socket.socket) -> None:
        """Have the target's `port` (mirror or steal) delivered to `listener`, on
        127.0.0.1; the bytes are relayed to it (whoever listens there accepts by itself).
        The subscription lasts as long as that socket: close it, then `release` it."""
        what = f"cannot {mode} port {port}"
        msg = Subscribe(
            req=0,
            port=port,
            mode=mode,
            http_filter=http_filter,
            local_host="127.0.0.1",
            local_port=listener.getsockname()[1],
            want_fd=False,
            listener=os.fstat(listener.fileno()).st_ino,
        )
        try:
            reply = self.request(msg)
        except ProxyUnavailable as exc:
            raise MirrordError(f"{what}: {exc}") from None
        if isinstance(reply, RequestFailed):
            raise MirrordError(f"{what}: {reply.message}")

    def release(self, inode: int) -> None:
        """Our listener with this inode is closed: the intproxy ends its subscription now
        (the question after it returns once that is done) rather than at its next sweep."""
        try:
            self.notify(ListenerClosed(listener=inode))
            self.request(ListenerInfo(req=0, listener=inode))
        except ProxyUnavailable:
            pass  # the intproxy is gone, and the subscription with it

    def origin(self, listen_port: int, peer_port: int) -> tuple[str, int] | None:
        """The target's client behind the intproxy's connection from `peer_port` to our
        listener on `listen_port`; None for a connection that is not the intproxy's."""
        try:
            reply = self.request(ConnInfo(req=0, listen_port=listen_port, peer_port=peer_port))
        except ProxyUnavailable:
            return None
        if isinstance(reply, ConnInfoReply):
            return (reply.remote_host, reply.remote_port)
        return None

    def ask(self, msg: Message, expected: type[M], what: str) -> M:
        """One request; a failure of the target is the OSError a local call raises."""
        reply = self.ask_fd(msg, what)[0]
        return _expect(reply, expected, what)

    def ask_fd(self, msg: Message, what: str) -> tuple[Message, int | None]:
        try:
            reply, fd = self.request_fd(msg)
        except ProxyUnavailable as exc:
            raise MirrordError(f"{what}: the session's intproxy is gone ({exc})") from None
        if isinstance(reply, RequestFailed):
            if fd is not None:
                os.close(fd)
            raise _os_error(reply, what)
        return reply, fd


def _expect(reply: Message, expected: type[M], what: str) -> M:
    if not isinstance(reply, expected):
        raise MirrordError(f"{what}: unexpected answer {reply.TAG!r}")
    return reply


def _os_error(reply: RequestFailed, what: str) -> OSError:
    if reply.kind == "gai":
        return socket.gaierror(reply.errno, f"{reply.message} ({what})")
    error = failure_to_oserror(reply)
    error.filename = what if what.startswith("/") else None
    return error


class TargetIO:
    """Name lookups, connections and file reads done by the target, for this process."""

    def __init__(self, client: OwnedClient) -> None:
        self.client = client

    # ---- names and connections

    def getaddrinfo(
        self, host: str, port: int | None = None, family: int = 0, type: int = socket.SOCK_STREAM
    ) -> list[tuple[int, str, int]]:
        """(family, address, port) for `host` as the target resolves it."""
        reply = self.client.ask(
            Resolve(req=0, host=host, port=port, family=family, type=type, proto=0, flags=0),
            Resolved,
            host,
        )
        return [(fam, address, rport) for fam, _t, _p, _c, address, rport in reply.addrs]

    def resolve(self, host: str, family: int = 0) -> list[str]:
        """The target's addresses for `host`, in its resolver's order, each once."""
        return list(dict.fromkeys(a for _, a, _ in self.getaddrinfo(host, None, family)))

    def connect(self, address: tuple[str, int], timeout: float | None = None) -> socket.socket:
        """A TCP socket whose connection leaves from the target, like
        socket.create_connection: every address of the name is tried in turn."""
        host, port = address[0], int(address[1])
        last: OSError | None = None
        for ip in _addresses(self, host, port):
            try:
                return self._connect_to(ip, port, timeout)
            except OSError as exc:
                last = exc
        raise last or OSError(f"{host}: no address")

    def _connect_to(self, ip: str, port: int, timeout: float | None) -> socket.socket:
        what = f"connect to {ip}:{port}"
        reply, fd = self.client.ask_fd(
            Connect(req=0, proto="tcp", host=ip, port=port, want_fd=True, nonblocking=False),
            what,
        )
        if isinstance(reply, ConnectedFd) and fd is not None:
            sock = socket.socket(fileno=fd)  # connected in the target, or the intproxy relays it
        else:
            # a relay address of the intproxy; the real connect, even while activated
            relay = _expect(reply, Connected, what)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                _real_connect(sock, (relay.local_host, relay.local_port))
            except BaseException:
                sock.close()
                raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        return sock

    # ---- files

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        where = _absolute(path)
        opened = self.client.ask(
            FileOpen(req=0, path=where, flags=os.O_RDONLY, mode=0, read_ahead=MAX_FILE_CHUNK),
            FileOpened,
            where,
        )
        parts = [opened.data]
        try:
            offset, eof = len(opened.data), opened.eof or not opened.handle
            while not eof:
                chunk = self.client.ask(
                    FileRead(req=0, handle=opened.handle, offset=offset, size=MAX_FILE_CHUNK),
                    FileData,
                    where,
                )
                parts.append(chunk.data)
                offset += len(chunk.data)
                eof = chunk.eof or not chunk.data
        finally:
            if opened.handle:
                self.client.request(FileClose(req=0, handle=opened.handle))
        return b"".join(parts)

    def listdir(self, path: str | os.PathLike[str]) -> list[str]:
        return [os.fsdecode(entry[0]) for entry in self._entries(_absolute(path))]

    def _entries(self, where: str) -> Iterator[tuple[bytes, int, int, int]]:
        start = 0
        while True:
            page = self.client.ask(FileListDir(req=0, path=where, start=start), FileEntries, where)
            yield from page.entries
            start += len(page.entries)
            if not page.more or not page.entries:
                return

    def stat(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> os.stat_result:
        where = _absolute(path)
        reply = self.client.ask(
            FileStat(req=0, path=where, follow_symlinks=follow_symlinks), FileStatResult, where
        )
        return _stat_result(reply.stat)

    def exists(self, path: str | os.PathLike[str]) -> bool:
        try:
            self.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True


def _addresses(io: TargetIO, host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return [a for fam, a, _ in io.getaddrinfo(host, port) if fam in _INET]


_INET = (socket.AF_INET, socket.AF_INET6)
#: socket.socket.connect without any patch of an active layer (ours included)
_real_connect: Any = inspect.unwrap(socket.socket.connect)


def _absolute(path: str | os.PathLike[str]) -> str:
    where = os.fspath(path)
    if not os.path.isabs(where):
        raise ValueError(f"a path in the target must be absolute: {where!r}")
    return where


def _stat_result(values: list[int]) -> os.stat_result:
    fields = dict(zip(STAT_FIELDS, values, strict=True))
    seconds = [fields[f"st_{t}time_ns"] // 10**9 for t in "amc"]
    first = [fields[name] for name in STAT_FIELDS[:7]]
    extra: dict[str, float] = {name: fields[name] for name in STAT_FIELDS[7:]}
    extra.update({f"st_{t}time": fields[f"st_{t}time_ns"] / 1e9 for t in "amc"})
    return os.stat_result((*first, *seconds), extra)
