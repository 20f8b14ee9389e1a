"""Mirror mode's sans-I/O half: header parsing, TCP reassembly and the flow table."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from mirrord.agent.packets import ACK, FIN, PSH, RST, SYN, TcpSegment, parse_ip_tcp
from mirrord.agent.reassembly import (
    Flow,
    FlowTable,
    StreamClosed,
    StreamData,
    StreamOpened,
    TcpStream,
)

MASK = 0xFFFFFFFF


# ---------------------------------------------------------------- packet building


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_header(sport: int, dport: int, seq: int, flags: int, options: bytes = b"") -> bytes:
    offset = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, offset << 4, flags, 65535, 0, 0) + (
        options
    )


def ipv4(src: str, dst: str, body: bytes, proto: int = 6, frag: int = 0) -> bytes:
    import socket

    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(body),
        1,
        frag,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + body


def ipv6(src: str, dst: str, body: bytes, nxt: int = 6, ext: bytes = b"") -> bytes:
    import socket

    payload = ext + body
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), nxt, 64)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + payload
    )


# ---------------------------------------------------------------- packets


def test_parses_ipv4_tcp() -> None:
    pkt = ipv4("198.18.0.1", "198.18.0.2", tcp_header(40000, 8080, 7, PSH | ACK) + b"GET /")
    seg = parse_ip_tcp(pkt + b"\0" * 6)  # Ethernet padding is ignored
    assert seg is not None
    assert seg[:7] == ("198.18.0.1", "198.18.0.2", 40000, 8080, 7, 0, PSH | ACK)
    assert bytes(seg.payload) == b"GET /"


def test_parses_ipv4_tcp_with_options() -> None:
    opts = b"\x02\x04\x05\xb4\x01\x01\x04\x02"  # MSS, NOP, NOP, SACK-permitted
    seg = parse_ip_tcp(ipv4("10.0.0.1", "10.0.0.2", tcp_header(1, 2, MASK, SYN, opts) + b"x"))
    assert seg is not None and seg.seq == MASK and seg.flags == SYN
    assert bytes(seg.payload) == b"x"


def test_parses_ipv6_tcp_and_skips_extension_headers() -> None:
    body = tcp_header(5555, 80, 1, ACK) + b"hello"
    seg = parse_ip_tcp(ipv6("::1", "fd00::2", body))
    assert seg is not None
    assert (seg.src, seg.dst, seg.sport, seg.dport) == ("::1", "fd00::2", 5555, 80)
    assert bytes(seg.payload) == b"hello"
    # hop-by-hop (8 bytes, next: dest-opts) + dest-opts (8 bytes, next: atomic fragment)
    # + fragment header with offset 0 and no more-fragments (next: TCP)
    ext = bytes([60, 0]) + b"\x01\x04\0\0\0\0" + bytes([44, 0]) + b"\x01\x04\0\0\0\0"
    ext += bytes([6, 0, 0, 0]) + b"\0\0\0\1"
    seg = parse_ip_tcp(ipv6("fd00::1", "fd00::2", body, nxt=0, ext=ext))
    assert seg is not None and bytes(seg.payload) == b"hello" and seg.dport == 80


def test_rejects_garbage_fragments_and_other_protocols() -> None:
    good = ipv4("10.0.0.1", "10.0.0.2", tcp_header(1, 2, 3, ACK) + b"data")
    assert parse_ip_tcp(good) is not None
    for cut in range(len(good)):  # shorter than the IP total length says
        assert parse_ip_tcp(good[:cut]) is None, cut
    assert parse_ip_tcp(ipv4("10.0.0.1", "10.0.0.2", b"\0" * 28, proto=17)) is None
    assert parse_ip_tcp(ipv4("1.1.1.1", "2.2.2.2", tcp_header(1, 2, 3, 0), frag=0x2000)) is None
    assert parse_ip_tcp(ipv4("1.1.1.1", "2.2.2.2", tcp_header(1, 2, 3, 0), frag=5)) is None
    frag = bytes([6, 0, 0, 8]) + b"\0\0\0\1"  # offset 1
    assert parse_ip_tcp(ipv6("::1", "::2", tcp_header(1, 2, 3, 0), nxt=44, ext=frag)) is None
    assert parse_ip_tcp(ipv6("::1", "::2", b"\0" * 8, nxt=17)) is None
    bad_offset = bytearray(good)
    bad_offset[32] = 0xF0  # TCP data offset 60 > segment
    assert parse_ip_tcp(bytes(bad_offset)) is None
    assert parse_ip_tcp(b"") is None


def test_big_tcp_super_packets_take_their_length_from_the_capture() -> None:
    # A GRO'd packet over 64 KiB (BIG TCP) says 0 in its IP length field.
    payload = bytes(range(256)) * 400  # 102,400 bytes
    pkt = bytearray(ipv4("198.18.0.1", "198.18.0.2", tcp_header(40000, 8080, 9, ACK) + b"\0"))
    pkt[2:4] = b"\0\0"
    pkt = pkt[:-1] + payload
    seg = parse_ip_tcp(bytes(pkt))
    assert seg is not None and seg.seq == 9 and bytes(seg.payload) == payload
    small = bytearray(ipv4("198.18.0.1", "198.18.0.2", tcp_header(1, 2, 3, ACK) + b"data"))
    small[2:4] = b"\0\0"  # length 0 on a packet that fits in 64 KiB: garbage
    assert parse_ip_tcp(bytes(small)) is None
    big6 = bytearray(ipv6("fd00::1", "fd00::2", tcp_header(40000, 8080, 9, ACK)))
    big6[4:6] = b"\0\0"
    seg = parse_ip_tcp(bytes(big6) + payload)
    assert seg is not None and bytes(seg.payload) == payload
    # An RFC 2675 jumbogram: length 0, a hop-by-hop header with the jumbo payload option.
    hbh = bytes([6, 0, 0xC2, 4]) + struct.pack("!I", 8 + 20 + len(payload))
    jumbo = bytearray(ipv6("fd00::1", "fd00::2", tcp_header(1, 80, 5, ACK), nxt=0, ext=hbh))
    jumbo[4:6] = b"\0\0"
    seg = parse_ip_tcp(bytes(jumbo) + payload)
    assert seg is not None and seg.dport == 80 and bytes(seg.payload) == payload
    small6 = bytearray(ipv6("::1", "::2", tcp_header(1, 2, 3, ACK) + b"data"))
    small6[4:6] = b"\0\0"
    assert parse_ip_tcp(bytes(small6)) is None


@given(st.binary(max_size=120))
def test_parser_never_raises(data: bytes) -> None:
    for candidate in (data, b"\x45" + data, b"\x60" + data):
        seg = parse_ip_tcp(candidate)
        assert seg is None or isinstance(seg, TcpSegment)


# ---------------------------------------------------------------- TcpStream


@st.composite
def segmented(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[int, bytes, int]]]:
    """A stream, an ISN near 2**32, and segments covering it in any order, with
    duplicates and overlaps: (offset in stream, bytes, flags)."""
    data = draw(st.binary(min_size=0, max_size=400))
    isn = draw(st.integers(min_value=2**32 - 600, max_value=2**32 - 1) | st.integers(0, MASK))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=12)))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    segments = [(a, data[a:b], 0) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    extra = draw(st.lists(st.tuples(st.integers(0, len(data)), st.integers(0, 60)), max_size=6))
    segments += [(a, data[a : a + n], 0) for a, n in extra if data[a : a + n]]
    if segments:
        # The FIN rides on the last bytes (it may be reordered like any segment).
        last = max(range(len(segments)), key=lambda i: segments[i][0] + len(segments[i][1]))
        a, chunk, _ = segments[last]
        if a + len(chunk) == len(data):
            segments[last] = (a, chunk, FIN)
    order = draw(st.permutations(range(len(segments))))
    return data, isn, [segments[i] for i in order]


@settings(max_examples=300)
@given(segmented())
def test_any_segmentation_reassembles_exactly(
    case: tuple[bytes, int, list[tuple[int, bytes, int]]],
) -> None:
    data, isn, segments = case
    stream = TcpStream()
    assert stream.feed(isn, SYN, b"") == b""
    got = b""
    for offset, chunk, flags in segments:
        got += stream.feed((isn + 1 + offset) & MASK, flags | ACK, chunk)
    assert got == data
    if data:
        assert stream.finished and not stream.reset
    assert stream.buffered == 0 and stream.dropped == 0
    # Anything after the end (a retransmitted FIN, stray data) changes nothing.
    assert stream.feed((isn + 1) & MASK, FIN | ACK, data) == b""


def test_wraparound_in_the_middle_of_a_segment() -> None:
    stream = TcpStream()
    stream.feed(MASK - 2, SYN, b"")  # first data byte at 2**32 - 2
    assert stream.feed(MASK - 1, ACK, b"abcdef") == b"abcdef"  # crosses 0
    assert stream.next_seq == 4
    assert stream.feed(6, ACK, b"ij") == b""  # out of order, after the wrap
    assert stream.feed(2, ACK, b"efgh") == b"ghij"  # overlaps delivered bytes
    assert stream.feed(MASK - 1, ACK, b"abc") == b""  # old retransmission
    assert stream.feed(8, FIN | ACK, b"") == b"" and stream.finished


def test_fin_reached_only_in_order_and_rst_ends_at_once() -> None:
    stream = TcpStream()
    stream.feed(100, SYN, b"")
    assert stream.feed(106, FIN | ACK, b"world") == b""  # FIN before the hole is filled
    assert not stream.finished and stream.buffered == 5
    assert stream.feed(101, ACK, b"hello") == b"helloworld"
    assert stream.finished and stream.closed and not stream.reset

    stream = TcpStream()
    stream.feed(100, SYN, b"")
    stream.feed(101, ACK, b"abc")
    stream.feed(110, ACK, b"later")
    assert stream.feed(104, RST, b"") == b""
    assert stream.reset and stream.closed and stream.buffered == 0
    assert stream.feed(104, ACK, b"more") == b""


def test_syn_with_data_and_midstream_pickup() -> None:
    stream = TcpStream()
    assert stream.feed(500, SYN, b"fastopen") == b"fastopen"  # TCP Fast Open
    assert stream.isn == 500
    stream = TcpStream()
    assert stream.feed(9000, ACK, b"") == b""  # a pure ACK says nothing about the start
    assert not stream.synchronized
    assert stream.feed(9000, PSH | ACK, b"mid") == b"mid"
    assert stream.isn is None and stream.feed(9003, ACK, b"dle") == b"dle"


@settings(max_examples=150)
@given(
    st.integers(1, 64),
    st.lists(st.tuples(st.integers(1, 400), st.integers(1, 50)), min_size=1, max_size=30),
)
def test_out_of_order_bound_holds(limit: int, pieces: list[tuple[int, int]]) -> None:
    stream = TcpStream(max_buffered=limit)
    stream.feed(0, SYN, b"")
    fed = 0
    for offset, size in pieces:
        stream.feed(1 + offset, ACK, b"x" * size)  # all beyond the hole at position 1
        fed += size
        assert stream.buffered <= limit
    assert stream.buffered + stream.dropped <= fed
    # Filling the hole delivers exactly the lowest buffered bytes, contiguous or not.
    out = stream.feed(1, ACK, b"h")
    assert out.startswith(b"h") and stream.buffered <= limit


def test_overflow_keeps_the_bytes_closest_to_the_hole() -> None:
    stream = TcpStream(max_buffered=4)
    stream.feed(0, SYN, b"")
    stream.feed(20, ACK, b"zzzz")
    stream.feed(3, ACK, b"cdef")  # nearer the hole: evicts the far piece
    assert stream.buffered == 4 and stream.dropped == 4
    assert stream.feed(1, ACK, b"ab") == b"abcdef"


# ---------------------------------------------------------------- FlowTable


def seg(flow: Flow, seq: int, flags: int, payload: bytes = b"") -> TcpSegment:
    return TcpSegment(
        flow.src, flow.dst, flow.sport, flow.dport, seq, 0, flags, memoryview(payload)
    )


def collect(events: list) -> dict[Flow, bytes]:  # type: ignore[type-arg]
    out: dict[Flow, bytes] = {}
    for ev in events:
        if isinstance(ev, StreamData):
            out[ev.flow] = out.get(ev.flow, b"") + ev.data
    return out


@settings(max_examples=100)
@given(st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=6), st.randoms())
def test_flowtable_keeps_concurrent_flows_apart(bodies: list[bytes], rnd: random.Random) -> None:
    table = FlowTable()
    flows = [Flow("198.18.0.1", 40000 + i, "198.18.0.2", 8080) for i in range(len(bodies))]
    packets = []
    for flow, body in zip(flows, bodies, strict=True):
        isn = rnd.randrange(2**32)
        stream = [seg(flow, isn, SYN)]
        pos = 0
        while pos < len(body):
            n = rnd.randint(1, 20)
            stream.append(seg(flow, (isn + 1 + pos) & MASK, ACK | PSH, body[pos : pos + n]))
            pos += n
        stream.append(seg(flow, (isn + 1 + len(body)) & MASK, FIN | ACK))
        packets.append(stream)
    # Interleave the flows, each flow's own packets staying in order.
    events = []
    while any(packets):
        stream = rnd.choice([p for p in packets if p])
        events += table.feed(stream.pop(0), now=1.0)
    assert collect(events) == dict(zip(flows, bodies, strict=True))
    opened = [e.flow for e in events if isinstance(e, StreamOpened)]
    closed = [e for e in events if isinstance(e, StreamClosed)]
    assert sorted(opened) == sorted(flows)
    assert sorted(c.flow for c in closed) == sorted(flows)
    assert all(not c.reset for c in closed) and len(table) == 0
    for flow in flows:  # each flow: opened, then its data, then closed
        mine = [type(e) for e in events if e.flow == flow]
        assert mine[0] is StreamOpened and mine[-1] is StreamClosed


def test_flowtable_picks_up_midstream_and_ignores_late_retransmissions() -> None:
    table = FlowTable()
    flow = Flow("198.18.0.1", 41000, "198.18.0.2", 8080)
    assert table.feed(seg(flow, 5000, ACK), now=0) == []  # pure ACK: nothing to open
    assert table.feed(seg(flow, 5000, FIN | ACK), now=0) == []
    events = table.feed(seg(flow, 5000, ACK | PSH, b"GET / HTTP/1.1\r\n\r\n"), now=0)
    assert events == [StreamOpened(flow), StreamData(flow, b"GET / HTTP/1.1\r\n\r\n")]
    events = table.feed(seg(flow, 5018, FIN | ACK, b"x"), now=0)
    assert events == [StreamData(flow, b"x"), StreamClosed(flow, reset=False)]
    # The FIN (with its data) retransmitted after close: not a new connection.
    assert table.feed(seg(flow, 5018, FIN | ACK, b"x"), now=1) == []
    # A new connection on the same ports (its SYN seen) opens a new stream.
    events = table.feed(seg(flow, 77, SYN), now=2)
    assert events == [StreamOpened(flow)]
    events = table.feed(seg(flow, 77, SYN), now=2)  # retransmitted SYN: same connection
    assert events == []
    events = table.feed(seg(flow, 900, SYN), now=3)  # another SYN: the old one is gone
    assert events == [StreamClosed(flow, reset=True, expired=True), StreamOpened(flow)]
    assert table.feed(seg(flow, 901, RST), now=3) == [StreamClosed(flow, reset=True)]


def test_flowtable_expires_idle_flows_and_bounds_the_count() -> None:
    table = FlowTable(max_flows=3, idle_timeout=10.0)
    flows = [Flow("10.0.0.1", 1000 + i, "10.0.0.2", 80) for i in range(5)]
    events = []
    for i, flow in enumerate(flows):
        events += table.feed(seg(flow, 1, ACK, b"hi"), now=float(i))
    assert len(table) == 3 and table.evicted == 2
    evicted = [e for e in events if isinstance(e, StreamClosed)]
    assert [e.flow for e in evicted] == flows[:2] and all(e.expired for e in evicted)
    table.feed(seg(flows[2], 3, ACK, b"!"), now=12.5)  # keeps flow 2 alive
    expired = table.expire(now=14.5)
    assert [e.flow for e in expired] == [flows[3], flows[4]]  # idle since t=3 and t=4
    assert all(isinstance(e, StreamClosed) and e.reset and e.expired for e in expired)
    assert table.flows == [flows[2]]
    assert [e.flow for e in table.close_all()] == [flows[2]] and len(table) == 0


def test_flowtable_gives_up_on_a_hole_that_is_never_filled() -> None:
    table = FlowTable(max_buffered=10, hole_timeout=2.0)
    a = Flow("10.0.0.1", 1, "10.0.0.2", 80)
    b = Flow("10.0.0.1", 2, "10.0.0.2", 80)
    table.feed(seg(a, 100, SYN), now=0)
    table.feed(seg(a, 105, ACK, b"late"), now=0)  # bytes 101..104 lost by the capture
    assert table.total_buffered == 4 and table.expire(now=1.0) == []
    assert table.expire(now=2.5) == [StreamClosed(a, reset=True, expired=True)]
    assert table.total_buffered == 0
    table.feed(seg(b, 100, SYN), now=0)
    events = table.feed(seg(b, 200, ACK, b"y" * 11), now=0)  # overflows max_buffered
    assert events == [StreamClosed(b, reset=True, expired=True)]
    assert table.total_buffered == 0 and len(table) == 0


def test_flowtable_close_port() -> None:
    table = FlowTable()
    a = Flow("10.0.0.1", 1, "10.0.0.2", 80)
    b = Flow("10.0.0.1", 2, "10.0.0.2", 81)
    table.feed(seg(a, 1, ACK, b"a"), now=0)
    table.feed(seg(b, 1, ACK, b"b"), now=0)
    assert table.close_port(81) == [StreamClosed(b, reset=True, expired=True)]
    assert table.flows == [a]
