"""mirrord's outgoing traffic filter, as used inside the user's process.

This module runs inside the application, so it imports only the standard library.

Entry grammar (the one mirrord's `feature.network.outgoing.filter` accepts)::

    [tcp://|udp://|any://][name | ipv4 | [ipv6]][/prefix-length][:port]

Examples: ``":53"``, ``"udp://:53"``, ``"1.1.1.0/24:1337"``, ``"google.com:7777"``,
``"[2001::1]:80"``, ``"tcp://"``. Port 0 (or no port) means any port, and the unspecified
addresses ``0.0.0.0`` / ``[::]`` mean any address, as in mirrord.

DNS filter entries (``feature.network.dns.filter``) use the same grammar without the protocol.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, cast

from mirrord.settings.contract import FilterSettings

__all__ = ["FilterEntry", "FilterError", "OutgoingFilter", "parse_entry"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_PROTOCOLS = ("tcp", "udp")

# ASCII-only classes on purpose: mirrord's parser only takes ASCII alphanumerics.
_ADDRESS_RE = re.compile(
    r"(?:(?P<host>[A-Za-z0-9._-]+)|\[(?P<v6>[A-Za-z0-9:]+)\])?"
    r"(?:/(?P<prefix>[0-9]+))?"
    r"(?::(?P<port>[0-9]+))?"
)

_GRAMMAR = "[tcp://|udp://][name|ipv4|[ipv6]][/prefix][:port]"


class FilterError(ValueError):
    """A filter entry that does not follow mirrord's grammar; the message names the entry."""


@dataclass(frozen=True, slots=True)
class FilterEntry:
    """One parsed filter entry.

    ``kind`` is ``"port"`` (port only, or an unspecified address), ``"ip"``, ``"subnet"`` or
    ``"name"``; ``port`` 0 means any port; ``protocol`` ``"any"`` matches TCP and UDP.
    """

    text: str
    protocol: Literal["any", "tcp", "udp"]
    kind: Literal["port", "ip", "subnet", "name"]
    port: int
    ip: IPAddress | None = None
    network: IPNetwork | None = None
    name: str | None = None


def _normalise_name(name: str) -> str:
    # DNS names are case-insensitive and "example.com." is the same name as "example.com".
    return name.rstrip(".").lower()


def _normalise_ip(ip: IPAddress) -> IPAddress:
    # An AF_INET6 socket reaches IPv4 hosts through ::ffff:a.b.c.d; match it as the IPv4 address.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _quote(text: object) -> str:
    return json.dumps(text, ensure_ascii=False) if isinstance(text, str) else repr(text)


def _fail(entry: str, reason: str) -> FilterError:
    return FilterError(f"invalid filter entry {_quote(entry)}: {reason}")


def parse_entry(entry: str, *, allow_protocol: bool = True) -> FilterEntry:
    """Parse one filter entry; raise :class:`FilterError` naming it when it is malformed.

    ``allow_protocol=False`` is for DNS filter entries, which mirrord parses without one.
    """
    if not isinstance(entry, str):
        raise FilterError(f"invalid filter entry {_quote(entry)}: expected a string")
    protocol: Literal["any", "tcp", "udp"] = "any"
    rest = entry
    if "://" in entry:
        if not allow_protocol:
            raise _fail(entry, "a protocol is not allowed here (use [name|ip|subnet][:port])")
        raw, rest = entry.split("://", 1)
        lowered = raw.lower()
        if lowered == "tcp":
            protocol = "tcp"
        elif lowered == "udp":
            protocol = "udp"
        elif lowered != "any":
            raise _fail(entry, f"unknown protocol {_quote(raw)} (expected tcp or udp)")
    elif not entry:
        raise _fail(entry, "empty entry")

    if not rest:
        # "tcp://" alone: every connection of that protocol.
        return FilterEntry(entry, protocol, "port", 0)

    match = _ADDRESS_RE.fullmatch(rest)
    if match is None:
        raise _fail(entry, f"expected {_GRAMMAR}")
    host, v6, prefix, port_text = match.group("host", "v6", "prefix", "port")

    port = 0
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise _fail(entry, f"port {port_text} is out of range (0-65535)")

    ip: IPAddress | None = None
    if v6 is not None:
        try:
            ip = ipaddress.IPv6Address(v6)
        except ValueError:
            raise _fail(entry, f"[{v6}] is not an IPv6 address") from None
    elif host is not None:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None

    if prefix is not None:
        if ip is None:
            what = "missing" if host is None else f"{_quote(host)} is not an IP address"
            raise _fail(entry, f"a subnet needs an IP address ({what})")
        length = int(prefix)
        if length > ip.max_prefixlen:
            raise _fail(entry, f"prefix length /{prefix} is too long for {ip}")
        network = ipaddress.ip_network(f"{ip}/{length}", strict=False)
        return FilterEntry(entry, protocol, "subnet", port, network=network)

    if ip is not None:
        if ip.is_unspecified:
            # 0.0.0.0 / [::] mean "any address" in mirrord, whatever the family.
            return FilterEntry(entry, protocol, "port", port)
        return FilterEntry(entry, protocol, "ip", port, ip=_normalise_ip(ip))
    if host is not None:
        return FilterEntry(entry, protocol, "name", port, name=_normalise_name(host))
    # Only ":port" is left (the empty-string case was rejected above).
    return FilterEntry(entry, protocol, "port", port)


class _Compiled:
    """Entries of one protocol, indexed so a lookup costs a few set/dict probes."""

    __slots__ = ("any_port", "ips", "names", "nets", "ports")

    def __init__(self) -> None:
        self.any_port = False  # an entry that matches every address and port
        self.ports: set[int] = set()
        self.ips: dict[IPAddress, set[int]] = {}
        self.names: dict[str, set[int]] = {}
        self.nets: list[tuple[IPNetwork, int]] = []

    def add(self, entry: FilterEntry) -> None:
        if entry.kind == "port":
            if entry.port == 0:
                self.any_port = True
            else:
                self.ports.add(entry.port)
        elif entry.kind == "ip" and entry.ip is not None:
            self.ips.setdefault(entry.ip, set()).add(entry.port)
        elif entry.kind == "name" and entry.name is not None:
            self.names.setdefault(entry.name, set()).add(entry.port)
        elif entry.kind == "subnet" and entry.network is not None:
            self.nets.append((entry.network, entry.port))

    def matches(self, ip: IPAddress | None, port: int, names: Iterable[str]) -> bool:
        if self.any_port or port in self.ports:
            return True
        if ip is not None:
            ports = self.ips.get(ip)
            if ports is not None and (0 in ports or port in ports):
                return True
            for network, net_port in self.nets:
                if (net_port == 0 or net_port == port) and ip in network:
                    return True
        if self.names:
            for name in names:
                ports = self.names.get(_normalise_name(name))
                if ports is not None and (0 in ports or port in ports):
                    return True
        return False


class OutgoingFilter:
    """Decides whether a connection goes through the remote pod or stays local.

    ``mode`` ``"remote"``: matching connections go remote, the rest local.
    ``mode`` ``"local"``: matching connections stay local, the rest go remote.
    ``mode`` ``None`` (no filter): everything goes remote.
    """

    __slots__ = ("_by_proto", "_local_names", "entries", "mode")

    def __init__(
        self,
        mode: Literal["local", "remote"] | None = None,
        entries: Iterable[str] = (),
        *,
        allow_protocol: bool = True,
    ) -> None:
        if mode not in (None, "local", "remote"):
            raise FilterError(f'invalid filter mode {_quote(mode)}: expected "local" or "remote"')
        # No entries is allowed (a DNS filter may be empty): "local" with nothing to match sends
        # everything remote, "remote" keeps everything local. The config refuses an empty
        # *outgoing* filter before it gets here, as mirrord does.
        parsed = [parse_entry(e, allow_protocol=allow_protocol) for e in entries]
        self.mode = mode
        self.entries: tuple[FilterEntry, ...] = tuple(parsed)
        self._by_proto = {proto: _Compiled() for proto in _PROTOCOLS}
        for entry in parsed:
            for proto in _PROTOCOLS if entry.protocol == "any" else (entry.protocol,):
                self._by_proto[proto].add(entry)
        self._local_names: frozenset[str] = frozenset(
            e.name for e in parsed if mode == "local" and e.name is not None
        )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> OutgoingFilter:
        """Build from a ``filter`` object of the layer settings; ``None`` means no filter."""
        return cls.from_spec(None if settings is None else FilterSettings.from_dict(settings))

    @classmethod
    def from_spec(cls, spec: FilterSettings | None) -> OutgoingFilter:
        """Build from the contract's filter; ``None`` means no filter."""
        if spec is None:
            return cls()
        return cls(cast(Literal["local", "remote"], spec.mode), spec.entries)

    def matches(self, proto: str, address: str, port: int, hostnames: Iterable[str] = ()) -> bool:
        """True if any entry matches (whatever the mode)."""
        compiled = self._by_proto.get(proto.lower())
        if compiled is None:
            raise ValueError(f"unknown protocol {proto!r} (expected 'tcp' or 'udp')")
        return compiled.matches(_parse_ip(address), port, hostnames)

    def is_remote(self, proto: str, address: str, port: int, hostnames: Iterable[str] = ()) -> bool:
        """Whether a ``proto`` connection to ``address:port`` should go through the pod.

        ``hostnames`` are the names the app resolved that led to ``address`` (may be empty).
        """
        if self.mode is None:
            return True
        matched = self.matches(proto, address, port, hostnames)
        return matched if self.mode == "remote" else not matched

    def query_is_remote(self, name: str, port: int = 0) -> bool:
        """For a DNS filter: whether looking up ``name`` (service ``port``, 0 if none) goes
        through the pod. ``name`` may be an IP literal (then IP/subnet entries apply)."""
        if self.mode is None:
            return True
        matched = self._by_proto["tcp"].matches(_parse_ip(name), port, (name,))
        return matched if self.mode == "remote" else not matched

    def name_is_local(self, name: str) -> bool:
        """True if a name entry of a ``local`` filter names ``name``.

        mirrord resolves such names locally too, so the connection and the lookup agree.
        """
        return _normalise_name(name) in self._local_names

    def index(self, proto: str) -> _Compiled:
        """The compiled entries of one protocol, as `matches` looks them up (the native
        relay's decision table is written from them)."""
        return self._by_proto[proto]

    @property
    def local_names(self) -> frozenset[str]:
        """The names `name_is_local` knows."""
        return self._local_names

    def __repr__(self) -> str:
        return f"OutgoingFilter(mode={self.mode!r}, entries={[e.text for e in self.entries]!r})"


@lru_cache(maxsize=4096)  # apps connect to the same few addresses over and over
def _parse_ip(address: str) -> IPAddress | None:
    # Scope ids ("fe80::1%eth0") are not part of any filter entry; compare the bare address.
    try:
        return _normalise_ip(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return None
