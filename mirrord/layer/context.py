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
from dataclasses import dataclass, field
from typing import Any

from mirrord.layer.client import ProxyClient
from mirrord.protocol import ListenerClosed
from mirrord.settings.debugger import DebuggerPorts
from mirrord.settings.outgoing_filter import OutgoingFilter

#: How many resolved addresses remember the names they came from (for name filters).
NAME_MEMORY = 4096


@dataclass(frozen=True)
class LayerSettings:
    tcp: bool = True
    udp: bool = True
    ignore_localhost: bool = False
    outgoing_filter: OutgoingFilter = field(
        default_factory=lambda: OutgoingFilter.from_settings(None)
    )
    remote_dns: bool = True
    dns_filter: OutgoingFilter | None = None
    incoming: IncomingSettings = field(default_factory=lambda: IncomingSettings.from_dict({}))
    #: feature.fs as MirrordConfig.layer_settings() gives it (mode, regex lists, mapping...);
    #: FilePatches reads it. Empty means mirrord's default: mode "read".
    fs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSettings:
        outgoing = data.get("outgoing") or {}
        dns = data.get("dns") or {}
        dns_filter = dns.get("filter")
        return cls(
            tcp=bool(outgoing.get("tcp", True)),
            udp=bool(outgoing.get("udp", True)),
            ignore_localhost=bool(outgoing.get("ignore_localhost", False)),
            outgoing_filter=OutgoingFilter.from_settings(outgoing.get("filter")),
            remote_dns=bool(dns.get("enabled", True)),
            dns_filter=OutgoingFilter.from_settings(dns_filter) if dns_filter else None,
            incoming=IncomingSettings.from_dict(data.get("incoming") or {}),
            fs=dict(data.get("fs") or {}),
        )


@dataclass(frozen=True)
class IncomingSettings:
    mode: str = "mirror"  # "mirror" | "steal" | "off"
    http_filter: str = ""  # mirrord's http_filter object, as JSON
    port_mapping: dict[int, int] = field(default_factory=dict)  # local -> remote
    listen_ports: dict[int, int] = field(default_factory=dict)  # remote -> local to use
    ignore_ports: frozenset[int] = frozenset()
    ports: frozenset[int] | None = None
    ignore_localhost: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IncomingSettings:
        ports = data.get("ports")
        http_filter = data.get("http_filter")
        return cls(
            mode=str(data.get("mode") or "mirror"),
            http_filter=json.dumps(http_filter) if http_filter else "",
            port_mapping={int(a): int(b) for a, b in data.get("port_mapping") or []},
            listen_ports={int(a): int(b) for a, b in data.get("listen_ports") or []},
            ignore_ports=frozenset(int(p) for p in data.get("ignore_ports") or []),
            ports=None if ports is None else frozenset(int(p) for p in ports),
            ignore_localhost=bool(data.get("ignore_localhost", False)),
        )


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
        self.settings = settings
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
