"""Mirror mode's capture: a raw ``AF_PACKET`` socket, a kernel BPF filter, reassembly.

The agent runs this inside the target's network namespace. The target is not touched:
the kernel hands the socket a *copy* of every packet on every interface of the
namespace, and the BPF filter attached to the socket keeps only TCP segments to a
subscribed port that carry something (a SYN, FIN or RST, or payload; pure ACKs are
dropped in the kernel because reassembly has no use for them). Headers are parsed with
``struct`` (``packets.py``), never dissected with scapy: scapy's ``sniff()`` keeps about
6,000 packets/s, which is far from enough.

The filter is compiled by libpcap through scapy (``scapy.arch.common.compile_filter``,
ctypes; Debian package ``libpcap0.8``) for raw IP (``DLT_RAW``): a ``SOCK_DGRAM`` packet
socket runs its filter on the packet from the network header on. Without libpcap an
equivalent program built here is used (``builtin_port_filter``).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import logging
import math
import socket
import struct
import time
from collections.abc import Iterable
from types import TracebackType

import anyio

from mirrord.agent.packets import parse_ip_tcp
from mirrord.agent.reassembly import FlowEvent, FlowTable

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_RCVBUF",
    "Insn",
    "Sniffer",
    "attach_filter",
    "builtin_port_filter",
    "compile_port_filter",
    "port_filter_expression",
]

log = logging.getLogger("mirrord.agent.sniffer")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_OUTGOING = 4  # sockaddr_ll.sll_pkttype of a packet this host sends
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20+: do not even queue outgoing copies
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33  # like SO_RCVBUF, but above net.core.rmem_max (needs CAP_NET_ADMIN)

DEFAULT_RCVBUF = 8 * 1024 * 1024
DEFAULT_BATCH = 256
#: Bigger than any packet. A GSO/GRO super-packet is not limited to 64 KiB by IP: with
#: BIG TCP (Linux 5.19+ for IPv6, 6.3+ for IPv4) it may reach GSO_MAX_SIZE (8 * 65535
#: bytes), its IP length field then being 0 (``packets.parse_ip_tcp`` handles that).
RECV_SIZE = 1024 * 1024
#: How often idle flows are expired (also the longest wait with no packet at all).
EXPIRE_INTERVAL = 1.0

#: One classic BPF instruction: (code, jt, jf, k).
Insn = tuple[int, int, int, int]
_ACCEPT_LEN = RECV_SIZE  # a filter returns how many bytes of the packet to keep
_RET_K = 0x06  # BPF_RET | BPF_K: "ret #k"
_REJECT_ALL: list[Insn] = [(0x06, 0, 0, 0)]  # ret #0


def port_filter_expression(ports: Iterable[int]) -> str:
    """The libpcap expression: TCP to one of ``ports``, IPv4 or IPv6, with a SYN, FIN,
    RST or payload. IPv6 with extension headers before TCP is not matched (as libpcap's
    ``tcp`` primitive). Raises ValueError if there are no ports."""
    ordered = sorted({_check_port(p) for p in ports})
    if not ordered:
        raise ValueError("no ports")
    dst = " or ".join(f"tcp dst port {p}" for p in ordered)
    # payload length = IP length - IP header - TCP header; flags byte & 7 = FIN|SYN|RST
    v4 = (
        f"(ip and ({dst}) and (tcp[13] & 7 != 0"
        " or ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) != 0))"
    )
    v6 = f"(ip6 and ({dst}) and (ip6[53] & 7 != 0 or ip6[4:2] - ((ip6[52] & 0xf0) >> 2) != 0))"
    return f"{v4} or {v6}"


def _check_port(port: int) -> int:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"not a TCP port: {port!r}")
    return port


def compile_port_filter(ports: Iterable[int], *, use_libpcap: bool = True) -> list[Insn]:
    """A BPF program for a ``SOCK_DGRAM`` packet socket that passes what
    ``port_filter_expression`` describes (nothing at all for no ports).

    Compiled by libpcap through scapy; if libpcap is missing (or ``use_libpcap`` is
    False) the equivalent ``builtin_port_filter`` is returned instead.
    """
    ports = sorted({_check_port(p) for p in ports})
    if not ports:
        return list(_REJECT_ALL)
    if use_libpcap:
        try:
            from scapy.arch.common import compile_filter, free_filter
            from scapy.data import DLT_RAW
        except ImportError as exc:  # scapy says ImportError when libpcap is missing too
            log.info("libpcap unavailable (%s): using the built-in BPF program", exc)
        else:
            try:
                program = compile_filter(port_filter_expression(ports), linktype=DLT_RAW)
            except ImportError as exc:
                log.info("libpcap unavailable (%s): using the built-in BPF program", exc)
            else:
                try:
                    insns = program.bf_insns
                    return [
                        _keep_whole(insns[i].code, insns[i].jt, insns[i].jf, insns[i].k)
                        for i in range(program.bf_len)
                    ]
                finally:
                    free_filter(program)
    return builtin_port_filter(ports)


def _keep_whole(code: int, jt: int, jf: int, k: int) -> Insn:
    """libpcap's accepting ``ret #snaplen`` keeps only its snapshot length of a packet
    (65,535 bytes as scapy opens it): a bigger GRO'd packet would come out truncated,
    unparsable, and leave a hole in its stream. Keep every accepted packet whole."""
    if code == _RET_K and k:
        k = _ACCEPT_LEN
    return (code, jt, jf, k)


def builtin_port_filter(ports: Iterable[int]) -> list[Insn]:
    """The same filter as libpcap compiles from ``port_filter_expression``, assembled
    here so that the agent also works where libpcap is not installed."""
    ordered = sorted({_check_port(p) for p in ports})
    if not ordered:
        return list(_REJECT_ALL)
    # (code, jump-if-true label, jump-if-false label, k); labels resolved below.
    code: list[tuple[int, str | int, str | int, int]] = []
    labels: dict[str, int] = {}

    def op(c: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        code.append((c, jt, jf, k))

    def port_checks(match: str) -> None:
        for i, port in enumerate(ordered):
            last = i == len(ordered) - 1
            op(0x15, port, match, "reject" if last else 0)  # jeq #port

    def payload_check(flags_at: tuple[int, int], tcp_len: list[tuple[int, int]]) -> None:
        op(*flags_at)  # A = TCP flags byte
        op(0x45, 0x07, "accept", 0)  # jset #FIN|SYN|RST
        for c, k in tcp_len:
            op(c, k)
        op(0x15, 0, "reject", "accept")  # no payload: reject

    op(0x30, 0)  # ldb [0]
    op(0x54, 0xF0)  # and #0xf0: IP version
    op(0x15, 0x40, 0, "v6")  # jeq #0x40
    op(0x30, 9)  # ldb [9]: protocol
    op(0x15, 6, 0, "reject")
    op(0x28, 6)  # ldh [6]
    op(0x45, 0x1FFF, "reject", 0)  # a non-first fragment has no TCP header
    op(0xB1, 0)  # ldxb 4*([0]&0xf): X = IP header length
    op(0x48, 2)  # ldh [x+2]: destination port
    port_checks("v4match")
    labels["v4match"] = len(code)
    payload_check(
        (0x50, 13),  # ldb [x+13]
        [
            (0x28, 2),  # ldh [2]: IP total length
            (0x1C, 0),  # sub x
            (0x02, 0),  # st M[0]: TCP segment length
            (0x50, 12),  # ldb [x+12]
            (0x54, 0xF0),
            (0x74, 2),  # rsh #2: TCP header length
            (0x07, 0),  # tax
            (0x60, 0),  # ld M[0]
            (0x1C, 0),  # sub x
        ],
    )
    labels["v6"] = len(code)
    op(0x15, 0x60, 0, "reject")  # A still holds the version
    op(0x30, 6)  # ldb [6]: next header
    op(0x15, 6, 0, "reject")
    op(0x28, 42)  # ldh [42]: destination port
    port_checks("v6match")
    labels["v6match"] = len(code)
    payload_check(
        (0x30, 53),  # ldb [53]
        [
            (0x30, 52),  # ldb [52]
            (0x54, 0xF0),
            (0x74, 2),
            (0x07, 0),  # tax: TCP header length
            (0x28, 4),  # ldh [4]: IPv6 payload length
            (0x1C, 0),  # sub x
        ],
    )
    labels["accept"] = len(code)
    op(0x06, _ACCEPT_LEN)
    labels["reject"] = len(code)
    op(0x06, 0)

    program: list[Insn] = []
    for pc, (c, jt, jf, k) in enumerate(code):
        offsets = [labels[j] - pc - 1 if isinstance(j, str) else j for j in (jt, jf)]
        if not all(0 <= off <= 255 for off in offsets):
            raise ValueError(f"too many ports for one BPF program: {len(ordered)}")
        program.append((c, offsets[0], offsets[1], k))
    return program


def attach_filter(sock: socket.socket, program: list[Insn]) -> None:
    """Attach (or replace) ``sock``'s classic BPF filter; the kernel copies it."""
    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Sniffer:
    """Client→server streams of connections to ``ports`` in the current network namespace.

    Create it in the thread that is inside the target's namespace (the socket stays in
    the namespace it was created in, so it may be used from any thread afterwards), then
    iterate::

        async with Sniffer([8080]) as sniffer:
            async for event in sniffer:  # StreamOpened / StreamData / StreamClosed
                ...

    Use it from one event loop; ``update_ports`` may be called between iterations.
    """

    def __init__(
        self,
        ports: Iterable[int] = (),
        *,
        table: FlowTable | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
        batch: int = DEFAULT_BATCH,
        use_libpcap: bool = True,
    ) -> None:
        self.table = table if table is not None else FlowTable()
        self.batch = batch
        self.use_libpcap = use_libpcap
        self._ports: frozenset[int] = frozenset()
        self._pending: collections.deque[FlowEvent] = collections.deque()
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)
        self._next_expire = time.monotonic() + EXPIRE_INTERVAL
        self._closed = False
        self._wait_scope: anyio.CancelScope | None = None  # the wait in __anext__, if any
        #: Packets read from the socket (after the kernel filter).
        self.packets = 0
        #: Packets the kernel dropped because the receive buffer was full.
        self.kernel_drops = 0
        #: Packets that passed the filter but are not a whole TCP segment (truncated,
        #: an IP fragment...): each one may leave a hole in its stream.
        self.unparsed = 0
        # Not bound to an interface: ETH_P_ALL on an unbound socket sees them all.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            # Reject everything first; packets queued before this are drained below.
            attach_filter(sock, _REJECT_ALL)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            try:
                # On `lo` every packet is seen leaving and arriving: keep the arrival.
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                self._check_outgoing = False
            except OSError:  # older kernel: check sll_pkttype of each packet instead
                self._check_outgoing = True
            sock.setblocking(False)
            self._sock = sock
            self._drain_queue()
            self._read_stats()
            self.update_ports(ports)
        except BaseException:
            sock.close()
            raise

    # ---- subscriptions

    @property
    def ports(self) -> frozenset[int]:
        """The subscribed destination ports."""
        return self._ports

    def update_ports(self, ports: Iterable[int]) -> None:
        """Capture connections to exactly ``ports`` from now on (re-attaches the filter).

        Flows to ports no longer subscribed are ended (``StreamClosed``, next in line).
        Call it on the event loop's thread; after ``close()`` it does nothing.
        """
        if self._closed:
            return
        new = frozenset(_check_port(p) for p in ports)
        program = compile_port_filter(new, use_libpcap=self.use_libpcap)
        attach_filter(self._sock, program)
        for port in self._ports - new:
            self._pending.extend(self.table.close_port(port))
        # Packets queued under the old filter are checked against this set when read.
        self._ports = new
        if self._pending and self._wait_scope is not None:
            self._wait_scope.cancel()  # hand the StreamClosed events out now

    # ---- iteration

    def __aiter__(self) -> Sniffer:
        return self

    async def __anext__(self) -> FlowEvent:
        pending = self._pending
        while not pending:
            if self._closed:
                raise StopAsyncIteration
            now = time.monotonic()
            if now >= self._next_expire:
                self._next_expire = now + EXPIRE_INTERVAL
                pending.extend(self.table.expire(now))
                self._read_stats()
                if pending:
                    break
            # No timer when nothing can expire (a timer costs a third of a wake-up).
            deadline = self._next_expire if len(self.table) else math.inf
            try:
                with anyio.CancelScope(deadline=deadline) as self._wait_scope:
                    await anyio.wait_readable(self._sock)
            except anyio.ClosedResourceError:
                continue  # close() queued the last events
            finally:
                self._wait_scope = None
            if not self._closed:
                self._read_batch()
        return pending.popleft()

    def _read_batch(self) -> None:
        """Read up to ``batch`` packets without blocking and feed them to the table."""
        sock, buf, view = self._sock, self._buf, self._view
        ports, feed, out = self._ports, self.table.feed, self._pending
        check_outgoing = self._check_outgoing
        now = time.monotonic()
        count = 0
        for _ in range(self.batch):
            try:
                if check_outgoing:
                    size, addr = sock.recvfrom_into(buf)
                    if addr[2] == PACKET_OUTGOING:
                        continue
                else:
                    size = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # An interface going down is reported once on the socket; go on.
                if exc.errno in (errno.ENETDOWN, errno.ENXIO):
                    continue
                raise
            count += 1
            segment = parse_ip_tcp(view[:size])
            if segment is None:
                self.unparsed += 1
            elif segment.dport in ports:
                out.extend(feed(segment, now))
        self.packets += count

    def _drain_queue(self) -> None:
        while True:
            try:
                self._sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return

    def _read_stats(self) -> None:
        # Reading PACKET_STATISTICS resets the kernel's counters, hence the sum.
        try:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        except OSError:
            return
        _packets, drops = struct.unpack("II", raw)
        self.kernel_drops += drops

    def stats(self) -> dict[str, int]:
        """Counters so far: packets read, packets the kernel dropped, packets that could
        not be parsed, open flows, flows evicted."""
        if not self._closed:
            self._read_stats()
        return {
            "packets": self.packets,
            "kernel_drops": self.kernel_drops,
            "unparsed": self.unparsed,
            "flows": len(self.table),
            "evicted": self.table.evicted,
        }

    # ---- lifetime

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket. Iteration goes on with a ``StreamClosed(reset=True,
        expired=True)`` for each open flow, then stops.

        Called on the event loop's thread, it also wakes a task waiting in ``__anext__``.
        """
        if self._closed:
            return
        self._read_stats()
        self._closed = True
        try:
            anyio.notify_closing(self._sock)
        except RuntimeError:  # no event loop in this thread: nobody can be waiting here
            pass
        self._sock.close()
        self._pending.extend(self.table.close_all())

    async def aclose(self) -> None:
        """``close()``, for ``async with``."""
        self.close()

    async def __aenter__(self) -> Sniffer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
