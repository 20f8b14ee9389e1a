"""Facts about processes from /proc, shared by the agent and the intproxy."""

from __future__ import annotations

import socket
import struct
from pathlib import Path


def process_start(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot); None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields start after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_DUMP_REQUEST = 0x1 | 0x300
_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_TCP_LISTEN_STATE = 10
_HEADER = struct.Struct("=IHHII")
#: inet_diag_req_v2: family, protocol, extensions, pad, states, then a zeroed socket id
_REQUEST = struct.Struct("=BBBxI48x")
#: where the inode sits in an inet_diag_msg (after family..retrans, the id, 4 counters)
_INODE = struct.Struct("=I")
_INODE_OFFSET = 4 + 48 + 16


def listening_inodes() -> set[int]:
    """Inodes of the TCP sockets listening in our network namespace (IPv4 and IPv6).

    A listening socket stays listed as long as any process holds it, whichever process
    called listen(). Asked with netlink sock_diag, filtered by state in the kernel:
    reading /proc/net/tcp lists every connection and costs tens of milliseconds."""
    inodes: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 1 << _TCP_LISTEN_STATE)
            header = _HEADER.pack(
                _HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_DUMP_REQUEST, seq, 0
            )
            nl.send(header + body)
            inodes.update(_read_dump(nl))
    return inodes


def _read_dump(nl: socket.socket) -> list[int]:
    found: list[int] = []
    while True:
        data = nl.recv(65536)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
            if kind == _NLMSG_DONE:
                return found
            if kind == _NLMSG_ERROR:
                raise OSError("sock_diag refused the listing")
            if length < _HEADER.size:
                return found
            start = offset + _HEADER.size + _INODE_OFFSET
            (inode,) = _INODE.unpack_from(data, start)
            found.append(inode)
            offset += (length + 3) & ~3
