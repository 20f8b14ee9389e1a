"""Every message of the wire, as small frozen dataclasses with a type tag.

The same messages travel layer <-> intproxy and intproxy <-> agent; `Connected.local_*`
is the agent's socket address on the agent link and the relay address on the layer link.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, TypeVar

PROTOCOL_VERSION = 1
#: Largest payload of one frame; a bigger length prefix is a protocol error.
MAX_FRAME = 1 << 20
#: Largest chunk of connection bytes carried by one Data frame.
MAX_CHUNK = 256 * 1024

#: Unresolved (host, port) pair as sent on the wire.
AddrInfo = tuple[int, int, int, str, str, int]


#: Every message class by tag; each module of messages adds its own on import.
MESSAGES: dict[str, type[Message]] = {}


@dataclass(frozen=True, slots=True)
class Message:
    TAG: ClassVar[str] = ""

    def __init_subclass__(cls) -> None:
        # no super(): slots=True dataclasses break its zero-argument form.
        # dataclass(slots=True) builds a second class; it registers last and wins.
        known = MESSAGES.get(cls.TAG)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"message tag {cls.TAG!r} is taken by {known.__qualname__}")
        if cls.TAG:
            MESSAGES[cls.TAG] = cls


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First frame from a client: protocol version and the session token."""

    TAG: ClassVar[str] = "hello"
    version: int
    token: str
    client: str


@dataclass(frozen=True, slots=True)
class HelloOk(Message):
    TAG: ClassVar[str] = "hello_ok"
    version: int


@dataclass(frozen=True, slots=True)
class Error(Message):
    """A fatal error: the sender closes the connection after it."""

    TAG: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TAG: ClassVar[str] = "ping"
    seq: int


@dataclass(frozen=True, slots=True)
class Pong(Message):
    TAG: ClassVar[str] = "pong"
    seq: int


@dataclass(frozen=True, slots=True)
class Connect(Message):
    """Open an outgoing connection from the target: proto is "tcp" or "udp".

    `want_fd`: the sender can take the connected socket itself (SCM_RIGHTS over a unix
    socket on the same host); the answer is then ConnectedFd instead of Connected.
    `nonblocking`: the app's socket is non-blocking; its connect() must not wait for a
    slow remote (the intproxy may answer with a relay before the agent has connected).
    """

    TAG: ClassVar[str] = "connect"
    req: int
    proto: str
    host: str
    port: int
    want_fd: bool
    nonblocking: bool


@dataclass(frozen=True, slots=True)
class Connected(Message):
    TAG: ClassVar[str] = "connected"
    req: int
    conn: int
    local_host: str
    local_port: int
    remote_host: str
    remote_port: int


@dataclass(frozen=True, slots=True)
class ConnectedFd(Message):
    """Connected, and the socket (created in the target) travels with this frame."""

    TAG: ClassVar[str] = "connected_fd"
    req: int
    local_host: str
    local_port: int
    remote_host: str
    remote_port: int


@dataclass(frozen=True, slots=True)
class RequestFailed(Message):
    """A request failed: kind "os" carries an errno, kind "gai" a getaddrinfo error code."""

    TAG: ClassVar[str] = "failed"
    req: int
    kind: str
    errno: int
    message: str


@dataclass(frozen=True, slots=True)
class Data(Message):
    """Bytes of a connection (one datagram for UDP)."""

    TAG: ClassVar[str] = "data"
    conn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Eof(Message):
    """The sender will write no more on this connection (TCP half-close)."""

    TAG: ClassVar[str] = "eof"
    conn: int


@dataclass(frozen=True, slots=True)
class Close(Message):
    """The connection is gone (closed or reset); both sides forget it."""

    TAG: ClassVar[str] = "close"
    conn: int
    reset: bool


@dataclass(frozen=True, slots=True)
class Credit(Message):
    """The receiver has delivered `amount` more bytes: the sender may send that much more."""

    TAG: ClassVar[str] = "credit"
    conn: int
    amount: int


@dataclass(frozen=True, slots=True)
class Resolve(Message):
    """getaddrinfo(host, port, family, type, proto, flags) as the target resolves it."""

    TAG: ClassVar[str] = "resolve"
    req: int
    host: str
    port: int | str | None
    family: int
    type: int
    proto: int
    flags: int


@dataclass(frozen=True, slots=True)
class Resolved(Message):
    TAG: ClassVar[str] = "resolved"
    req: int
    addrs: list[AddrInfo]


@dataclass(frozen=True, slots=True)
class GetEnv(Message):
    TAG: ClassVar[str] = "get_env"
    req: int


@dataclass(frozen=True, slots=True)
class Env(Message):
    TAG: ClassVar[str] = "env"
    req: int
    env: dict[str, str]


M = TypeVar("M", bound=Message)


def with_req(msg: M, req: int) -> M:
    """A copy of a request or a reply carrying another request id."""
    return dataclasses.replace(msg, req=req)  # type: ignore[call-arg]
