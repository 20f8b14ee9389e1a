"""TCP stream reassembly for mirror mode (sans-I/O: segments in, events out).

A sniffer sees copies of segments, not a socket: retransmissions, overlapping and
out-of-order segments, sequence numbers that wrap at 2**32, and connections that were
already open when sniffing began. ``TcpStream`` turns one direction's segments back into
the exact byte stream; ``FlowTable`` keeps one stream per client connection and reports
``StreamOpened``/``StreamData``/``StreamClosed`` events.

Memory is bounded three ways:

- per stream, at most ``max_buffered`` out-of-order bytes (bytes that arrived beyond a
  hole). When more arrive, the buffer keeps the *lowest* positions (those that become
  deliverable first) and drops the rest, counting them in ``TcpStream.dropped``. A stream
  that dropped bytes can never be delivered exactly (the real server already acknowledged
  them, so they are never retransmitted), so ``FlowTable`` ends it with ``reset=True``.
  A hole that stays open for ``hole_timeout`` seconds ends the stream the same way: a
  packet the capture lost is never seen again either;
- all streams together, at most ``max_total_buffered`` out-of-order bytes (the stream
  that overflows it is ended);
- at most ``max_flows`` connections (the least recently active one is ended to make
  room), and connections idle for ``idle_timeout`` seconds are ended by ``expire()``.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from mirrord.agent.packets import ACK, FIN, RST, SYN, TcpSegment

__all__ = [
    "DEFAULT_HOLE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BUFFERED",
    "DEFAULT_MAX_FLOWS",
    "DEFAULT_MAX_TOTAL_BUFFERED",
    "Flow",
    "FlowEvent",
    "FlowTable",
    "StreamClosed",
    "StreamData",
    "StreamOpened",
    "TcpStream",
]

_MOD = 1 << 32
_MASK = _MOD - 1
_HALF = 1 << 31
#: A segment this far ahead of the next expected byte is not part of the stream
#: (a receive window is at most 2**30 bytes with window scaling, RFC 7323).
_MAX_AHEAD = 1 << 30

DEFAULT_MAX_BUFFERED = 256 * 1024
DEFAULT_MAX_TOTAL_BUFFERED = 64 * 1024 * 1024
DEFAULT_MAX_FLOWS = 10_000
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_HOLE_TIMEOUT = 5.0
#: How long a closed flow is remembered, so that late retransmissions of its data or FIN
#: are recognised as such and not picked up as a new mid-stream connection.
DEFAULT_CLOSED_LINGER = 30.0


def _delta(seq: int, ref: int) -> int:
    """``seq - ref`` in 32-bit sequence space, as a signed number (RFC 1982)."""
    d = (seq - ref) & _MASK
    return d - _MOD if d >= _HALF else d


class TcpStream:
    """Reassembles one direction of one TCP connection.

    Positions are kept as unbounded integers (``isn`` plus bytes so far), so wraparound
    is handled once, when a segment's 32-bit sequence number is unwrapped against the
    next expected byte.
    """

    __slots__ = (
        "_next",
        "_fin_at",
        "_starts",
        "_segs",
        "max_buffered",
        "isn",
        "buffered",
        "dropped",
        "delivered",
        "highest",
        "finished",
        "reset",
    )

    def __init__(self, max_buffered: int = DEFAULT_MAX_BUFFERED) -> None:
        self.max_buffered = max_buffered
        #: Position of the next in-order byte; ``None`` until a SYN or the first data.
        self._next: int | None = None
        self._fin_at: int | None = None  # position of the FIN, once seen
        self._starts: list[int] = []  # sorted starts of buffered out-of-order pieces
        self._segs: dict[int, bytes] = {}  # start -> piece (pieces never overlap)
        #: Initial sequence number (from the SYN); ``None`` if picked up mid-stream.
        self.isn: int | None = None
        self.buffered = 0  # out-of-order bytes held
        self.dropped = 0  # out-of-order bytes thrown away (over ``max_buffered``)
        self.delivered = 0  # in-order bytes returned by feed()
        self.highest: int | None = None  # end position of the furthest byte seen
        self.finished = False  # the FIN was reached in order
        self.reset = False  # an RST was seen

    @property
    def closed(self) -> bool:
        """Finished (FIN reached) or reset: ``feed`` returns nothing from now on."""
        return self.finished or self.reset

    @property
    def synchronized(self) -> bool:
        """Whether the stream knows where its bytes start (SYN or first data seen)."""
        return self._next is not None

    @property
    def next_seq(self) -> int | None:
        """The 32-bit sequence number of the next expected byte."""
        return None if self._next is None else self._next & _MASK

    def feed(self, seq: int, flags: int, payload: bytes | bytearray | memoryview) -> bytes:
        """Take one segment; return the bytes that are now in order (often ``b""``).

        ``seq`` is the segment's 32-bit sequence number, ``flags`` its TCP flags.
        """
        if self.finished or self.reset:
            return b""
        if flags & RST:
            self._end(reset=True)
            return b""
        size = len(payload)
        nxt = self._next
        if flags & SYN:
            if nxt is None:
                self.isn = seq
                nxt = self._next = self.highest = seq + 1  # the SYN takes one number
            seq = (seq + 1) & _MASK  # data on a SYN (TCP Fast Open) follows it
        elif nxt is None:
            if not size:
                if flags & FIN:  # ended before we knew where it started: nothing to give
                    self._end(reset=False)
                return b""
            # Picked up mid-stream: the first byte seen is where the stream starts for us.
            nxt = self._next = self.highest = seq
        start = nxt + _delta(seq, nxt & _MASK)
        end = start + size
        if start >= nxt + _MAX_AHEAD:
            return b""  # not plausibly part of this stream
        if flags & FIN and self._fin_at is None and end >= nxt:
            self._fin_at = end
        highest = self.highest
        if highest is None or end > highest:
            self.highest = end
        out = b""
        if end > nxt:
            if start <= nxt:
                # The common case: in order (maybe overlapping bytes already delivered).
                out = bytes(payload[nxt - start :]) if start < nxt else bytes(payload)
                nxt = self._next = end
                if self._starts:
                    out = self._drain(out)
                    nxt = self._next
            else:
                self._store(start, payload)
        fin_at = self._fin_at
        if fin_at is not None and nxt >= fin_at:
            if nxt > fin_at:  # bytes past the FIN are not part of the stream
                out = out[: len(out) - (nxt - fin_at)]
                self._next = fin_at
            self._end(reset=False)
        self.delivered += len(out)
        return out

    def _store(self, start: int, payload: bytes | bytearray | memoryview) -> None:
        """Buffer an out-of-order segment, keeping only the bytes not buffered yet."""
        starts, segs = self._starts, self._segs
        end = start + len(payload)
        i = bisect.bisect_right(starts, start) - 1
        if i < 0 or starts[i] + len(segs[starts[i]]) <= start:
            i += 1
        pieces = []
        cur = start
        while i < len(starts) and starts[i] < end:
            s = starts[i]
            if s > cur:
                pieces.append((cur, bytes(payload[cur - start : s - start])))
            cur = max(cur, s + len(segs[s]))
            i += 1
        if cur < end:
            pieces.append((cur, bytes(payload[cur - start :])))
        for s, piece in pieces:
            bisect.insort(starts, s)
            segs[s] = piece
            self.buffered += len(piece)
        # Over the bound: drop from the far end, keeping what becomes deliverable first.
        while self.buffered > self.max_buffered:
            s = starts[-1]
            piece = segs[s]
            excess = self.buffered - self.max_buffered
            if excess >= len(piece):
                starts.pop()
                del segs[s]
                self.buffered -= len(piece)
                self.dropped += len(piece)
            else:
                segs[s] = piece[: len(piece) - excess]
                self.buffered -= excess
                self.dropped += excess

    def _drain(self, out: bytes) -> bytes:
        """Append the buffered pieces that the new next position made contiguous."""
        starts, segs = self._starts, self._segs
        nxt = self._next
        assert nxt is not None
        parts = [out]
        while starts and starts[0] <= nxt:
            s = starts.pop(0)
            piece = segs.pop(s)
            self.buffered -= len(piece)
            end = s + len(piece)
            if end > nxt:
                parts.append(piece[nxt - s :])
                nxt = end
        self._next = nxt
        return b"".join(parts)

    def _end(self, reset: bool) -> None:
        if reset:
            self.reset = True
        else:
            self.finished = True
        self._starts.clear()
        self._segs.clear()
        self.buffered = 0


class Flow(NamedTuple):
    """A client connection, as the client→server direction's addresses and ports."""

    src: str
    sport: int
    dst: str
    dport: int


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """A connection to a subscribed port was seen (its SYN, or its first data)."""

    flow: Flow


@dataclass(frozen=True, slots=True)
class StreamData:
    """The next bytes the client sent, in order, exactly once."""

    flow: Flow
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """The connection's client→server stream ended.

    ``reset`` is False only when the client's FIN was reached with every byte before it
    delivered. It is True on RST, and when the table gave up on the flow (``expired``:
    idle, evicted for room, or a hole in the capture that will never be filled).
    """

    flow: Flow
    reset: bool
    expired: bool = False


FlowEvent = StreamOpened | StreamData | StreamClosed


class _Conn:
    __slots__ = ("stream", "last_seen", "hole_since")

    def __init__(self, stream: TcpStream, now: float) -> None:
        self.stream = stream
        self.last_seen = now
        self.hole_since: float | None = None  # when out-of-order bytes started waiting


class FlowTable:
    """Client→server streams of many connections, keyed by ``Flow``.

    Feed it every captured segment *to* the server (the sniffer's filter selects them
    by destination port); server→client segments must not be fed.
    """

    def __init__(
        self,
        *,
        max_flows: int = DEFAULT_MAX_FLOWS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        max_total_buffered: int = DEFAULT_MAX_TOTAL_BUFFERED,
        hole_timeout: float = DEFAULT_HOLE_TIMEOUT,
        closed_linger: float = DEFAULT_CLOSED_LINGER,
    ) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.max_buffered = max_buffered
        self.max_total_buffered = max_total_buffered
        self.hole_timeout = hole_timeout
        self.closed_linger = closed_linger
        # Least recently active first, so expiry and eviction look at the front only.
        self._flows: OrderedDict[Flow, _Conn] = OrderedDict()
        # Recently closed flows -> (32-bit sequence number where they ended, when).
        self._closed: OrderedDict[Flow, tuple[int, float]] = OrderedDict()
        self.total_buffered = 0
        self.evicted = 0  # flows ended to make room (max_flows) or memory (total bound)

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, flow: object) -> bool:
        return flow in self._flows

    @property
    def flows(self) -> list[Flow]:
        """The open flows, least recently active first."""
        return list(self._flows)

    def feed(self, segment: TcpSegment, now: float) -> list[FlowEvent]:
        """Take one client→server segment seen at ``now`` (monotonic seconds)."""
        flow = Flow(segment.src, segment.sport, segment.dst, segment.dport)
        flags = segment.flags
        payload = segment.payload
        events: list[FlowEvent] = []
        conn = self._flows.get(flow)
        if conn is not None:
            stream = conn.stream
            if flags & SYN and not flags & ACK and stream.isn != segment.seq:
                # A new connection on the same ports: the old one ended unseen.
                self._close(flow, conn, True, True, events)
                conn = None
            else:
                self._flows.move_to_end(flow)
        if conn is None:
            if flags & RST or (not payload and not flags & SYN) or (flags & SYN and flags & ACK):
                return events  # nothing to open a stream with (or not a client's SYN)
            ended = self._closed.get(flow)
            if ended is not None:
                if not flags & SYN and _delta(segment.seq, ended[0]) < 0:
                    return events  # a late retransmission of a closed connection
                del self._closed[flow]
            while len(self._flows) >= self.max_flows:
                old_flow, old = next(iter(self._flows.items()))
                self.evicted += 1
                self._close(old_flow, old, True, True, events)
            conn = self._flows[flow] = _Conn(TcpStream(self.max_buffered), now)
            stream = conn.stream
            events.append(StreamOpened(flow))
        conn.last_seen = now
        before = stream.buffered
        data = stream.feed(segment.seq, flags, payload)
        self.total_buffered += stream.buffered - before
        if data:
            events.append(StreamData(flow, data))
        if stream.closed:
            self._close(flow, conn, stream.reset, False, events)
        elif stream.dropped or self.total_buffered > self.max_total_buffered:
            # The hole before the buffered bytes can never be filled exactly now.
            if not stream.dropped:
                self.evicted += 1
            self._close(flow, conn, True, True, events)
        elif stream.buffered:
            if conn.hole_since is None:
                conn.hole_since = now
        else:
            conn.hole_since = None
        return events

    def expire(self, now: float) -> list[FlowEvent]:
        """End flows idle for ``idle_timeout`` or stuck on a hole for ``hole_timeout``."""
        events: list[FlowEvent] = []
        flows = self._flows
        deadline = now - self.idle_timeout
        while flows:
            flow, conn = next(iter(flows.items()))
            if conn.last_seen > deadline:
                break
            self._close(flow, conn, True, True, events)
        if self.total_buffered:
            stuck = now - self.hole_timeout
            for flow, conn in list(flows.items()):
                if conn.hole_since is not None and conn.hole_since <= stuck:
                    self._close(flow, conn, True, True, events)
        closed = self._closed
        linger = now - self.closed_linger
        while closed and next(iter(closed.values()))[1] <= linger:
            closed.popitem(last=False)
        return events

    def close_port(self, port: int) -> list[FlowEvent]:
        """End every flow to ``port`` (it was unsubscribed)."""
        events: list[FlowEvent] = []
        for flow, conn in list(self._flows.items()):
            if flow.dport == port:
                self._close(flow, conn, True, True, events)
        return events

    def close_all(self) -> list[FlowEvent]:
        """End every flow (the sniffer is stopping)."""
        events: list[FlowEvent] = []
        for flow, conn in list(self._flows.items()):
            self._close(flow, conn, True, True, events)
        return events

    def _close(
        self, flow: Flow, conn: _Conn, reset: bool, expired: bool, events: list[FlowEvent]
    ) -> None:
        stream = conn.stream
        self.total_buffered -= stream.buffered
        del self._flows[flow]
        # Remember where the stream ended: segments before that are retransmissions.
        highest = stream.highest
        if highest is not None:
            self._closed[flow] = (highest & _MASK, conn.last_seen)
            self._closed.move_to_end(flow)
            while len(self._closed) > self.max_flows:
                self._closed.popitem(last=False)
        events.append(StreamClosed(flow, reset, expired))
