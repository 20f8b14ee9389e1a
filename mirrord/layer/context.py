"""What every patch family of one session shares: settings, the intproxy client, state.

Runs inside the user's app: standard library and msgpack only.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
import sys
import sysconfig
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from mirrord.client.proxy import ProxyClient
from mirrord.protocol import ListenerClosed
from mirrord.settings.contract import FsSettings, IncomingSettings, LayerSettings
from mirrord.settings.debugger import DebuggerPorts
from mirrord.settings.outgoing_filter import OutgoingFilter

#: How many resolved addresses remember the names they came from (for name filters).
NAME_MEMORY = 4096


class Rules:
    """The layer's settings compiled for the calls it intercepts (built once per session).

    The contract stays JSON-shaped; this is what the patch families look up per call.
    """

    __slots__ = (
        "contract",
        "tcp",
        "udp",
        "ignore_localhost",
        "outgoing_filter",
        "remote_dns",
        "dns_filter",
        "incoming",
        "fs",
    )

    def __init__(self, contract: LayerSettings) -> None:
        outgoing, dns = contract.outgoing, contract.dns
        self.contract = contract
        self.tcp = outgoing.tcp
        self.udp = outgoing.udp
        self.ignore_localhost = outgoing.ignore_localhost
        self.outgoing_filter = OutgoingFilter.from_spec(outgoing.filter)
        self.remote_dns = dns.enabled
        self.dns_filter = None if dns.filter is None else OutgoingFilter.from_spec(dns.filter)
        self.incoming = IncomingRules(contract.incoming)
        self.fs: FsSettings = contract.fs


class IncomingRules:
    """``incoming`` as lookups: port maps as dicts, the HTTP filter as the JSON the wire carries."""

    __slots__ = (
        "mode",
        "http_filter",
        "port_mapping",
        "listen_ports",
        "ignore_ports",
        "ports",
        "ignore_localhost",
    )

    def __init__(self, incoming: IncomingSettings) -> None:
        self.mode = incoming.mode
        self.http_filter = json.dumps(incoming.http_filter) if incoming.http_filter else ""
        self.port_mapping = {a: b for a, b in incoming.port_mapping}  # local -> target
        self.listen_ports = {a: b for a, b in incoming.listen_ports}  # target -> local to use
        self.ignore_ports = frozenset(incoming.ignore_ports)
        self.ports = None if incoming.ports is None else frozenset(incoming.ports)
        self.ignore_localhost = incoming.ignore_localhost


@dataclass(slots=True)
class Redirect:
    """A socket the layer connected to a relay instead of its remote address."""

    relay: tuple[str, int]
    remote: tuple[Any, ...]  # as getpeername() would report it for this socket's family
    local: tuple[Any, ...] | None = None  # as getsockname() should report it (incoming)


@dataclass(slots=True)
class Listening:
    """A socket the app asked to listen on port `requested_port`; the target's port is
    `remote_port`. `inode` is the socket's own: it tells a reused fd from this socket, and
    the intproxy knows the listener by it in every process that holds it."""

    inode: int
    requested_port: int
    remote_port: int
    subscribed: bool = False


#: Modules of debuggers: their sockets to 127.0.0.1 are the developer's, not the target's.
_DEBUGGER_MODULES = ("debugpy", "_pydevd", "pydevd", "_pydev")
_STDLIB = tuple({sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib"), "<frozen "})
# site-packages usually lies inside the standard library's folder
_SITE = tuple({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})


class Context:
    def __init__(
        self,
        settings: LayerSettings,
        client: ProxyClient,
        debugger: DebuggerPorts | None = None,
    ) -> None:
        self.settings = Rules(settings)
        self.client = client
        self.debugger = debugger or DebuggerPorts()
        # per-socket state keyed by fd: ssl.wrap_socket/detach make new objects for one fd
        self.redirects: dict[int, Redirect] = {}
        # unconnected UDP: fd -> {remote (host, port): relay (host, port)} and back
        self.udp_relays: dict[int, dict[tuple[str, int], tuple[str, int]]] = {}
        self.udp_remotes: dict[int, dict[tuple[str, int], tuple[Any, ...]]] = {}
        self.listening: dict[int, Listening] = {}
        #: listening sockets (fd -> inode) the intproxy said are not the app's listeners
        self.not_listeners: dict[int, int] = {}
        self._names: OrderedDict[str, set[str]] = OrderedDict()
        self._names_lock = threading.Lock()

    def remember_names(self, name: str, addresses: list[str]) -> None:
        with self._names_lock:
            for address in addresses:
                self._names.setdefault(address, set()).add(name.lower().rstrip("."))
                self._names.move_to_end(address)
            while len(self._names) > NAME_MEMORY:
                self._names.popitem(last=False)

    def names_of(self, address: str) -> set[str]:
        return self._names.get(address, set())

    def forget_fd(self, fd: int) -> None:
        self.redirects.pop(fd, None)
        self.udp_relays.pop(fd, None)
        self.udp_remotes.pop(fd, None)
        self.not_listeners.pop(fd, None)
        listening = self.listening.pop(fd, None)
        if listening is not None:
            try:
                # other processes may hold the socket still: the intproxy decides
                self.client.notify(ListenerClosed(listener=listening.inode))
            except OSError:
                pass  # the intproxy is gone: so is the subscription


def called_by_debugger(depth: int = 16) -> bool:
    """Is a debugger's code (debugpy, pydevd) making the socket call?

    A debugger talks to its adapter on 127.0.0.1 ports it picks at run time, so its
    connections are told by who makes them: the nearest caller that is neither the
    standard library nor mirrord. (The app's own code runs under the debugger's frames
    too, further up: only the nearest caller counts.) Asked only for loopback addresses."""
    frame = sys._getframe(1)
    for _ in range(depth):
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return False
        name = frame.f_globals.get("__name__", "")
        if not isinstance(name, str) or name.startswith(("mirrord.", "wrapt")):
            continue
        filename = frame.f_code.co_filename
        if filename.startswith(_STDLIB) and not filename.startswith(_SITE):
            continue
        return name.startswith(_DEBUGGER_MODULES)
    return False


@functools.lru_cache(maxsize=1024)
def ip_kind(host: str) -> str | None:
    """ "loopback", "ip" or None (not an IP literal)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return "loopback" if ip.is_loopback or ip.is_unspecified else "ip"


def peer_shape(family: int, host: str, port: int) -> tuple[Any, ...]:
    """An address tuple shaped as the socket's family reports it."""
    if family == socket.AF_INET6:
        if ":" not in host:
            host = f"::ffff:{host}"
        return (host, port, 0, 0)
    return (host, port)
