"""Messages of incoming traffic: subscriptions to the target's ports and the connections
that arrive on them (mirrored copies or stolen originals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mirrord.protocol.messages import Message


@dataclass(frozen=True, slots=True)
class Subscribe(Message):
    """Deliver connections to the target's `port`: mode "mirror" or "steal".

    `http_filter` is mirrord's http_filter object as JSON ("" for none). On the layer
    link, `local_host`/`local_port` say where the app really listens; the agent ignores them.
    """

    TAG: ClassVar[str] = "subscribe"
    req: int
    port: int
    mode: str
    http_filter: str
    local_host: str
    local_port: int
    #: the sender can take stolen sockets themselves (IncomingFd) rather than relayed bytes
    want_fd: bool
    #: on the layer link, the listening socket's inode: the subscription lives as long as
    #: that socket does, in whichever process holds it (0 on the agent link)
    listener: int


@dataclass(frozen=True, slots=True)
class Subscribed(Message):
    TAG: ClassVar[str] = "subscribed"
    req: int
    port: int


@dataclass(frozen=True, slots=True)
class Unsubscribe(Message):
    """Intproxy -> agent: the app's last listener of `port` is gone."""

    TAG: ClassVar[str] = "unsubscribe"
    port: int


@dataclass(frozen=True, slots=True)
class RegisterListener(Message):
    """Layer -> intproxy, at bind(): the socket with inode `listener` is the app's listener
    for `requested_port` (the target's `remote_port`), wherever it is used from now on.

    A listening socket often lives in several processes (reloaders and prefork servers
    bind in one and accept in another): any of them can recover this by the inode."""

    TAG: ClassVar[str] = "register_listener"
    req: int
    listener: int
    requested_port: int
    remote_port: int


@dataclass(frozen=True, slots=True)
class ListenerInfo(Message):
    """Layer -> intproxy: is the socket with this inode one of the app's listeners?"""

    TAG: ClassVar[str] = "listener_info"
    req: int
    listener: int


@dataclass(frozen=True, slots=True)
class ListenerInfoReply(Message):
    TAG: ClassVar[str] = "listener_info_reply"
    req: int
    known: bool
    requested_port: int
    remote_port: int
    subscribed: bool


@dataclass(frozen=True, slots=True)
class ListenerClosed(Message):
    """Layer -> intproxy: this process closed its descriptor of the listener; the
    subscription ends when no process holds the socket any more."""

    TAG: ClassVar[str] = "listener_closed"
    listener: int


@dataclass(frozen=True, slots=True)
class IncomingConnection(Message):
    """A connection arrived at a subscribed port; its bytes follow as Data on `conn`."""

    TAG: ClassVar[str] = "incoming"
    conn: int
    port: int
    mode: str
    remote_host: str
    remote_port: int
    local_host: str
    local_port: int


@dataclass(frozen=True, slots=True)
class IncomingFd(Message):
    """A stolen connection; the socket itself travels with this frame (same host only)."""

    TAG: ClassVar[str] = "incoming_fd"
    port: int
    remote_host: str
    remote_port: int
    local_host: str
    local_port: int


@dataclass(frozen=True, slots=True)
class ConnInfo(Message):
    """Layer -> intproxy: who is really behind the connection the app accepted?

    `listen_port` is the app's real listening port, `peer_port` the accepted socket's
    peer port (the intproxy's end)."""

    TAG: ClassVar[str] = "conn_info"
    req: int
    listen_port: int
    peer_port: int


@dataclass(frozen=True, slots=True)
class ConnInfoReply(Message):
    """The origin of an accepted connection; over a unix link the stolen socket itself
    may travel with it, for the layer to put in place of the accepted one."""

    TAG: ClassVar[str] = "conn_info_reply"
    req: int
    remote_host: str
    remote_port: int
    local_host: str
    local_port: int
    has_fd: bool
