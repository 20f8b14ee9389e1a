"""Mirror mode's capture: a real AF_PACKET socket inside the lab's staging namespace.

Clients talk to the unmodified staging service; the sniffer must report each
connection's exact client→server bytes, and nothing about other ports.
"""

from __future__ import annotations

import functools
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.from_thread
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrord.agent.reassembly import Flow, FlowEvent, StreamClosed, StreamData, StreamOpened
from mirrord.agent.sniffer import (
    Insn,
    Sniffer,
    builtin_port_filter,
    compile_port_filter,
)
from mirrord.lab import Lab

# ---------------------------------------------------------------- the BPF programs


def run_bpf(program: list[Insn], pkt: bytes) -> int:
    """A classic BPF interpreter (the subset filters use), as the kernel runs it:
    a load beyond the packet rejects it."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if cls in (0x00, 0x01):  # LD, LDX
            mode, size = code & 0xE0, code & 0x18
            if mode == 0x00:
                val = k
            elif mode in (0x20, 0x40):  # ABS, IND
                off = k + (x if mode == 0x40 else 0)
                n = {0x00: 4, 0x08: 2, 0x10: 1}[size]
                if off + n > len(pkt):
                    return 0
                val = int.from_bytes(pkt[off : off + n], "big")
            elif mode == 0x60:
                val = mem[k]
            elif mode == 0x80:
                val = len(pkt)
            elif mode == 0xA0:  # MSH: 4 * (pkt[k] & 0xf)
                if k >= len(pkt):
                    return 0
                val = (pkt[k] & 0x0F) << 2
            else:
                raise AssertionError(f"load mode {mode:#x}")
            if cls == 0x00:
                a = val
            else:
                x = val
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                a = a + src
            elif op == 0x10:
                a = a - src
            elif op == 0x50:
                a = a & src
            elif op == 0x40:
                a = a | src
            elif op == 0x60:
                a = a << src
            elif op == 0x70:
                a = a >> src
            else:
                raise AssertionError(f"alu op {op:#x}")
            a &= 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                pc += k
                continue
            cond = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: a & src != 0}[op]
            pc += jt if cond else jf
        elif cls == 0x06:  # RET
            return k if code & 0x18 == 0 else a
        else:  # MISC: tax / txa
            if code & 0xF8 == 0:
                x = a
            else:
                a = x


def _ipv4(proto: int, frag: int, l4: bytes) -> bytes:
    import struct

    return (
        struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0)
        + socket.inet_aton("198.18.0.1")
        + socket.inet_aton("198.18.0.2")
        + l4
    )


def _ipv6(nxt: int, ext: bytes, l4: bytes) -> bytes:
    import struct

    return (
        struct.pack("!IHBB", 6 << 28, len(ext) + len(l4), nxt, 64)
        + socket.inet_pton(socket.AF_INET6, "fd00::1")
        + socket.inet_pton(socket.AF_INET6, "fd00::2")
        + ext
        + l4
    )


def _tcp(dport: int, flags: int, payload: bytes, options: bytes = b"") -> bytes:
    import struct

    offset = (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, offset << 4, flags, 65535, 0, 0)
    return hdr + options + payload


packets = st.builds(
    lambda v6, proto, frag, dport, flags, payload, opts: (
        _ipv6(proto, b"", _tcp(dport, flags, payload, opts))
        if v6
        else _ipv4(proto, frag, _tcp(dport, flags, payload, opts))
    ),
    st.booleans(),
    st.sampled_from([6, 6, 6, 17]),
    st.sampled_from([0, 0, 0x2000, 0x0001]),  # whole, first fragment, a later fragment
    st.sampled_from([80, 8080, 9090, 8081]),
    st.sampled_from([0x10, 0x18, 0x02, 0x11, 0x04, 0x12, 0x00]),
    st.sampled_from([b"", b"x", b"GET / HTTP/1.1\r\n\r\n"]),
    st.sampled_from([b"", b"\x01\x01\x08\x0a" + b"\0" * 8]),  # none, or NOP NOP timestamps
)


def _should_pass(pkt: bytes, ports: set[int]) -> bool:
    v6 = pkt[0] >> 4 == 6
    ip_len = 40 if v6 else 20
    if pkt[6 if v6 else 9] != 6:
        return False
    if not v6 and int.from_bytes(pkt[6:8], "big") & 0x1FFF:
        return False  # a later fragment: no TCP header in it
    tcp = pkt[ip_len:]
    dport = int.from_bytes(tcp[2:4], "big")
    payload = len(tcp) - (tcp[12] >> 4) * 4
    return dport in ports and bool(tcp[13] & 0x07 or payload)


@settings(max_examples=300, deadline=None)
@given(packets, st.sampled_from([{8080}, {8080, 9090}, {80, 443, 8080, 9090}]))
def test_bpf_programs_pass_exactly_what_reassembly_needs(pkt: bytes, ports: set[int]) -> None:
    expected = _should_pass(pkt, ports)
    assert bool(run_bpf(builtin_port_filter(ports), pkt)) == expected
    try:
        libpcap = compile_port_filter(ports)  # falls back to the built-in one if needed
    except Exception as exc:  # scapy is a dependency: a missing one is a failure
        pytest.fail(f"scapy cannot compile: {exc}")
    assert bool(run_bpf(libpcap, pkt)) == expected
    if expected:  # the whole packet is kept
        assert run_bpf(libpcap, pkt) >= len(pkt) and run_bpf(builtin_port_filter(ports), pkt)


def test_bpf_programs_for_no_ports_reject_everything() -> None:
    pkt = _ipv4(6, 0, _tcp(8080, 0x02, b""))
    assert run_bpf(compile_port_filter([]), pkt) == 0
    assert run_bpf(builtin_port_filter([]), pkt) == 0
    with pytest.raises(ValueError):
        compile_port_filter([0])
    with pytest.raises(ValueError):
        builtin_port_filter(range(1, 300))  # more than classic BPF jumps can reach


def test_bpf_programs_keep_big_tcp_super_packets_whole() -> None:
    # A GRO'd segment over 64 KiB (BIG TCP): IPv4 total length 0, or IPv6 payload length 0.
    payload = b"x" * 100_000
    v4 = bytearray(_ipv4(6, 0, _tcp(8080, 0x10, b"")))
    v4[2:4] = b"\0\0"
    v6 = bytearray(_ipv6(6, b"", _tcp(8080, 0x10, b"")))
    v6[4:6] = b"\0\0"
    for pkt in (bytes(v4) + payload, bytes(v6) + payload):
        # libpcap's own program would return its snapshot length (65,535 bytes)
        for program in (compile_port_filter([8080]), builtin_port_filter([8080])):
            assert run_bpf(program, pkt) >= len(pkt)
        assert run_bpf(compile_port_filter([9090]), pkt) == 0


# ---------------------------------------------------------------- in the lab


class Capture:
    """A Sniffer created inside the staging namespace, iterated on its own event loop
    (a blocking portal thread); events are recorded as they come."""

    def __init__(self, lab: Lab, ports: Iterable[int], **kwargs: Any) -> None:
        self.sniffer: Sniffer = lab.call_in(lab.staging_ns, Sniffer, list(ports), **kwargs)
        self.events: list[FlowEvent] = []
        self._cond = threading.Condition()
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self._task = self.portal.start_task_soon(self._consume)
        self._closed = False

    async def _consume(self) -> None:
        async for event in self.sniffer:
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()

    def update_ports(self, ports: Iterable[int]) -> None:
        self.portal.call(self.sniffer.update_ports, list(ports))

    def wait_for(self, predicate: Callable[[list[FlowEvent]], bool], timeout: float = 5) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.events), timeout), self.events

    def closed(self, flows: Iterable[Flow]) -> Callable[[list[FlowEvent]], bool]:
        wanted = set(flows)
        return lambda events: wanted <= {e.flow for e in events if isinstance(e, StreamClosed)}

    def streams(self) -> dict[Flow, bytes]:
        with self._cond:
            out: dict[Flow, bytes] = {}
            for e in self.events:
                if isinstance(e, StreamData):
                    out[e.flow] = out.get(e.flow, b"") + e.data
            return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.portal.call(self.sniffer.aclose)
            self._task.result(timeout=5)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordingConnection(http.client.HTTPConnection):
    """http.client, keeping every byte it sends (it all goes through ``send``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = bytearray()
        self.flow: Flow | None = None

    def connect(self) -> None:
        super().connect()
        src, sport = self.sock.getsockname()[:2]
        dst, dport = self.sock.getpeername()[:2]
        self.flow = Flow(src, sport, dst, dport)

    def send(self, data: Any) -> None:
        self.sent += data
        super().send(data)


def talk(host: str, port: int, bodies: list[bytes]) -> RecordingConnection:
    """One keep-alive connection: a POST per body; every answer must be the service's."""
    conn = RecordingConnection(host, port, timeout=10)
    for i, body in enumerate(bodies):
        conn.request("POST", f"/req/{i}", body=body, headers={"X-Request": str(i)})
        response = conn.getresponse()
        assert response.status == 200
        answer = response.read()
        assert answer in (b"staging-service", b"staging-loopback"), answer
    conn.close()
    return conn


def talk_concurrently(jobs: list[Callable[[], RecordingConnection]]) -> list[RecordingConnection]:
    results: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # re-raised below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_mirrors_each_connection_exactly_and_leaves_the_service_alone(lab: Lab) -> None:
    with Capture(lab, [lab.service_port]) as cap:
        host, port = lab.staging_addr, lab.service_port
        jobs: list[Callable[[], RecordingConnection]] = []
        for c in range(4):  # from the host, over the veth
            bodies = [f"client {c} request {i} ".encode() * (1 + 50 * i) for i in range(5)]
            jobs.append(functools.partial(talk, host, port, bodies))
        for c in range(2):  # from inside staging to its own address, over `lo`
            bodies = [f"local {c} request {i}".encode() for i in range(3)]
            jobs.append(functools.partial(lab.call_in, lab.staging_ns, talk, host, port, bodies))
        # Another port of the same namespace (loopback service): not subscribed.
        jobs.append(
            lambda: lab.call_in(lab.staging_ns, talk, "127.0.0.1", lab.loopback_port, [b"no"])
        )
        conns = talk_concurrently(jobs)
        flows = [c.flow for c in conns[:-1]]
        assert None not in flows and len(set(flows)) == 6
        cap.wait_for(cap.closed(flows))  # type: ignore[arg-type]
        streams = cap.streams()
        for conn in conns[:-1]:
            assert conn.flow is not None
            assert streams[conn.flow] == bytes(conn.sent), conn.flow
        assert set(streams) == set(flows)  # nothing about port 9090
        for flow in flows:
            mine = [e for e in cap.events if e.flow == flow]
            assert mine[0] == StreamOpened(flow)  # type: ignore[arg-type]
            assert mine[-1] == StreamClosed(flow, reset=False)  # type: ignore[arg-type]
            assert sum(isinstance(e, StreamOpened) for e in mine) == 1
        stats = cap.sniffer.stats()
        assert stats["kernel_drops"] == 0 and stats["flows"] == 0


def test_subscriptions_change_and_open_connections_are_picked_up(lab: Lab) -> None:
    host, port = lab.staging_addr, lab.service_port
    # The built-in BPF program, in the kernel this time.
    with Capture(lab, [], use_libpcap=False) as cap:
        conn = RecordingConnection(host, port, timeout=10)
        conn.request("GET", "/before")
        assert conn.getresponse().read() == b"staging-service"
        flow = conn.flow
        assert flow is not None
        time.sleep(0.1)
        assert cap.sniffer.packets == 0  # the kernel filter let nothing through
        assert cap.events == []

        cap.update_ports([port, lab.loopback_port])
        before = len(conn.sent)
        conn.request("POST", "/after", body=b"picked up mid-stream")
        assert conn.getresponse().read() == b"staging-service"
        local = lab.call_in(lab.staging_ns, talk, "127.0.0.1", lab.loopback_port, [b"lo"])
        assert local.flow is not None
        cap.wait_for(cap.closed([local.flow]))
        cap.wait_for(lambda evs: flow in {e.flow for e in evs if isinstance(e, StreamData)})
        streams = cap.streams()
        assert streams[flow] == bytes(conn.sent[before:])  # from its next data on
        assert streams[local.flow] == bytes(local.sent)
        assert cap.events[0] == StreamOpened(flow)

        cap.update_ports([lab.loopback_port])  # 8080 unsubscribed: its flow ends at once
        cap.wait_for(lambda evs: StreamClosed(flow, True, True) in evs, timeout=0.5)
        count = len(cap.events)
        conn.request("GET", "/unsubscribed")
        assert conn.getresponse().read() == b"staging-service"
        conn.close()
        time.sleep(0.2)
        assert cap.events[count:] == []

        # A connection still open when the sniffer stops is reported as ended.
        def open_one() -> tuple[socket.socket, Flow]:
            sock = socket.create_connection(("127.0.0.1", lab.loopback_port))
            sock.sendall(b"GET /open HTTP/1.1\r\n\r\n")
            src, sport = sock.getsockname()
            return sock, Flow(src, sport, "127.0.0.1", lab.loopback_port)

        sock, open_flow = lab.call_in(lab.staging_ns, open_one)
        cap.wait_for(lambda evs: StreamOpened(open_flow) in evs)
        cap.close()
        sock.close()
        assert cap.events[-1] == StreamClosed(open_flow, reset=True, expired=True)


def _ipv6_echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.bind(("::1", 0))
    srv.listen()
    return srv, srv.getsockname()[1]


def test_ipv6_connections_are_mirrored(lab: Lab) -> None:
    try:
        srv, port = lab.call_in(lab.staging_ns, _ipv6_echo_server)
    except OSError as exc:
        pytest.fail(f"no IPv6 loopback in the lab: {exc}")
    payload = b"".join(b"%06d," % i for i in range(20000))  # 140 kB: many segments

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while conn.recv(65536):
                pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    with Capture(lab, [port]) as cap:

        def client() -> Flow:
            with socket.create_connection(("::1", port)) as sock:
                sock.sendall(payload)
                src, sport = sock.getsockname()[:2]
                return Flow(src, sport, "::1", port)

        flow = lab.call_in(lab.staging_ns, client)
        cap.wait_for(cap.closed([flow]))
        assert cap.streams()[flow] == payload
        assert StreamClosed(flow, reset=False) in cap.events
    server.join(5)
    srv.close()


def _pipelined_requests(
    host: str, port: int, *, connections: int, rate: int, seconds: float
) -> list[tuple[Flow, bytes]]:
    """``bench/incoming.py mirror-rate``'s load: small pipelined ``GET``s on keep-alive
    connections, paced to ``rate``/s in all, the answers drained by a thread per
    connection; then EOF. Returns each connection's flow and the bytes it sent."""
    socks = [socket.create_connection((host, port), timeout=10) for _ in range(connections)]
    flows = [Flow(*s.getsockname()[:2], *s.getpeername()[:2]) for s in socks]
    sent = [bytearray() for _ in socks]

    def drain(sock: socket.socket) -> None:
        try:
            while sock.recv(1 << 16):
                pass
        except OSError:
            pass

    drains = [threading.Thread(target=drain, args=(s,), daemon=True) for s in socks]
    for t in drains:
        t.start()
    started = time.perf_counter()
    for i in range(int(rate * seconds)):
        c = i % connections
        request = b"GET /r%d HTTP/1.1\r\nHost: s\r\n\r\n" % i
        socks[c].sendall(request)
        sent[c] += request
        ahead = started + (i + 1) / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    for s in socks:
        s.shutdown(socket.SHUT_WR)
    for t in drains:
        t.join(10)
    for s in socks:
        s.close()
    return [(flow, bytes(data)) for flow, data in zip(flows, sent, strict=True)]


def _upload(host: str, port: int, body: bytes) -> tuple[Flow, bytes]:
    """One big POST (the sender's TSO/GSO makes super-packets of it on the veth)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        flow = Flow(*sock.getsockname()[:2], *sock.getpeername()[:2])
        data = b"POST /upload HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1 << 16):
            pass
    return flow, data


@pytest.mark.parametrize("use_libpcap", [True, False], ids=["libpcap", "builtin"])
def test_pipelined_load_is_captured_whole_and_every_stream_ends_cleanly(
    lab: Lab, use_libpcap: bool
) -> None:
    """The load under which mirror mode was reported to lose requests (it was the
    benchmark's counting): every byte of every connection, then a clean end."""
    host, port = lab.staging_addr, lab.service_port
    with Capture(lab, [port], use_libpcap=use_libpcap) as cap:
        uploads: list[tuple[Flow, bytes]] = []
        body = bytes(range(256)) * 4096  # 1 MiB
        uploaders = [
            threading.Thread(target=lambda: uploads.append(_upload(host, port, body)))
            for _ in range(2)
        ]
        for t in uploaders:
            t.start()
        sent = _pipelined_requests(host, port, connections=8, rate=2000, seconds=1.5)
        for t in uploaders:
            t.join(30)
        sent += uploads
        assert len(sent) == 10
        flows = [flow for flow, _ in sent]
        cap.wait_for(cap.closed(flows), timeout=10)
        streams = cap.streams()
        for flow, data in sent:
            got = streams.get(flow, b"")
            assert len(got) == len(data) and got == data, (flow, len(got), len(data))
            mine = [e for e in cap.events if e.flow == flow]
            assert mine[0] == StreamOpened(flow)
            assert mine[-1] == StreamClosed(flow, reset=False, expired=False)
            assert sum(isinstance(e, (StreamOpened, StreamClosed)) for e in mine) == 2
        stats = cap.sniffer.stats()
        assert stats["kernel_drops"] == 0 and stats["unparsed"] == 0
        assert stats["flows"] == 0 and stats["evicted"] == 0
