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
#: a connection with something of ours still to deliver: ESTABLISHED, SYN_SENT, SYN_RECV,
#: FIN_WAIT1, CLOSE_WAIT, LAST_ACK, CLOSING. Not FIN_WAIT2 or TIME_WAIT: all we sent,
#: our FIN too, has been acknowledged; only the peer's goodbye is left.
_TCP_OPEN_STATES = sum(1 << state for state in (1, 2, 3, 4, 8, 9, 11))
_HEADER = struct.Struct("=IHHII")
#: inet_diag_req_v2: family, protocol, extensions, pad, states, then a zeroed socket id
_REQUEST = struct.Struct("=BBBxI48x")
#: an inet_diag_msg: family..retrans, then the id, whose first field is the local port
_LOCAL_PORT = struct.Struct("!H")
_LOCAL_PORT_OFFSET = 4
#: where the inode sits in an inet_diag_msg (after family..retrans, the id, 4 counters)
_INODE = struct.Struct("=I")
_INODE_OFFSET = 4 + 48 + 16


def listening_inodes() -> set[int]:
    """Inodes of the TCP sockets listening in our network namespace (IPv4 and IPv6).

    A listening socket stays listed as long as any process holds it, whichever process
    called listen(). Asked with netlink sock_diag, filtered by state in the kernel:
    reading /proc/net/tcp lists every connection and costs tens of milliseconds."""
    return {inode for inode, _port in _tcp_sockets(1 << _TCP_LISTEN_STATE)}


def open_connections_on(ports: set[int]) -> int:
    """How many TCP connections of our network namespace that have one of `ports` as
    their local port (IPv4 and IPv6), whichever process holds them, are open (in one of
    `_TCP_OPEN_STATES`)."""
    return sum(port in ports for _inode, port in _tcp_sockets(_TCP_OPEN_STATES))


def _tcp_sockets(states: int) -> list[tuple[int, int]]:
    """(inode, local port) of our namespace's TCP sockets in `states` (a bit per state)."""
    found: list[tuple[int, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, states)
            header = _HEADER.pack(
                _HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_DUMP_REQUEST, seq, 0
            )
            nl.send(header + body)
            found.extend(_read_dump(nl))
    return found


def _read_dump(nl: socket.socket) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
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
            start = offset + _HEADER.size
            (inode,) = _INODE.unpack_from(data, start + _INODE_OFFSET)
            (port,) = _LOCAL_PORT.unpack_from(data, start + _LOCAL_PORT_OFFSET)
            found.append((inode, port))
            offset += (length + 3) & ~3
