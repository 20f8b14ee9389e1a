"""What every patch family of one session shares: settings, the intproxy client, state.

Runs inside the user's app: standard library and msgpack only.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from mirrord.layer.client import ProxyClient
from mirrord.layer.outgoing_filter import OutgoingFilter

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
        )


@dataclass(slots=True)
class Redirect:
    """A socket the layer connected to a relay instead of its remote address."""

    relay: tuple[str, int]
    remote: tuple[Any, ...]  # as getpeername() would report it for this socket's family


class Context:
    def __init__(self, settings: LayerSettings, client: ProxyClient) -> None:
        self.settings = settings
        self.client = client
        # per-socket state keyed by fd: ssl.wrap_socket/detach make new objects for one fd
        self.redirects: dict[int, Redirect] = {}
        # unconnected UDP: fd -> {remote (host, port): relay (host, port)} and back
        self.udp_relays: dict[int, dict[tuple[str, int], tuple[str, int]]] = {}
        self.udp_remotes: dict[int, dict[tuple[str, int], tuple[Any, ...]]] = {}
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
