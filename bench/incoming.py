"""Benchmarks of incoming traffic (as root: builds the lab).

    python3 bench/incoming.py steal-throughput [--mb 100]
    python3 bench/incoming.py mirror-rate [--rate 10000 --seconds 3 --connections 8]

steal-throughput: a 100 MB upload to the target's port, stolen to a local app, in the
same run as two direct uploads by the same client: to the same sink served by the target
itself (the route the stolen upload takes into the lab, without mirrord: the baseline of
issue 8's target, relayed >= 50%), and straight to the local app over loopback (no lab
on the way: an upper bound no stolen upload can reach, printed for comparison).
mirror-rate: small pipelined HTTP requests at a fixed rate to the target's service while
a local app mirrors them; every request must reach the app (issue 8: 10,000/s, none
lost). The app reports each connection once, at its EOF: the requests in its raw bytes,
their length and hash, and how it ended; the run fails unless every connection arrived
exactly, with a clean EOF.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from mirrord.lab import Lab, create_lab

REPO = Path(__file__).resolve().parents[1]

SINK_APP = """
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
srv.listen()
print("ready", srv.getsockname()[1], flush=True)
def serve(conn):
    total = 0
    with conn:
        while chunk := conn.recv(1 << 20):
            total += len(chunk)
        conn.sendall(str(total).encode())
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# The mirroring app: per connection, every byte until EOF, then one JSON line. It counts
# the requests in the raw bytes (no HTTP server: mirror mode drops its answers anyway)
# and writes each report in one call under a lock, so that reports of concurrent
# connections cannot interleave (print() writes the text and the newline separately).
COUNT_APP = r"""
import hashlib, json, re, socket, sys, threading
REQUEST = re.compile(rb"GET /r(\d+) HTTP/1\.1\r\n")
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8080))
srv.listen(64)
print("ready", flush=True)
out = threading.Lock()
def serve(conn):
    chunks, end = [], "eof"
    with conn:
        peer = conn.getpeername()[:2]
        answered, seen = 0, b""
        try:
            while chunk := conn.recv(1 << 16):
                chunks.append(chunk)
                # answer each whole request, as an HTTP server would
                seen = seen[-3:] + chunk
                complete = seen.count(b"\r\n\r\n")
                if complete:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * complete)
                    answered += complete
                seen = seen[seen.rfind(b"\r\n\r\n") + 4:] if complete else seen
        except OSError as exc:
            end = type(exc).__name__
    data = b"".join(chunks)
    report = {
        "peer": list(peer), "end": end, "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "ids": [int(i) for i in REQUEST.findall(data)],
    }
    with out:
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def start_app(
    lab: Lab, code: str, *flags: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    script = _script("app", code)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirrord", "-t", f"netns/{lab.staging_ns}", *flags, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    _ready(proc, "the local app")
    return proc


def start_target_sink(lab: Lab) -> int:
    """The sink served by the target itself, on a port nothing steals: its port."""
    script = _script("target-sink", SINK_APP)
    proc = lab.popen_in(
        lab.staging_ns, [sys.executable, str(script), "0"], stdout=subprocess.PIPE, text=True
    )
    return int(_ready(proc, "the target's own sink")[1])


def _script(name: str, code: str) -> Path:
    script = Path(f"/tmp/mirrord-bench-{name}.py")
    script.write_text(textwrap.dedent(code))
    return script


def _ready(proc: subprocess.Popen[str], what: str) -> list[str]:
    """The words of the line a started app prints when it listens ("ready ...")."""
    assert proc.stdout is not None
    words = proc.stdout.readline().split()
    if words[:1] != ["ready"]:
        raise SystemExit(f"{what} did not start")
    return words


def upload(host: str, port: int, total: int) -> float:
    """Seconds to send `total` bytes and hear the receiver confirm them."""
    chunk = b"x" * (1 << 20)
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=60) as sock:
        sent = 0
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        confirmed = int(sock.recv(64))
    assert confirmed == total, (confirmed, total)
    return time.perf_counter() - started


def steal_throughput(mb: int, rounds: int) -> None:
    """Both transports of a local agent: the stolen socket handed over, and relayed bytes."""
    total = mb << 20
    config = Path("/tmp/mirrord-bench-steal.json")
    config.write_text(json.dumps({"feature": {"network": {"incoming": "steal"}}}))
    for name, env in (("fd-passing", {}), ("relay", {"MIRRORD_NO_FD_PASSING": "1"})):
        ratios, loopback_ratios = [], []
        with create_lab() as lab:
            target_port = start_target_sink(lab)
            app = start_app(lab, SINK_APP, "-f", str(config), env=env)
            try:
                for _ in range(rounds):
                    direct = upload(lab.staging_addr, target_port, total)
                    loopback = upload("127.0.0.1", 8080, total)
                    stolen = upload(lab.staging_addr, 8080, total)
                    ratios.append(direct / stolen)
                    loopback_ratios.append(loopback / stolen)
                    print(
                        f"{name:10} direct {mb / direct:7.1f} MB/s   loopback {mb / loopback:7.1f} MB/s"
                        f"   stolen {mb / stolen:7.1f} MB/s   -> {100 * direct / stolen:.0f}% of direct,"
                        f" {100 * loopback / stolen:.0f}% of loopback"
                    )
            finally:
                app.terminate()
                app.wait(10)
        print(
            f"steal throughput, {name}: median {100 * statistics.median(ratios):.0f}% of direct"
            f" (target >= 50%), {100 * statistics.median(loopback_ratios):.0f}% of loopback"
        )


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass


def mirror_rate(rate: int, seconds: float, connections: int = 8) -> bool:
    """Pipelined ``GET /rN`` requests over `connections` keep-alive connections to the
    staging service, paced to `rate`/s in total, then EOF. The mirroring app reports each
    connection once it ended; a connection counts as delivered when the app got exactly
    the bytes sent on it and then a clean EOF. True if nothing was lost."""
    with create_lab() as lab:
        app = start_app(lab, COUNT_APP)
        assert app.stdout is not None
        reports: dict[tuple[str, int], dict[str, Any]] = {}
        heard = threading.Condition()

        def read_reports() -> None:
            assert app.stdout is not None
            for line in app.stdout:
                if line.startswith("{"):
                    report = json.loads(line)
                    with heard:
                        reports[tuple(report["peer"])] = report
                        heard.notify_all()

        threading.Thread(target=read_reports, daemon=True).start()
        try:
            count = int(rate * seconds)
            conns = [socket.create_connection((lab.staging_addr, 8080)) for _ in range(connections)]
            peers = [sock.getsockname()[:2] for sock in conns]
            sent = [bytearray() for _ in conns]
            ids: list[list[int]] = [[] for _ in conns]
            # drain the staging service's answers, or it stops reading our requests
            drains = [threading.Thread(target=_drain, args=(s,), daemon=True) for s in conns]
            for t in drains:
                t.start()
            started = time.perf_counter()
            for i in range(count):
                c = i % len(conns)
                request = f"GET /r{i} HTTP/1.1\r\nHost: s\r\n\r\n".encode()
                conns[c].sendall(request)
                sent[c] += request
                ids[c].append(i)
                # pace the sender to the rate asked
                ahead = started + (i + 1) / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            elapsed = time.perf_counter() - started
            for sock in conns:
                sock.shutdown(socket.SHUT_WR)
            done = time.perf_counter()
            for t in drains:
                t.join(10)  # the service answered everything and closed
            for sock in conns:
                sock.close()
            # every mirrored connection ends with the client's FIN: wait for all reports
            with heard:
                heard.wait_for(lambda: len(reports) >= len(conns), timeout=30)
                got_reports = dict(reports)
            waited = time.perf_counter() - done
        finally:
            app.terminate()
            app.wait(10)

    total_got = total_dup = 0
    clean = True
    for c, peer in enumerate(peers):
        report = got_reports.get((peer[0], peer[1]))
        if report is None:
            clean = False
            print(f"  connection {c} ({peer[0]}:{peer[1]}): no report from the app")
            continue
        mine = set(ids[c])
        got = [i for i in report["ids"] if i in mine]
        total_got += len(set(got))
        total_dup += len(got) - len(set(got))
        exact = (
            report["bytes"] == len(sent[c])
            and report["sha256"] == hashlib.sha256(sent[c]).hexdigest()
        )
        clean = clean and exact and report["end"] == "eof"
        print(
            f"  connection {c}: sent {len(ids[c])} requests ({len(sent[c])} bytes), the app got"
            f" {len(set(got))} ({report['bytes']} bytes, {'exact' if exact else 'NOT exact'}),"
            f" end: {report['end']}"
        )
    lost = count - total_got
    print(
        f"mirror: sent {count} requests at {count / elapsed:.0f}/s on {len(conns)} connections,"
        f" the local app got {total_got}, lost {lost}, duplicated {total_dup};"
        f" {'every connection exact with a clean EOF' if clean else 'NOT every connection exact and clean'}"
        f" (the last report came {waited:.2f} s after the EOFs)"
    )
    return lost == 0 and total_dup == 0 and clean


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["steal-throughput", "mirror-rate"])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    if args.what == "steal-throughput":
        steal_throughput(args.mb, args.rounds)
    else:
        if not mirror_rate(args.rate, args.seconds, args.connections):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
