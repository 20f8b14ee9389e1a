"""Benchmarks of incoming traffic (as root: builds the lab).

    python3 bench/incoming.py steal-throughput [--mb 100]
    python3 bench/incoming.py mirror-rate [--rate 2000 --seconds 3]

steal-throughput: a 100 MB upload to the target's port, stolen to a local app, against
the same upload sent straight to that app, in the same run (issue 3: >= 30%).
mirror-rate: small HTTP requests at a fixed rate to the target's service while a local
app mirrors them; every request must reach the app (issue 3: >= 2,000/s, none lost).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from mirrord.lab import Lab, create_lab

REPO = Path(__file__).resolve().parents[1]

SINK_APP = """
import socket, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8080))
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

COUNT_APP = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        print(self.path, flush=True)
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H)
print("ready", flush=True)
srv.serve_forever()
"""


def start_app(
    lab: Lab, code: str, *flags: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    script = Path("/tmp/mirrord-bench-app.py")
    script.write_text(textwrap.dedent(code))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirrord", "-t", f"netns/{lab.staging_ns}", *flags, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("ready"):
        raise SystemExit("the local app did not start")
    return proc


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
        ratios = []
        with create_lab() as lab:
            app = start_app(lab, SINK_APP, "-f", str(config), env=env)
            try:
                for _ in range(rounds):
                    direct = upload("127.0.0.1", 8080, total)
                    stolen = upload(lab.staging_addr, 8080, total)
                    ratios.append(direct / stolen)
                    print(
                        f"{name:10} direct {mb / direct:7.1f} MB/s   stolen {mb / stolen:7.1f} MB/s"
                        f"   -> {100 * direct / stolen:.0f}% of direct"
                    )
            finally:
                app.terminate()
                app.wait(10)
        ratios.sort()
        print(
            f"steal throughput, {name}: median {100 * ratios[len(ratios) // 2]:.0f}% of direct (target >= 30%)"
        )


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass


def mirror_rate(rate: int, seconds: float) -> None:
    with create_lab() as lab:
        app = start_app(lab, COUNT_APP)
        seen: list[str] = []
        reader = threading.Thread(
            target=lambda: seen.extend(iter(app.stdout.readline, "")), daemon=True
        )  # type: ignore[union-attr]
        reader.start()
        try:
            count = int(rate * seconds)
            conns = [socket.create_connection((lab.staging_addr, 8080)) for _ in range(8)]
            for sock in conns:
                # drain the staging service's answers, or it stops reading our requests
                threading.Thread(target=_drain, args=(sock,), daemon=True).start()
            started = time.perf_counter()
            for i in range(count):
                sock = conns[i % len(conns)]
                sock.sendall(f"GET /r{i} HTTP/1.1\r\nHost: s\r\n\r\n".encode())
                # pace the sender to the rate asked
                ahead = started + (i + 1) / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            elapsed = time.perf_counter() - started
            deadline = time.monotonic() + 10
            while len(seen) < count and time.monotonic() < deadline:
                time.sleep(0.1)
            for sock in conns:
                sock.shutdown(socket.SHUT_WR)
        finally:
            app.terminate()
            app.wait(10)
    got = {line.strip() for line in seen}
    lost = count - len(got & {f"/r{i}" for i in range(count)})
    print(
        f"mirror: sent {count} requests at {count / elapsed:.0f}/s, the local app got {count - lost}, lost {lost}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["steal-throughput", "mirror-rate"])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.what == "steal-throughput":
        steal_throughput(args.mb, args.rounds)
    else:
        mirror_rate(args.rate, args.seconds)


if __name__ == "__main__":
    main()
