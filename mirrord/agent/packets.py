"""IPv4/IPv6 + TCP header parsing for the mirror hot path (``struct`` + ``memoryview``).

The sniffer's ``AF_PACKET``/``SOCK_DGRAM`` socket hands over packets that start at the
network header. Dissecting them with scapy costs tens of microseconds each; this module
reads just the fields reassembly needs and returns one small tuple per segment.

Garbage, truncated or non-TCP input gives ``None``: a packet capture sees whatever is on
the wire, so nothing here raises.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

__all__ = [
    "ACK",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "TcpSegment",
    "parse_ip_tcp",
]

# TCP flag bits (the low byte of the flags field).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

_PROTO_TCP = 6
_MAX_IP_LEN = 0xFFFF  # the largest length an IP header's length field can give
# IPv6 extension headers we skip to reach TCP (RFC 8200 §4): hop-by-hop, routing,
# destination options, fragment, authentication.
_HOPOPTS, _ROUTING, _FRAGMENT, _AH, _DSTOPTS = 0, 43, 44, 51, 60

_unpack_v4 = struct.Struct("!BxHxxHxB").unpack_from  # ver/ihl, total length, frag, proto
_unpack_tcp = struct.Struct("!HHIIBB").unpack_from  # ports, seq, ack, offset, flags
_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6


class TcpSegment(NamedTuple):
    """One TCP segment as seen on the wire (addresses are printable strings)."""

    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    #: A view into the buffer that was parsed: copy it (``bytes(...)``) before that
    #: buffer is reused. ``TcpStream.feed`` returns copies.
    payload: memoryview


def parse_ip_tcp(packet: bytes | bytearray | memoryview) -> TcpSegment | None:
    """Parse an IPv4 or IPv6 packet carrying TCP; ``None`` for anything else.

    IP fragments give ``None`` (the TCP header or payload would be incomplete; TCP stacks
    avoid fragmentation with path-MTU discovery, so this costs nothing in practice).
    Trailing bytes beyond the IP length (Ethernet padding) are ignored.

    A packet longer than 64 KiB has no room for its length in the IP header: a BIG TCP
    GSO/GRO super-packet (Linux) carries an IPv4 total length or IPv6 payload length of
    0, and so does an IPv6 jumbogram (RFC 2675). Such a packet is taken to be as long as
    what was captured, as tcpdump does.
    """
    try:
        view = packet if isinstance(packet, memoryview) else memoryview(packet)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        size = len(view)
        if size < 20:
            return None
        version = view[0] >> 4
        if version == 4:
            vihl, total, frag, proto = _unpack_v4(view, 0)
            ihl = (vihl & 0x0F) << 2
            # More-fragments flag or a non-zero offset: a fragment.
            if proto != _PROTO_TCP or ihl < 20 or frag & 0x3FFF:
                return None
            if total == 0 and size > _MAX_IP_LEN:
                total = size  # BIG TCP
            if total < ihl or total > size:
                return None
            src = _ntop(_AF_INET, view[12:16])
            dst = _ntop(_AF_INET, view[16:20])
            start, end = ihl, total
        elif version == 6:
            if size < 40:
                return None
            end = 40 + ((view[4] << 8) | view[5])
            if end == 40 and size - 40 > _MAX_IP_LEN:
                end = size  # BIG TCP, or a jumbogram (its hop-by-hop header is skipped)
            if end > size or end == 40:  # truncated, or no payload
                return None
            nxt = view[6]
            start = 40
            while nxt != _PROTO_TCP:
                if start + 8 > end:
                    return None
                if nxt in (_HOPOPTS, _ROUTING, _DSTOPTS):
                    hdr_len = (view[start + 1] + 1) << 3
                elif nxt == _FRAGMENT:
                    # Offset or more-fragments set: not a whole packet.
                    if ((view[start + 2] << 8) | view[start + 3]) & 0xFFF9:
                        return None
                    hdr_len = 8
                elif nxt == _AH:
                    hdr_len = (view[start + 1] + 2) << 2
                else:  # ESP, no-next-header, UDP, ICMPv6, ...
                    return None
                nxt = view[start]
                start += hdr_len
            src = _ntop(_AF_INET6, view[8:24])
            dst = _ntop(_AF_INET6, view[24:40])
        else:
            return None
        if end - start < 20:
            return None
        sport, dport, seq, ack, offset, flags = _unpack_tcp(view, start)
        data = start + ((offset >> 4) << 2)
        if data < start + 20 or data > end:
            return None
        return TcpSegment(src, dst, sport, dport, seq, ack, flags, view[data:end])
    except (ValueError, TypeError, IndexError, struct.error):
        return None
