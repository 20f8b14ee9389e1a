"""The native data plane of a link (wire/pump.py, native/src/pump.c) against peers that
misbehave, go away, or pass descriptors; the relaying itself is tests/test_mux.py's (each
of its tests runs on pumps too). Real sockets on loopback, no root."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_mux import tcp_pair
from test_native_relay import run_check
from test_protocol import ANY_MESSAGE, INTS, MSGPACK_VALUES, message_strategy

from mirrord.native.build import build_check
from mirrord.protocol import (
    Close,
    Codec,
    Credit,
    Data,
    Eof,
    Ping,
    ProtocolError,
    PumpAttach,
    PumpError,
    PumpReplay,
    PumpReset,
    PumpSync,
    PumpSynced,
)
from mirrord.protocol.codec import data_frame_header, decode_payload, encode
from mirrord.protocol.flow import INITIAL_WINDOW
from mirrord.protocol.messages import MAX_CHUNK
from mirrord.wire import pump
from mirrord.wire.link import Link
from mirrord.wire.mux import Mux

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def built() -> None:
    assert pump.available(), "the native pump is not built (python -m mirrord.native.build)"


def pump_threads() -> int:
    return sum(1 for t in os.listdir(f"/proc/{os.getpid()}/task")) - threading.active_count()


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


def frame(body: dict[str, Any]) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


@asynccontextmanager
async def pumped(sock: socket.socket) -> AsyncIterator[tuple[Link, Mux]]:
    """A started Link on `sock` with its pump, and its Mux; closed at the end."""
    async with anyio.create_task_group() as tg:
        link = Link(sock).with_pump()
        mux = Mux(link, tg)
        link.start()
        yield link, mux
        await link.aclose()
        tg.cancel_scope.cancel()


async def attached(mux: Mux, conn: int) -> socket.socket:
    """The app's end of a TCP connection whose other end `mux` runs as `conn`."""
    app, local = tcp_pair()
    await mux.attach_socket(conn, local)
    return app


async def test_a_peer_that_sends_a_local_message_ends_the_link() -> None:
    """pump_* messages pass between Python and its pump only; from a peer they would let
    it release frames out of order."""
    ours, peer = socket.socketpair()
    link = Link(ours).with_pump()
    assert link.pumped
    peer.sendall(encode(Ping(seq=1)) + encode(PumpSync(conn=3)) + encode(Ping(seq=2)))
    with anyio.fail_after(5):
        assert await link.receive() == Ping(seq=1)
        with pytest.raises(ProtocolError, match="only this process"):
            await link.receive()
    await link.aclose()
    peer.close()


async def test_a_peer_that_overruns_a_window_ends_the_link() -> None:
    ours, peer = socket.socketpair()
    async with anyio.create_task_group() as tg:
        link = Link(ours).with_pump()
        mux = Mux(link, tg)
        app, local = socket.socketpair()
        await mux.attach_socket(5, local)
        link.start()
        chunk = b"x" * MAX_CHUNK
        for _ in range(INITIAL_WINDOW // MAX_CHUNK + 1):  # one chunk beyond the window
            peer.sendall(encode(Data(conn=5, data=chunk)))
        with anyio.fail_after(5):
            while True:  # (the app reads nothing: the pump keeps what it cannot write)
                try:
                    msg = await link.receive()
                except ProtocolError as exc:
                    assert "overran its flow-control window" in str(exc)
                    break
                raise AssertionError(f"unexpected {msg}")
        await link.aclose()
        tg.cancel_scope.cancel()
    app.close()
    peer.close()


async def test_garbage_from_the_peer_is_named_by_the_decoder() -> None:
    ours, peer = socket.socketpair()
    link = Link(ours).with_pump()
    peer.sendall(frame({"t": "ping", "seq": 1}) + struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    with anyio.fail_after(5):
        assert await link.receive() == Ping(seq=1)
        with pytest.raises(ProtocolError, match="undecodable"):
            await link.receive()
    peer.sendall(struct.pack(">I", 1 << 30))  # over the frame limit: nothing more is read
    await link.aclose()
    peer.close()


async def test_closing_the_link_ends_its_pump_and_resets_what_it_ran() -> None:
    before = pump_threads()
    ours, peer = socket.socketpair()
    async with anyio.create_task_group() as tg:
        link = Link(ours).with_pump()
        mux = Mux(link, tg)
        link.start()
        app, local = socket.socketpair()
        await mux.attach_socket(9, local)
        await wait_until(lambda: pump_threads() == before + 1)
        await link.aclose()
        tg.cancel_scope.cancel()
    await wait_until(lambda: pump_threads() == before)
    peer.settimeout(5)
    assert peer.recv(1 << 20) == b""  # the link's socket is closed
    app.settimeout(5)
    assert app.recv(1) == b""  # the attached socket went with the pump (a unix pair: no RST)
    app.close()
    peer.close()


async def test_a_peer_that_goes_away_resets_the_connections_and_the_link_ends() -> None:
    ours, peer = socket.socketpair()
    async with pumped(ours) as (link, mux):
        app = await attached(mux, 4)
        peer.sendall(encode(Data(conn=4, data=b"half a reply")))
        app.settimeout(5)
        assert await anyio.to_thread.run_sync(app.recv, 64) == b"half a reply"
        peer.close()  # the agent is killed mid-connection
        with pytest.raises(ConnectionResetError):
            await anyio.to_thread.run_sync(app.recv, 64)  # a reset, not a clean end
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await link.receive()
    app.close()


async def test_without_the_library_links_stay_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pump, "_tried", True)
    monkeypatch.setattr(pump, "_lib", None)
    ours, peer = socket.socketpair()
    link = Link(ours)
    assert link.with_pump() is link and not link.pumped
    peer.sendall(encode(Ping(seq=1)))
    with anyio.fail_after(5):
        assert await link.receive() == Ping(seq=1)
    await link.aclose()
    peer.close()


# --------------------------------------------------------------------------- the frames
# (pump_frames.c behind the check driver, against the Python codec: a connection frame the
# pump misreads would be lost, as Python drops frames of connections it does not run)


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_check(tmp_path_factory.mktemp("check"))


def pump_reads(check: Path, payloads: list[bytes]) -> list[str]:
    data = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
    return run_check(check, "pump", data=data)


def expected_reading(payload: bytes) -> str:
    """What the pump must make of a frame: a connection frame or command as Python
    decodes it (with a conn the pump can hold), else "other" (passed along unread)."""
    try:
        msg = decode_payload(payload)
    except ProtocolError:
        msg = None
    fields = {"conn": 0, "reset": 0, "amount": 0, "fd": 0, "credit": 0, "len": 0}
    kind = "other"
    if isinstance(msg, PumpSync | PumpError):
        kind = "local"
    elif isinstance(msg, Data | Eof | Close | Credit | PumpAttach | PumpSynced | PumpReset):
        kind = {Data: "data", Eof: "eof", Close: "close", Credit: "credit",
                PumpAttach: "attach", PumpSynced: "synced", PumpReset: "reset"}[type(msg)]  # fmt: skip
        fields["conn"] = msg.conn
        if isinstance(msg, Data):
            fields["len"] = len(msg.data)
        if isinstance(msg, Close):
            fields["reset"] = int(msg.reset)
        if isinstance(msg, Credit):
            fields["amount"] = msg.amount
        if isinstance(msg, PumpAttach):
            fields["fd"], fields["credit"] = msg.fd, msg.credit
        if any(not 0 <= v < 2**63 for k, v in fields.items() if k != "len"):
            kind = "other"  # (no id, amount or descriptor of the pump is negative or huge)
    elif isinstance(msg, PumpReplay):
        kind, fields["len"] = "replay", len(msg.frame)
    if kind in ("other", "local"):
        return kind
    line = f"{kind} " + " ".join(f"{k}={v}" for k, v in fields.items())
    if kind == "data":
        line += " " + msg.data.hex()  # type: ignore[union-attr]
    if kind == "replay":
        line += " " + msg.frame.hex()  # type: ignore[union-attr]
    return line


CONN_FRAMES = st.one_of(
    [
        message_strategy(cls)
        for cls in (
            Data,
            Eof,
            Close,
            Credit,
            PumpAttach,
            PumpReplay,
            PumpSynced,
            PumpReset,
            PumpSync,
        )
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.one_of(CONN_FRAMES, ANY_MESSAGE), min_size=1, max_size=12))
# a pump message from a peer, with an id too big to hold:
@example(messages=[PumpSync(conn=2**63)])
def test_the_pump_reads_every_frame_as_the_python_codec_does(
    check: Path, messages: list[Any]
) -> None:
    payloads = []
    for msg in messages:
        try:
            payloads.append(encode(msg)[4:])
        except ProtocolError:
            continue  # (over the size limit: never sent)
        if isinstance(msg, Data) and 0 <= msg.conn < 2**63:  # the senders' fast-path shape
            payloads.append(data_frame_header(msg.conn, len(msg.data))[4:] + msg.data)
    assert pump_reads(check, payloads) == [expected_reading(p) for p in payloads]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payloads=st.lists(
        st.one_of(
            st.binary(max_size=64),
            MSGPACK_VALUES.map(lambda v: msgpack.packb(v, use_bin_type=True)),
            st.dictionaries(
                st.sampled_from(["t", "conn", "data", "reset", "amount", "fd", "credit", "x"]),
                st.one_of(
                    st.sampled_from(["data", "eof", "close", "credit", "pump_reset"]),
                    INTS,
                    st.booleans(),
                    st.binary(max_size=8),
                ),
                max_size=5,
            ).map(lambda v: msgpack.packb(v, use_bin_type=True)),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_garbage_is_read_as_python_reads_it(check: Path, payloads: list[bytes]) -> None:
    """The pump takes a frame as a connection's only where Python's decoder would."""
    assert pump_reads(check, payloads) == [expected_reading(p) for p in payloads]


def test_the_pumps_own_frames_decode_in_python(check: Path) -> None:
    lines = "data 5 3\ndata 1099511627776 70000\neof 7\nclose 9 1\nclose 3 0\ncredit 2 65536\n"
    lines += "sync 4\nerror the peer sent \u00e9 nonsense\n"
    out = run_check(check, "pump_encode", data=lines.encode())
    got = [decode_payload(bytes.fromhex(hexed)[4:]) for hexed in out]
    assert got == [
        Data(conn=5, data=b"xxx"),
        Data(conn=1 << 40, data=b"x" * 70000),
        Eof(conn=7),
        Close(conn=9, reset=True),
        Close(conn=3, reset=False),
        Credit(conn=2, amount=65536),
        PumpSync(conn=4),
        PumpError(message="the peer sent \u00e9 nonsense"),
    ]
    for hexed in out:  # each length prefix is its frame's
        raw = bytes.fromhex(hexed)
        assert struct.unpack(">I", raw[:4])[0] == len(raw) - 4


def thread_cpu_seconds(tid: str) -> float:
    stat = Path(f"/proc/{os.getpid()}/task/{tid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_hung_up_socket_waiting_for_credit_costs_no_cpu_and_loses_nothing() -> None:
    """A local socket whose peer has gone both ways while bytes of it wait for credit:
    the kernel reports it hung up at every wait; the pump stops listening until credit
    comes, then reads the rest (a busy pump would starve the app on 2 cores)."""
    ours, peer = socket.socketpair()
    tasks = set(os.listdir(f"/proc/{os.getpid()}/task"))
    async with anyio.create_task_group() as tg:
        link = Link(ours).with_pump()
        (tid,) = set(os.listdir(f"/proc/{os.getpid()}/task")) - tasks
        mux = Mux(link, tg)
        link.start()
        app, local = tcp_pair()
        await mux.attach_socket(3, local)
        payload = os.urandom(3 * INITIAL_WINDOW)
        app.sendall(payload[: 2 * INITIAL_WINDOW])  # more than its credit: the rest waits
        received = bytearray()
        codec = Codec()

        def read_until(predicate: Any) -> list[Any]:
            got = []
            peer.settimeout(10)
            while not predicate(got):
                codec.feed(peer.recv(1 << 20))
                while (msg := codec.next_message()) is not None:
                    got.append(msg)
                    if isinstance(msg, Data):
                        received.extend(msg.data)
            return got

        await anyio.to_thread.run_sync(read_until, lambda _: len(received) >= INITIAL_WINDOW)
        assert len(received) == INITIAL_WINDOW  # a window, no more
        peer.sendall(encode(Eof(conn=3)))  # the far side is done writing: ours is shut
        app.shutdown(socket.SHUT_WR)  # and the app's: the socket is hung up both ways
        await anyio.sleep(0.3)
        spent = thread_cpu_seconds(tid)
        await anyio.sleep(1)
        assert thread_cpu_seconds(tid) - spent < 0.2  # asleep, not spinning
        peer.sendall(encode(Credit(conn=3, amount=2 * INITIAL_WINDOW)))
        msgs = await anyio.to_thread.run_sync(
            read_until, lambda got: any(isinstance(m, (Eof, Close)) for m in got)
        )
        assert bytes(received) == payload[: 2 * INITIAL_WINDOW]
        assert isinstance(msgs[-1], (Eof, Close))
        await link.aclose()
        tg.cancel_scope.cancel()
    app.close()
    peer.close()


async def test_a_frame_cut_short_by_its_connections_reset_leaves_the_link_in_step() -> None:
    """A big Data frame arrives in two parts (the pump splices the second to the socket
    behind the first); its app resets between them. The rest of the frame is dropped, the
    peer hears the reset, and the frames behind it are read as frames: another connection's
    bytes arrive, exactly."""
    ours, peer = socket.socketpair()
    async with pumped(ours) as (link, mux):
        doomed, other = await attached(mux, 4), await attached(mux, 6)
        for app, conn in ((doomed, 4), (other, 6)):  # (both synced: the pump runs them)
            peer.sendall(encode(Data(conn=conn, data=b"ready")))
            app.settimeout(5)
            assert await anyio.to_thread.run_sync(app.recv, 64) == b"ready"
        payload = os.urandom(300_000)
        head = data_frame_header(4, len(payload))
        peer.sendall(head + payload[:100_000])
        got = bytearray()
        while len(got) < 100_000:
            got += await anyio.to_thread.run_sync(app_recv, doomed)
        assert bytes(got) == payload[:100_000]
        doomed.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        doomed.close()  # a reset
        codec = Codec()

        def until_reset() -> None:
            peer.settimeout(10)
            while True:
                codec.feed(peer.recv(1 << 20))
                while (msg := codec.next_message()) is not None:
                    if msg == Close(conn=4, reset=True):
                        return

        await anyio.to_thread.run_sync(until_reset)
        peer.sendall(payload[100_000:] + encode(Data(conn=6, data=b"next")) + encode(Ping(seq=9)))
        assert await anyio.to_thread.run_sync(app_recv, other) == b"next"
        more = os.urandom(300_000)  # (spliced too: nothing of the dropped rest is left over)
        peer.sendall(data_frame_header(6, len(more)) + more[:1000])
        await anyio.sleep(0.1)
        peer.sendall(more[1000:])
        got = bytearray()
        while len(got) < len(more):
            got += await anyio.to_thread.run_sync(app_recv, other)
        assert bytes(got) == more
        with anyio.fail_after(5):
            assert await link.receive() == Ping(seq=9)
    other.close()
    peer.close()


def app_recv(app: socket.socket) -> bytes:
    app.settimeout(5)
    return app.recv(1 << 20)


async def test_what_a_full_link_cannot_take_waits_in_order_behind_its_frames_head() -> None:
    """A bulk upload into a link whose peer reads late: the pump splices what the link
    takes and queues the rest; the peer reads every byte, in order, in whole frames."""
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    async with pumped(ours) as (link, mux):
        app = await attached(mux, 3)
        payload = os.urandom(8 * INITIAL_WINDOW)
        peer.sendall(encode(Credit(conn=3, amount=len(payload))))
        sender = threading.Thread(target=app.sendall, args=(payload,))
        sender.start()
        await anyio.sleep(0.5)  # the link is full, the app's socket too
        received = bytearray()
        codec = Codec()

        def read_all() -> None:
            peer.settimeout(10)
            while len(received) < len(payload):
                codec.feed(peer.recv(1 << 20))
                while (msg := codec.next_message()) is not None:
                    assert isinstance(msg, Data) and msg.conn == 3, msg
                    received.extend(msg.data)

        await anyio.to_thread.run_sync(read_all)
        sender.join(10)
        assert bytes(received) == payload
    app.close()
    peer.close()
