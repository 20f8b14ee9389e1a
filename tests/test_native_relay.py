"""The native relay on its own: its frame decoder and encoder against the Python codec,
its decisions against the Python layer's, a fuzz of the decoder under AddressSanitizer,
and real programs with the library preloaded facing a missing or misbehaving intproxy."""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_services import ASAN_OPTIONS, asan_runtime
from test_protocol import strategy_for

from mirrord.layer.context import Context
from mirrord.layer.dns import DnsPatches
from mirrord.layer.incoming import IncomingPatches
from mirrord.layer.sockets import SocketPatches
from mirrord.native.build import BuildError, build_check, build_library
from mirrord.native.table import relay_table
from mirrord.protocol import (
    Codec,
    Connect,
    Connected,
    ConnectedFd,
    ConnInfo,
    ConnInfoReply,
    Error,
    Hello,
    HelloOk,
    ListenerClosed,
    ListenerInfo,
    ListenerInfoReply,
    Message,
    RegisterListener,
    RequestFailed,
    Resolve,
    Resolved,
    Subscribe,
    Subscribed,
    origins,
)
from mirrord.protocol.codec import ProtocolError, decode_payload, encode
from mirrord.settings.contract import LayerSettings
from mirrord.settings.debugger import DebuggerPorts

REPLIES = [
    HelloOk,
    Error,
    Connected,
    ConnectedFd,
    RequestFailed,
    Resolved,
    Subscribed,
    ConnInfoReply,
]


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The check driver (decoder, encoder, rules), built with ASan and UBSan."""
    return build_check(tmp_path_factory.mktemp("check"))


def run_check(check: Path, *args: str, data: bytes) -> list[str]:
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1"}
    proc = subprocess.run(
        [str(check), *args], input=data, capture_output=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return proc.stdout.decode().split("\n")[:-1]


def frames(payloads: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in payloads)


# ------------------------------------------------------------------- the decoder


def esc(text: str) -> str:
    """A string as the check driver prints it (printable ASCII, the rest as \\xNN)."""
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in text.encode()
    )


def described(msg: Message) -> str:
    """What the check driver prints for a reply the relay understood."""
    req = getattr(msg, "req", -1)
    line = f"ok {msg.TAG} req={req}"
    if isinstance(msg, Connected | ConnectedFd | ConnInfoReply):
        fd = isinstance(msg, ConnectedFd) or (isinstance(msg, ConnInfoReply) and msg.has_fd)
        line += f" local={esc(msg.local_host)}:{msg.local_port} remote={esc(msg.remote_host)}:{msg.remote_port} fd={int(fd)}"
    if isinstance(msg, RequestFailed):
        line += f" kind={esc(msg.kind)} errno={msg.errno}"
    if isinstance(msg, Subscribed):
        line += f" port={msg.port}"
    if isinstance(msg, ListenerInfoReply):
        line += f" known={int(msg.known)} requested={msg.requested_port} remote={msg.remote_port} subscribed={int(msg.subscribed)}"
    if isinstance(msg, Resolved):
        line += "".join(
            f" {f}/{t}/{p}/{esc(c)}/{esc(a)}/{port}" for f, t, p, c, a, port in msg.addrs
        )
    return line


def test_replies_decode_as_the_python_codec_builds_them(check: Path) -> None:
    msgs: list[Message] = [
        HelloOk(version=1),
        Connected(
            req=7,
            conn=3,
            local_host="127.0.0.1",
            local_port=40000,
            remote_host="198.18.1.2",
            remote_port=8080,
        ),
        ConnectedFd(
            req=8, local_host="198.18.3.1", local_port=5, remote_host="::1", remote_port=80
        ),
        RequestFailed(req=9, kind="os", errno=111, message="refused"),
        RequestFailed(req=10, kind="gai", errno=-2, message="Name or service not known"),
        Resolved(
            req=11, addrs=[(2, 1, 6, "canon.svc", "198.18.1.2", 80), (10, 1, 6, "", "::1", 80)]
        ),
        Subscribed(req=12, port=8080),
        ConnInfoReply(
            req=13,
            remote_host="198.18.0.1",
            remote_port=5555,
            local_host="198.18.0.2",
            local_port=80,
            has_fd=True,
        ),
    ]
    lines = run_check(check, "frames", data=frames([encode(m)[4:] for m in msgs]))
    assert lines == [described(m) for m in msgs]
    error = run_check(check, "frames", data=frames([encode(Error(code="auth", message="no"))[4:]]))
    assert error == ["ok error req=-1"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_reply_the_codec_sends_is_understood(check: Path, data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(REPLIES))
    hints = typing.get_type_hints(cls)
    values = {f.name: data.draw(strategy_for(hints[f.name])) for f in dataclasses.fields(cls)}
    msg = cls(**values)
    (line,) = run_check(check, "frames", data=frames([encode(msg)[4:]]))
    # the relay refuses what it cannot hold (a port past 65535, a host too long for an
    # address...), and understands everything else exactly as sent
    assert line == described(msg) or line.startswith("err "), line


def _mutations(rng: random.Random, seeds: list[bytes], count: int) -> Iterator[bytes]:
    for _ in range(count):
        base = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            if op == 0 and base:  # flip bits
                base[rng.randrange(len(base))] ^= 1 << rng.randrange(8)
            elif op == 1 and base:  # truncate
                del base[rng.randrange(len(base)) :]
            elif op == 2:  # insert random bytes
                at = rng.randrange(len(base) + 1)
                base[at:at] = rng.randbytes(rng.randint(1, 8))
            elif op == 3 and base:  # a byte of msgpack's interesting values
                base[rng.randrange(len(base))] = rng.choice(
                    [0xC0, 0xC1, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xCF, 0xD3, 0xFF, 0x00]
                )
            else:  # splice two seeds
                other = rng.choice(seeds)
                base = base[: rng.randrange(len(base) + 1)] + other[rng.randrange(len(other) + 1) :]
        yield bytes(base)


def test_fuzz_the_decoder_under_asan(check: Path) -> None:
    """A fixed budget of mutated frames (seeded by MIRRORD_FUZZ_SEED, printed on failure):
    the decoder never crashes or reads out of bounds, and whatever the Python codec
    accepts, the relay decodes the same way."""
    seed = int(os.environ.get("MIRRORD_FUZZ_SEED", random.randrange(2**32)))
    budget = int(os.environ.get("MIRRORD_FUZZ_BUDGET", "40000"))
    rng = random.Random(seed)
    seeds = [
        encode(m)[4:]
        for m in [
            Connected(
                req=1,
                conn=2,
                local_host="127.0.0.1",
                local_port=1,
                remote_host="1.2.3.4",
                remote_port=2,
            ),
            Resolved(req=3, addrs=[(2, 1, 6, "n", "1.2.3.4", 80)] * 3),
            ConnInfoReply(
                req=4, remote_host="a", remote_port=1, local_host="b", local_port=2, has_fd=False
            ),
            RequestFailed(req=5, kind="gai", errno=-2, message="x" * 300),
            HelloOk(version=1),
        ]
    ] + [
        msgpack.packb({"t": "resolved", "req": 1, "addrs": [[1] * 6] * 40}),
        msgpack.packb([[[[[[1]]]]]] * 9),
    ]
    inputs = list(_mutations(rng, seeds, budget)) + [
        rng.randbytes(rng.randint(0, 64)) for _ in range(2000)
    ]
    lines = run_check(check, "frames", data=frames(inputs))
    assert len(lines) == len(inputs), f"seed {seed}"
    for payload, line in zip(inputs, lines, strict=True):
        try:
            msg = decode_payload(payload)
        except ProtocolError:
            continue
        if type(msg) in REPLIES:
            assert line in (described(msg),) or line.startswith("err "), (seed, payload, line)


# ------------------------------------------------------------------- the encoder


def test_requests_are_what_the_python_codec_decodes(check: Path) -> None:
    lines = [
        "hello tok3n relay",
        "connect 7 tcp 198.18.1.2 8080 1 1",
        "connect 8 udp ::ffff:198.18.1.2 53 0 0",
        "resolve 9 backend.svc 8080 0 1 0 0",
        "resolve 10 backend.svc http 10 2 17 32",
        "resolve 11 backend.svc - 2 1 0 2",
        'subscribe 12 80 steal 127.0.0.1 41000 1 777 {"header_filter":"x:y"}',
        "subscribe 13 81 mirror ::1 41001 1 778",
        "conn_info 14 41000 52000",
        "register 15 777 8080 80",
        "listener_info 16 777",
        "listener_closed 777",
    ]
    out = run_check(check, "encode", data=("\n".join(lines) + "\n").encode())
    decoded = [decode_payload(bytes.fromhex(h)[4:]) for h in out]
    assert all(struct.unpack(">I", bytes.fromhex(h)[:4])[0] == len(h) // 2 - 4 for h in out)
    assert decoded == [
        Hello(version=1, token="tok3n", client="relay"),
        Connect(req=7, proto="tcp", host="198.18.1.2", port=8080, want_fd=True, nonblocking=True),
        Connect(
            req=8, proto="udp", host="::ffff:198.18.1.2", port=53, want_fd=False, nonblocking=False
        ),
        Resolve(req=9, host="backend.svc", port=8080, family=0, type=1, proto=0, flags=0),
        Resolve(req=10, host="backend.svc", port="http", family=10, type=2, proto=17, flags=32),
        Resolve(req=11, host="backend.svc", port=None, family=2, type=1, proto=0, flags=2),
        Subscribe(
            req=12,
            port=80,
            mode="steal",
            http_filter='{"header_filter":"x:y"}',
            local_host="127.0.0.1",
            local_port=41000,
            want_fd=True,
            listener=777,
        ),
        Subscribe(
            req=13,
            port=81,
            mode="mirror",
            http_filter="",
            local_host="::1",
            local_port=41001,
            want_fd=True,
            listener=778,
        ),
        ConnInfo(req=14, listen_port=41000, peer_port=52000),
        RegisterListener(req=15, listener=777, requested_port=8080, remote_port=80),
        ListenerInfo(req=16, listener=777),
        ListenerClosed(listener=777),
    ]


# ------------------------------------------------------------------- decisions

ADDRESSES = ["127.0.0.1", "127.5.5.5", "0.0.0.0", "::1", "::", "198.18.1.2", "198.18.1.9", "10.1.2.3",
             "::ffff:198.18.1.2", "::ffff:127.0.0.1", "2001:db8::1", "2001:db8::ffff", "1.1.1.1"]  # fmt: skip
NAMES = [
    "backend.staging.svc",
    "db.staging.svc",
    "DB.Staging.Svc.",
    "localhost",
    "other.svc",
    "x.local",
]
PORTS = [0, 53, 80, 5432, 8080]


def _entry(proto: str, host: str, port: int) -> str:
    if ":" in host:
        address, slash, prefix = host.partition("/")
        host = f"[{address}]{slash}{prefix}"
    return f"{proto}{host}{f':{port}' if port else ''}"


ENTRIES = st.builds(
    _entry,
    st.sampled_from(["", "tcp://", "udp://"]),
    st.sampled_from(["", "198.18.1.2", "198.18.0.0/15", "10.0.0.0/8", "127.0.0.1", "0.0.0.0",
                     "2001:db8::/32", "::1", "backend.staging.svc", "DB.staging.svc", "x.local"]),
    st.sampled_from(PORTS),
).filter(lambda e: e != "")  # fmt: skip
FILTERS = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "mode": st.sampled_from(["local", "remote"]),
            "entries": st.lists(ENTRIES, min_size=1, max_size=5),
        }
    ),
)
DNS_FILTERS = st.one_of(
    st.none(),
    st.fixed_dictionaries({
        "mode": st.sampled_from(["local", "remote"]),
        "entries": st.lists(st.sampled_from(["backend.staging.svc", "db.staging.svc:5432", ":53", "x.local", "1.2.3.4"]), max_size=3),
    }),
)  # fmt: skip
LAYER_SETTINGS = st.fixed_dictionaries(
    {
        "outgoing": st.fixed_dictionaries({"tcp": st.booleans(), "udp": st.booleans(), "ignore_localhost": st.booleans(), "filter": FILTERS}),
        "dns": st.fixed_dictionaries({"enabled": st.booleans(), "filter": DNS_FILTERS}),
        "incoming": st.fixed_dictionaries({
            "mode": st.sampled_from(["mirror", "steal", "off"]),
            "http_filter": st.one_of(st.none(), st.just({"header_filter": "x-user: me"})),
            "port_mapping": st.lists(st.tuples(st.sampled_from(PORTS[1:]), st.integers(1, 65535)).map(list), max_size=2),
            "listen_ports": st.lists(st.tuples(st.sampled_from(PORTS[1:]), st.integers(1, 65535)).map(list), max_size=2),
            "ignore_ports": st.lists(st.sampled_from(PORTS), max_size=2),
            "ports": st.one_of(st.none(), st.lists(st.sampled_from(PORTS), max_size=3)),
            "ignore_localhost": st.booleans(),
        }),
    }
)  # fmt: skip


def python_decisions(layer: dict[str, Any], debugger: str, queries: list[tuple]) -> list[str]:
    """What the Python layer decides, through its own patch families' logic."""
    ports = DebuggerPorts.parse(debugger)
    ctx = Context(LayerSettings.from_dict(layer), client=None, debugger=ports)  # type: ignore[arg-type]
    dns = DnsPatches(ctx)
    sockets, incoming = SocketPatches(ctx, dns), IncomingPatches(ctx)
    out = []
    for query in queries:
        if query[0] == "out":
            _, proto, ip, port, names = query
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
            ctx._names.clear()
            for name in names:
                ctx.remember_names(name, [ip])
            with socket.socket(family, kind) as s:
                out.append("remote" if sockets.route(s, (ip, port)) else "local")
        elif query[0] == "dns":
            out.append("remote" if dns.is_remote(query[1], query[2]) else "local")
        elif query[0] == "in":
            _, ip, port = query
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                settings_ = ctx.settings.incoming
                wanted = incoming.wanted(s, (ip, port)) and settings_.mode != "off"
                out.append(
                    f"wanted {settings_.port_mapping.get(port, port)} {settings_.listen_ports.get(port, port)}"
                    if wanted else "no"
                )  # fmt: skip
    return out


QUERIES = st.lists(
    st.one_of(
        st.tuples(st.just("out"), st.sampled_from(["tcp", "udp"]), st.sampled_from(ADDRESSES), st.sampled_from(PORTS), st.lists(st.sampled_from(NAMES), max_size=2, unique=True)),
        st.tuples(st.just("dns"), st.sampled_from(NAMES + ["198.18.1.2", "::1"]), st.sampled_from(PORTS)),
        st.tuples(st.just("in"), st.sampled_from(ADDRESSES), st.sampled_from(PORTS)),
    ),
    min_size=1, max_size=25,
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layer=LAYER_SETTINGS, debugger=st.sampled_from(["", "5432", "53,8000-8080"]), queries=QUERIES
)
def test_relay_decides_as_the_python_layer(
    check: Path,
    tmp_path_factory: pytest.TempPathFactory,
    layer: dict[str, Any],
    debugger: str,
    queries: list[tuple],
) -> None:
    table = tmp_path_factory.mktemp("t") / "table"
    table.write_text(relay_table(LayerSettings.from_dict(layer), (), DebuggerPorts.parse(debugger)))
    lines = []
    for q in queries:
        if q[0] == "out":
            lines.append(f"out {q[1]} {q[2]} {q[3]} {','.join(q[4])}".rstrip())
        else:
            lines.append(" ".join(map(str, q)))
    got = run_check(check, "rules", str(table), data=("\n".join(lines) + "\n").encode())
    assert got[0] == "ready"
    assert got[1:] == python_decisions(layer, debugger, queries)


ORIGIN = st.builds(
    origins.Origin,
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    st.integers(0, 65535),
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    st.integers(0, 65535),
    st.booleans(),
)
SLOT = st.tuples(st.booleans(), st.integers(0, 65535), st.integers(0, 65535))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(written=st.lists(st.tuples(SLOT, ORIGIN), max_size=8), asked=st.lists(SLOT, max_size=8))
def test_the_relay_reads_the_origin_table_as_the_intproxy_writes_it(
    check: Path,
    tmp_path_factory: pytest.TempPathFactory,
    written: list[tuple[tuple[bool, int, int], origins.Origin]],
    asked: list[tuple[bool, int, int]],
) -> None:
    table = bytearray(origins.TABLE_SIZE)
    for (ipv6, port, app_port), origin in written:
        origins.write_origin(table, ipv6, port, app_port, origin)
    path = tmp_path_factory.mktemp("origins") / "proxy.sock.origins"
    path.write_bytes(table)
    queries = [slot for slot, _ in written] + asked
    lines = "".join(f"{int(ipv6)} {port} {app_port}\n" for ipv6, port, app_port in queries)
    expected = []
    for ipv6, port, app_port in queries:
        found = origins.read_origin(table, ipv6, port, app_port)
        expected.append(
            "none"
            if found is None
            else f"{found.remote_host} {found.remote_port} {found.local_host}"
            f" {found.local_port} {int(found.ask)}"
        )
    assert run_check(check, "origins", str(path), data=lines.encode()) == expected


def test_skip_matches_the_executable_or_argv0(check: Path, tmp_path: Path) -> None:
    table = tmp_path / "table"
    table.write_text(relay_table(LayerSettings.from_dict({}), ["wget", "node"]))
    got = run_check(check, "rules", str(table), data=b"skip wget x\nskip x node\nskip curl curl\n")
    assert got == ["ready", "yes", "yes", "no"]


def test_a_broken_table_is_refused_with_its_line(check: Path, tmp_path: Path) -> None:
    table = tmp_path / "table"
    table.write_text("mirrord-relay-rules 1\nmatch tcp ip not-an-ip 80\n")
    assert run_check(check, "rules", str(table), data=b"") == [
        "error bad rules line: match tcp ip not-an-ip 80"
    ]


# ------------------------------------------------------------------- in a real process


class FakeIntproxy:
    """The intproxy's side of the layer protocol on a unix socket, with the real codec:
    every connect is sent to `relay_port`, every name resolves to 127.0.0.1. `mode`
    "garbage" answers requests with bytes that are no frame; "hang-up" closes instead."""

    def __init__(self, path: Path, relay_port: int, mode: str = "ok") -> None:
        self.path, self.relay_port, self.mode = path, relay_port, mode
        self.requests: list[Message] = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(64)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        codec = Codec()
        with conn:
            while data := conn.recv(65536):
                codec.feed(data)
                for msg in codec:
                    self.requests.append(msg)
                    reply = self._answer(msg)
                    if reply is None:
                        return
                    conn.sendall(reply)

    def _answer(self, msg: Message) -> bytes | None:
        if isinstance(msg, Hello):
            return encode(HelloOk(version=1))
        if self.mode == "hang-up":
            return None
        if self.mode == "garbage":
            return struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1"
        if self.mode == "agent-gone":  # what the intproxy answers once its agent link ended
            return encode(RequestFailed(req=getattr(msg, "req", 0), kind="os", errno=errno.ECONNABORTED,
                                        message=f"mirrord: no connection to the agent ({AGENT_GONE})"))  # fmt: skip
        if isinstance(msg, Connect):
            return encode(Connected(req=msg.req, conn=1, local_host="127.0.0.1", local_port=self.relay_port,
                                    remote_host=msg.host, remote_port=msg.port))  # fmt: skip
        if isinstance(msg, Resolve):
            return encode(
                Resolved(req=msg.req, addrs=[(2, 1, 6, "", "127.0.0.1", int(msg.port or 0))])
            )
        return encode(RequestFailed(req=getattr(msg, "req", 0), kind="os", errno=95, message="no"))

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server on loopback; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def relay_env(
    build: dict[str, Path], socket_path: Path, which: str = "asan", **settings: Any
) -> dict[str, str]:
    preload = f"{asan_runtime()}:{build['asan']}" if which == "asan" else str(build["plain"])
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_") and k != "PYTHONPATH"
    }
    return {
        **env,
        "LD_PRELOAD": preload,
        "ASAN_OPTIONS": ASAN_OPTIONS,
        "MIRRORD_INTPROXY_SOCKET": str(socket_path),
        "MIRRORD_PROXY_TOKEN": "t",
        "MIRRORD_RELAY_RULES": relay_table(LayerSettings.from_dict(settings)),
    }


THREADS_AND_FORK = """
    import os, socket, sys, threading
    port = 8000
    def work(n):
        for i in range(25):
            (fam, typ, pro, canon, addr), = socket.getaddrinfo("svc.test", port, socket.AF_INET, socket.SOCK_STREAM)
            with socket.socket(fam, typ) as s:
                s.connect(addr)
                assert s.getpeername() == ("127.0.0.1", port), s.getpeername()
                s.sendall(b"ping %d %d" % (n, i))
                assert s.recv(100) == b"ping %d %d" % (n, i)
                dup = os.dup(s.fileno())
                with socket.socket(fileno=dup) as d:
                    assert d.getpeername() == ("127.0.0.1", port)
    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads: t.start()
    pid = os.fork()
    if pid == 0:
        work(99)
        os._exit(0)
    for t in threads: t.join()
    assert os.waitpid(pid, 0)[1] == 0
    print("done")
"""


def test_threads_and_fork_under_asan(
    relay_builds: dict[str, Path], tmp_path: Path, echo_server: int
) -> None:
    proxy = FakeIntproxy(tmp_path / "proxy.sock", echo_server)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(THREADS_AND_FORK)],
            env=relay_env(relay_builds, proxy.path), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        proxy.close()
    assert (proc.returncode, proc.stdout.strip()) == (0, "done"), proc.stderr[-3000:]
    connects = [m for m in proxy.requests if isinstance(m, Connect)]
    assert len(connects) == 17 * 25
    assert {(m.host, m.port, m.proto) for m in connects} == {("127.0.0.1", 8000, "tcp")}
    hellos = [m for m in proxy.requests if isinstance(m, Hello)]
    # links are reused: the child has its own after fork(), and a request in flight takes
    # one; only 4 idle ones are kept, so a burst of 17 threads opens a few again (seen: 22)
    assert 2 <= len(hellos) <= len(connects) // 4, len(hellos)


@pytest.mark.parametrize("mode", ["missing", "garbage", "hang-up"])
def test_a_broken_intproxy_fails_calls_with_one_line(
    relay_builds: dict[str, Path], tmp_path: Path, echo_server: int, mode: str
) -> None:
    proxy = FakeIntproxy(tmp_path / "proxy.sock", echo_server, mode) if mode != "missing" else None
    code = """
        import errno, socket
        out = []
        for _ in range(3):
            try:
                socket.getaddrinfo("svc.test", 80)
            except socket.gaierror as exc:
                out.append(exc.errno == socket.EAI_AGAIN)
            try:
                socket.create_connection(("198.18.250.1", 80), timeout=5)
            except OSError as exc:
                out.append(exc.errno == errno.ENETUNREACH)
        print(out)
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=relay_env(relay_builds, tmp_path / "proxy.sock"), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        if proxy:
            proxy.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str([True] * 6)
    (line,) = proc.stderr.splitlines()  # one line, however often calls fail
    reason = {
        "missing": f"cannot reach the intproxy ({tmp_path / 'proxy.sock'}: No such file or directory)",
        "garbage": "the intproxy broke the protocol: frame is not a map",
        "hang-up": "the intproxy closed the link",
    }[mode]
    assert line == f"mirrord: {reason}: intercepted calls fail"


AGENT_GONE = "the port-forward to pod staging/mirrord-agent-x port 4000 ended: EOF"


def test_a_lost_agent_fails_calls_with_errno_and_one_line_that_says_why(
    relay_builds: dict[str, Path], tmp_path: Path, echo_server: int
) -> None:
    proxy = FakeIntproxy(tmp_path / "proxy.sock", echo_server, "agent-gone")
    code = """
        import errno, socket
        for _ in range(3):
            try:
                socket.getaddrinfo("svc.test", 80)
            except socket.gaierror as exc:
                print("gai", exc.errno == socket.EAI_AGAIN)
            try:
                socket.create_connection(("198.18.250.1", 80), timeout=5)
            except OSError as exc:
                print("connect", exc.errno == errno.ECONNABORTED)
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=relay_env(relay_builds, proxy.path), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        proxy.close()
    assert proc.stdout.split() == ["gai", "True", "connect", "True"] * 3, proc.stderr[-3000:]
    # the app gets errno only: the reason is told once, however many calls fail
    assert proc.stderr.splitlines() == [f"mirrord: no connection to the agent ({AGENT_GONE})"]


def test_outside_a_session_the_relay_does_nothing(
    relay_builds: dict[str, Path], echo_server: int
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
    env.update(LD_PRELOAD=f"{asan_runtime()}:{relay_builds['asan']}", ASAN_OPTIONS=ASAN_OPTIONS)
    code = f"import socket; s = socket.create_connection(('127.0.0.1', {echo_server})); s.sendall(b'x'); print(s.recv(1).decode())"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "x\n", "")


def test_a_bad_table_switches_the_relay_off_with_one_line(
    relay_builds: dict[str, Path], tmp_path: Path, echo_server: int
) -> None:
    env = relay_env(relay_builds, tmp_path / "none.sock")
    env["MIRRORD_RELAY_RULES"] = "garbage"
    code = f"import socket; s = socket.create_connection(('127.0.0.1', {echo_server})); s.sendall(b'y'); print(s.recv(1).decode())"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert (proc.returncode, proc.stdout) == (0, "y\n")
    assert proc.stderr.splitlines() == [
        'mirrord: native relay off: not a rules table (it must start with "mirrord-relay-rules 1") in MIRRORD_RELAY_RULES'
    ]


def test_no_compiler_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(BuildError, match="cannot run .*no-such-cc"):
        build_library(tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "mirrord.native.build", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "CC": str(tmp_path / "no-such-cc")},
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("mirrord: native relay not built: cannot run ")
    assert len(proc.stderr.splitlines()) == 1


def test_the_wheel_carries_the_relay(tmp_path: Path) -> None:
    """Installed is not the checkout: the wheel has the library built, and its sources."""
    import zipfile

    from mirrord.native.build import HERE

    repo = HERE.parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(repo)],
        check=True, capture_output=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("*.whl")
    assert "linux_x86_64" in wheel.name  # a platform wheel: it holds machine code
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "mirrord/native/libmirrord_relay.so" in names
        assert "mirrord/native/src/rules.c" in names
        library = tmp_path / "lib.so"
        library.write_bytes(z.read("mirrord/native/libmirrord_relay.so"))
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    exported = {line.split()[-1] for line in symbols.splitlines()}
    assert {"connect", "getaddrinfo", "accept4", "execve", "mirrord_relay_state"} <= exported
    # only the hooks: the relay's own functions stay out of the app's namespace
    assert not {"rules_parse", "reply_decode", "chan_request"} & exported


CHILDREN = """
    import subprocess, sys
    child = "import socket; print(socket.getaddrinfo('svc.test', 80)[0][4][0])"
    huge = {f"VAR{i}": "x" * 20 for i in range(3000)}
    for env in ({}, huge):
        out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip().splitlines()[-1])
"""


def test_children_keep_the_session_with_a_cleared_or_huge_environment(
    relay_builds: dict[str, Path], tmp_path: Path, echo_server: int
) -> None:
    # svc.test exists only for the (fake) intproxy: a child without the relay cannot resolve it
    proxy = FakeIntproxy(tmp_path / "proxy.sock", echo_server)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(CHILDREN)],
            env=relay_env(relay_builds, proxy.path, which="plain"),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        proxy.close()
    assert proc.stdout.split() == ["127.0.0.1", "127.0.0.1"], proc.stderr[-2000:]
