"""Benchmark: the floor of any two-process Python relay on this machine, for comparison with
the relay path (bench/http_latency.py, bench/incoming.py steal-throughput).

    python3 bench/relay_floor.py [--rounds 3] [--relay python|socat]   (no root: loopback only)

Two bare relay processes (uvloop protocols, TCP -> unix socket -> TCP, the shape of app ->
intproxy -> agent -> service) with nothing of mirrord's: no framing, no multiplexing, no
flow control (`--relay socat`: the same two hops in C, the floor of a native data
plane). A keep-alive GET and a 100 MB upload go to a local server directly and
through them, alternating. What the relay path adds beyond these ratios is ours to cut;
what they show already is the price of two extra processes' wake-ups and copies.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from incoming import upload  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent

SERVER = r"""
import asyncio, socket, sys, uvloop
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
class Http(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf, self.total, self.sink = t, b"", 0, False
    def data_received(self, data):
        if self.sink or not (self.buf or data.startswith(b"GET ")):
            self.sink = True  # an upload (bench/incoming.py's): count it, answer the total
            self.total += len(data)
            return
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.t.write(RESPONSE)
    def eof_received(self):
        if self.sink:
            self.t.write(str(self.total).encode())
        self.t.close()
async def main():
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
uvloop.run(main())
"""

RELAY = r"""
import asyncio, socket, sys, uvloop
listen, target = sys.argv[1], sys.argv[2]
def address(text):
    return ("unix", text[5:]) if text.startswith("unix:") else ("tcp", ("127.0.0.1", int(text)))
class Side(asyncio.Protocol):
    def __init__(self, peer=None):
        self.peer, self.t, self.early = peer, None, []
    def connection_made(self, t):
        self.t = t
        sock = t.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def data_received(self, data):
        if self.peer is None or self.peer.t is None:
            self.early.append(data)
        else:
            self.peer.t.write(data)
    def eof_received(self):
        self.peer.t.write_eof()
        return True
    def connection_lost(self, exc):
        if self.peer is not None and self.peer.t is not None:
            self.peer.t.close()
class Inbound(Side):
    def connection_made(self, t):
        super().connection_made(t)
        asyncio.ensure_future(self.dial())
    async def dial(self):
        loop, out = asyncio.get_running_loop(), Side(self)
        kind, where = address(target)
        if kind == "unix":
            await loop.create_unix_connection(lambda: out, where)
        else:
            await loop.create_connection(lambda: out, *where)
        self.peer = out
        for data in self.early:
            out.t.write(data)
async def main():
    loop = asyncio.get_running_loop()
    kind, where = address(listen)
    if kind == "unix":
        server = await loop.create_unix_server(Inbound, where)
    else:
        server = await loop.create_server(Inbound, "127.0.0.1", 0)
    print(server.sockets[0].getsockname() if kind == "unix" else server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
uvloop.run(main())
"""


def start(code: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def start_socat(listen: str, target: str) -> tuple[subprocess.Popen[str], str]:
    """A socat relay hop (a forked C process per connection, 256 KiB buffers)."""
    if listen.startswith("unix:"):
        where, shown = f"UNIX-LISTEN:{listen[5:]},fork", listen[5:]
    else:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        shown = str(probe.getsockname()[1])
        probe.close()
        where = f"TCP-LISTEN:{shown},bind=127.0.0.1,fork,reuseaddr,nodelay"
    to = (
        f"UNIX-CONNECT:{target[5:]}"
        if target.startswith("unix:")
        else f"TCP:127.0.0.1:{target},nodelay"
    )
    proc = subprocess.Popen(["socat", "-b", "262144", where, to], text=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # listening once the address is there
        if listen.startswith("unix:") and os.path.exists(listen[5:]):
            break
        if not listen.startswith("unix:"):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", int(shown))) == 0:
                    break
        time.sleep(0.02)
    return proc, shown


def keepalive_ms(port: int, requests: int) -> float:
    out = subprocess.run(
        [sys.executable, str(HERE / "http_client.py"), "--host", "127.0.0.1", "--port", str(port)]
        + ["--requests", str(requests), "--connections", "1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["keepalive"]["median_ms"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--relay", choices=["python", "socat"], default="python")
    args = parser.parse_args()
    latency, rate = [], []
    total = args.megabytes << 20
    with tempfile.TemporaryDirectory() as tmp:
        unix = os.path.join(tmp, "hop.sock")
        server, port = start(SERVER)
        hop = start_socat if args.relay == "socat" else lambda *a: start(RELAY, *a)
        far, _ = hop(f"unix:{unix}", port)
        near, near_port = hop("0", f"unix:{unix}")
        try:
            for _ in range(args.rounds):
                direct = keepalive_ms(int(port), args.requests)
                relayed = keepalive_ms(int(near_port), args.requests)
                latency.append(relayed / direct)
                up_direct = args.megabytes / upload("127.0.0.1", int(port), total)
                up_relayed = args.megabytes / upload("127.0.0.1", int(near_port), total)
                rate.append(up_relayed / up_direct)
                print(
                    f"keep-alive GET direct {direct:.3f} ms, relayed {relayed:.3f} ms"
                    f" (+{relayed - direct:.3f} ms); upload direct {up_direct:.0f} MB/s,"
                    f" relayed {up_relayed:.0f} MB/s",
                    flush=True,
                )
        finally:
            for proc in (near, far, server):
                proc.kill()
                proc.wait()
    print(
        f"bare two-process relay ({args.relay}): keep-alive {statistics.median(latency):.2f}x direct,"
        f" upload {statistics.median(rate):.0%} of direct; median of {args.rounds} rounds"
    )


if __name__ == "__main__":
    main()
