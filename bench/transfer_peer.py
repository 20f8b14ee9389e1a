"""Both ends of bench/kube_transfer.py's measurements.

    transfer_peer.py serve --host H --port P           a bulk server: "N\\n" -> N bytes
    transfer_peer.py measure --host H [...]            plain sockets (run under mirrord)
    transfer_peer.py measure --pod P --namespace NS    through a Kubernetes port-forward

`measure` prints one JSON line: the keep-alive GET latency (HTTP on --http-port) and the
rate of a --megabytes download from the bulk server (--bulk-port).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable

CHUNK = 256 * 1024


def serve(host: str, port: int) -> None:
    server = socket.create_server((host, port))
    print("ready", flush=True)
    block = b"x" * CHUNK

    def send(conn: socket.socket) -> None:
        with conn:
            want = int(conn.makefile("rb").readline())
            while want > 0:
                conn.sendall(block[: min(want, CHUNK)])
                want -= CHUNK

    while True:
        conn, _ = server.accept()
        threading.Thread(target=send, args=(conn,), daemon=True).start()


def keepalive(connect: Callable[[], socket.socket], count: int) -> list[float]:
    conn = http.client.HTTPConnection("staging", 8080, timeout=30)
    conn.sock = connect()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", "/bench")
        conn.getresponse().read()
        samples.append(time.perf_counter() - started)
    conn.close()
    return samples


def download(connect: Callable[[], socket.socket], size: int) -> float:
    """Seconds to receive `size` bytes."""
    sock = connect()
    sock.settimeout(60)
    started = time.perf_counter()
    sock.sendall(b"%d\n" % size)
    got = 0
    while got < size:
        chunk = sock.recv(CHUNK)
        if not chunk:
            raise SystemExit(f"the transfer ended after {got} of {size} bytes")
        got += len(chunk)
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed


def connector(args: argparse.Namespace) -> Callable[[int], socket.socket]:
    if args.pod is None:
        return lambda port: socket.create_connection((args.host, port))
    from kubernetes import client, config
    from kubernetes.stream import portforward

    core = client.CoreV1Api(config.new_client_from_config())

    def forward(port: int) -> socket.socket:
        pf = portforward(
            core.connect_get_namespaced_pod_portforward, args.pod, args.namespace, ports=str(port)
        )
        sock: socket.socket = pf.socket(port)._socket
        sock.setblocking(True)
        return sock

    return forward


def measure(args: argparse.Namespace) -> None:
    connect = connector(args)
    keepalive(lambda: connect(args.http_port), 50)  # warm-up
    samples = keepalive(lambda: connect(args.http_port), args.requests)
    size = args.megabytes * 1_000_000
    download(lambda: connect(args.bulk_port), 10_000_000)  # warm-up
    seconds = download(lambda: connect(args.bulk_port), size)
    result = {
        "keepalive_median_ms": statistics.median(samples) * 1000,
        "download_mb_s": size / seconds / 1e6,
    }
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    m = sub.add_parser("measure")
    m.add_argument("--host")
    m.add_argument("--pod")
    m.add_argument("--namespace")
    m.add_argument("--http-port", type=int, default=8080)
    m.add_argument("--bulk-port", type=int, default=9100)
    m.add_argument("--requests", type=int, default=1000)
    m.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.host, args.port)
    else:
        measure(args)


if __name__ == "__main__":
    main()
