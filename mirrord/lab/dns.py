"""A tiny DNS stub resolver: asks one server for A records (the lab's readiness probe)."""

from __future__ import annotations

import os
import socket
import struct


def dns_query_a(
    name: str, server: str = "127.0.0.1", port: int = 53, timeout: float = 0.5
) -> list[str]:
    """Ask ``server`` for the A records of ``name`` (tiny stub resolver, no retries)."""
    qid = int.from_bytes(os.urandom(2), "big")
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    query = struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!2H", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, (server, port))
        while True:
            reply = sock.recv(4096)
            if len(reply) >= 12 and struct.unpack("!H", reply[:2])[0] == qid:
                break
    _, flags, qd, an, _, _ = struct.unpack("!6H", reply[:12])
    if flags & 0xF:
        raise OSError(f"DNS rcode {flags & 0xF} for {name}")

    def skip_name(pos: int) -> int:
        while True:
            length = reply[pos]
            if length & 0xC0 == 0xC0:  # compression pointer ends the name
                return pos + 2
            if length == 0:
                return pos + 1
            pos += 1 + length

    pos = 12
    for _ in range(qd):
        pos = skip_name(pos) + 4
    addrs = []
    for _ in range(an):
        pos = skip_name(pos)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", reply[pos : pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(reply[pos : pos + 4]))
        pos += rdlen
    return addrs
