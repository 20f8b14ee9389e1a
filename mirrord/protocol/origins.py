"""The origin table: who is behind each connection the intproxy opens into the app.

The app's accept() must return the remote client's address, not the intproxy's. Asking
the intproxy over the unix link costs a round trip on every accepted connection, with the
app's accept loop waiting on it; instead the intproxy writes each connection's origin into
a file both processes map, before it connects, and the layer reads it after accept():
connect() and accept() order the write before the read.

A slot per local port of the intproxy's end (one range for IPv4, one for IPv6), holding
the app's port it connected to (so a stale slot is not read for another listener), the
remote and local address, and whether the intproxy holds a stolen socket for the app to
claim (then the layer asks, and the socket travels with the answer). Sans-I/O: these
functions work on any buffer; the processes own the file and its mapping.
"""

from __future__ import annotations

import socket
import struct
from mmap import mmap
from typing import NamedTuple

from mirrord.protocol.incoming import ConnInfoReply

Table = bytearray | memoryview | mmap

#: app port, flags, remote and local family, remote and local address, remote and local port
_SLOT = struct.Struct("<HBBB3x16s16sHH4x")
SLOT_SIZE = _SLOT.size
PORTS = 65536
TABLE_SIZE = 2 * PORTS * SLOT_SIZE
#: A slot was written (an all-zero slot never was).
_WRITTEN = 1
#: The intproxy holds a stolen socket for this connection: ask for it.
_ASK = 2
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


class Origin(NamedTuple):
    remote_host: str
    remote_port: int
    local_host: str
    local_port: int
    ask: bool

    @classmethod
    def of(cls, reply: ConnInfoReply, ask: bool = False) -> Origin:
        return cls(reply.remote_host, reply.remote_port, reply.local_host, reply.local_port, ask)


def table_path(proxy_socket: str) -> str:
    """The table of the intproxy serving layers on `proxy_socket` (in the session's folder)."""
    return proxy_socket + ".origins"


def _offset(ipv6: bool, port: int) -> int:
    return ((PORTS if ipv6 else 0) + port) * SLOT_SIZE


def _packed(host: str) -> tuple[int, bytes]:
    if ":" in host:
        return 6, socket.inet_pton(socket.AF_INET6, host)
    return 4, socket.inet_pton(socket.AF_INET, host).ljust(16, b"\0")


def write_origin(
    table: Table,
    ipv6: bool,
    port: int,
    app_port: int,
    origin: Origin,
) -> None:
    """Record `origin` for the connection from the intproxy's local `port` (IPv6 or not)
    to the app's `app_port`."""
    remote_family, remote = _packed(origin.remote_host)
    local_family, local = _packed(origin.local_host)
    flags = _WRITTEN | (_ASK if origin.ask else 0)
    _SLOT.pack_into(
        table,
        _offset(ipv6, port),
        app_port,
        flags,
        remote_family,
        local_family,
        remote,
        local,
        origin.remote_port,
        origin.local_port,
    )


def read_origin(table: Table, ipv6: bool, port: int, app_port: int) -> Origin | None:
    """The origin of a connection the app accepted from `port` on its listener of
    `app_port`; None when the intproxy opened no such connection (a local client)."""
    slot_app_port, flags, remote_family, local_family, remote, local, rport, lport = (
        _SLOT.unpack_from(table, _offset(ipv6, port))
    )
    if not flags & _WRITTEN or slot_app_port != app_port:
        return None
    try:
        return Origin(
            _unpacked(remote_family, remote),
            rport,
            _unpacked(local_family, local),
            lport,
            bool(flags & _ASK),
        )
    except (KeyError, ValueError):
        return None  # not a slot the intproxy wrote whole


def _unpacked(family: int, packed: bytes) -> str:
    kind = _FAMILIES[family]
    return socket.inet_ntop(kind, packed if kind == socket.AF_INET6 else packed[:4])
