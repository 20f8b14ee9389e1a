"""Name resolution as the target resolves it: getaddrinfo and gethostbyname*.

Runs inside the user's app: standard library, wrapt and msgpack only.
"""

from __future__ import annotations

import socket
from typing import Any

from mirrord.client.proxy import ProxyUnavailable
from mirrord.layer.context import Context, ip_kind
from mirrord.layer.patching import PatchFamily
from mirrord.protocol import RequestFailed, Resolve, Resolved

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _args(
    host: Any,
    port: Any = None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> tuple[Any, Any, int, int, int, int]:
    return host, port, family, type, proto, flags


class DnsPatches(PatchFamily):
    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx

    def patches(self) -> list[tuple[str, str, Any]]:
        return [
            ("socket", "getaddrinfo", self._getaddrinfo),
            ("socket", "gethostbyname", self._gethostbyname),
            ("socket", "gethostbyname_ex", self._gethostbyname_ex),
        ]

    def is_remote(self, host: Any, port: Any = None) -> bool:
        if not self.ctx.settings.remote_dns or not isinstance(host, str | bytes):
            return False
        name = host.decode("idna") if isinstance(host, bytes) else host
        if not name or ip_kind(name) is not None or name.lower() in _LOCAL_NAMES:
            return False
        dns_filter = self.ctx.settings.dns_filter
        service_port = port if isinstance(port, int) else 0
        if dns_filter is not None and not dns_filter.query_is_remote(name, service_port):
            return False
        return not self.ctx.settings.outgoing_filter.name_is_local(name)

    def resolve(
        self, host: str, port: Any, family: int, type: int, proto: int, flags: int
    ) -> list[tuple[Any, ...]]:
        """getaddrinfo through the agent, with the stdlib's result shape and errors."""
        if isinstance(port, bytes):
            port = port.decode()
        if port is not None and not isinstance(port, int | str):
            raise TypeError("getaddrinfo() argument 2 must be integer or string")
        try:
            reply = self.ctx.client.request(
                Resolve(
                    req=0,
                    host=host,
                    port=port,
                    family=int(family),
                    type=int(type),
                    proto=int(proto),
                    flags=int(flags),
                )
            )
        except ProxyUnavailable as exc:
            raise socket.gaierror(
                socket.EAI_AGAIN, f"Temporary failure in name resolution ({exc})"
            ) from None
        if isinstance(reply, RequestFailed):
            if reply.kind == "gai":
                raise socket.gaierror(reply.errno, reply.message)
            raise socket.gaierror(
                socket.EAI_AGAIN, f"Temporary failure in name resolution ({reply.message})"
            )
        if not isinstance(reply, Resolved):
            raise socket.gaierror(socket.EAI_FAIL, "mirrord: unexpected answer to a name lookup")
        results: list[tuple[Any, ...]] = []
        for fam, typ, pro, canon, address, rport in reply.addrs:
            sockaddr: tuple[Any, ...] = (
                (address, rport, 0, 0) if fam == socket.AF_INET6 else (address, rport)
            )
            results.append(
                (
                    _enum(socket.AddressFamily, fam),
                    _enum(socket.SocketKind, typ),
                    pro,
                    canon,
                    sockaddr,
                )
            )
        self.ctx.remember_names(host, [r[4][0] for r in results])
        return results

    def _getaddrinfo(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        host, port, family, type, proto, flags = _args(*args, **kwargs)
        if not self.is_remote(host, port):
            results = wrapped(*args, **kwargs)
            if isinstance(host, str) and host and ip_kind(host) is None:
                self.ctx.remember_names(host, [r[4][0] for r in results])
            return results
        name = host.decode("idna") if isinstance(host, bytes) else host
        return self.resolve(name, port, family, type, proto, flags)

    def _gethostbyname(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        (host,) = args or (kwargs["hostname"],)
        if not self.is_remote(host):
            return wrapped(*args, **kwargs)
        return self.resolve(host, None, socket.AF_INET, socket.SOCK_STREAM, 0, 0)[0][4][0]

    def _gethostbyname_ex(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        (host,) = args or (kwargs["hostname"],)
        if not self.is_remote(host):
            return wrapped(*args, **kwargs)
        results = self.resolve(
            host, None, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_CANONNAME
        )
        canon = next((r[3] for r in results if r[3]), host)
        addresses = list(dict.fromkeys(r[4][0] for r in results))
        return canon, [], addresses


def _enum(kind: Any, value: int) -> Any:
    try:
        return kind(value)
    except ValueError:
        return value
