"""Benchmarks of the library face (as root: builds the lab).

    python3 bench/session.py get [--requests 1000 --rounds 3]
    python3 bench/session.py mirror [--rate 1000 --seconds 3]

get: keep-alive GETs to the staging backend with `Session.get` (httpx over a connection
the target made) against the same httpx client run directly inside staging, in the same
lab, alternating; prints the ratio of the mean latencies (and of a new connection each).
mirror: HTTP requests at a fixed rate to the target's service while `Session.mirror()`
reads them as parsed requests; every request must arrive (none dropped) and the reader
must keep the rate.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time

import httpx

import mirrord
from mirrord.lab import Lab, create_lab

CLIENT = """
import json, sys, time, httpx
url, count, fresh = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fresh"
# fresh: no connection is kept, so each request opens one
with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0 if fresh else 20)) as client:
    client.get(url)  # the first connection is not what we measure
    start = time.perf_counter()
    for _ in range(count):
        client.get(url)
    print(json.dumps({"mean_ms": (time.perf_counter() - start) / count * 1000}))
"""


def direct(lab: Lab, url: str, count: int, fresh: bool) -> float:
    proc = lab.run_in(
        lab.staging_ns,
        [sys.executable, "-c", CLIENT, url, str(count), "fresh" if fresh else "kept"],
        timeout=600,
    )
    if proc.returncode:
        raise SystemExit(f"direct client failed: {proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["mean_ms"])


def through_session(session: mirrord.Session, url: str, count: int, fresh: bool) -> float:
    limits = httpx.Limits(max_keepalive_connections=0 if fresh else 20)
    with session.http_client(limits=limits) as client:
        client.get(url)
        start = time.perf_counter()
        for _ in range(count):
            client.get(url)
    return (time.perf_counter() - start) / count * 1000


def bench_get(args: argparse.Namespace) -> None:
    with create_lab() as lab, mirrord.Session(f"netns/{lab.staging_ns}") as session:
        url = f"http://{lab.backend_addr}:8080/bench"
        for fresh in (False, True):
            ratios = []
            for _ in range(args.rounds):
                base = direct(lab, url, args.requests, fresh)
                ours = through_session(session, url, args.requests, fresh)
                ratios.append(ours / base)
                print(
                    f"{'new connection' if fresh else 'keep-alive'}: direct {base:.3f} ms, "
                    f"Session.get {ours:.3f} ms ({ours / base:.2f}x)"
                )
            label = "new connection" if fresh else "keep-alive"
            print(f"{label}: median {statistics.median(ratios):.2f}x direct")


def bench_mirror(args: argparse.Namespace) -> None:
    total = int(args.rate * args.seconds)
    with (
        create_lab() as lab,
        mirrord.Session(f"netns/{lab.staging_ns}") as session,
        session.mirror(8080, timeout=5) as mirror,
    ):
        seen: list[float] = []

        def read() -> None:
            for _ in mirror.http():
                seen.append(time.perf_counter())
                if len(seen) == total:
                    return

        reader = threading.Thread(target=read)
        reader.start()
        # a user of staging sending pipelined requests at a steady rate, in 10 ms batches
        user = socket.create_connection((lab.staging_addr, 8080))
        drain = threading.Thread(target=lambda: all(iter(lambda: user.recv(1 << 16), b"")))
        drain.start()
        start = time.perf_counter()
        batch = max(1, int(args.rate / 100))
        for first in range(0, total, batch):
            numbers = range(first, min(first + batch, total))
            user.sendall(b"".join(b"GET /n/%d HTTP/1.1\r\nHost: s\r\n\r\n" % i for i in numbers))
            lag = start + (first + batch) / args.rate - time.perf_counter()
            if lag > 0:
                time.sleep(lag)
        sent = time.perf_counter() - start
        reader.join(30)
        user.shutdown(socket.SHUT_WR)
        drain.join(30)
        user.close()
        got = len(seen)
        span = (seen[-1] - start) if seen else float("inf")
        print(
            f"sent {total} at {total / sent:.0f}/s; read {got} parsed requests "
            f"({got / span:.0f}/s), dropped {mirror.dropped}, lost {total - got - mirror.dropped}"
        )
        if got != total:
            raise SystemExit("some requests did not arrive")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["get", "mirror"])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    socket.setdefaulttimeout(30)
    (bench_get if args.what == "get" else bench_mirror)(args)


if __name__ == "__main__":
    main()
