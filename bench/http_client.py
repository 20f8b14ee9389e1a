"""The measuring client: keep-alive GET latency and new-connection cost, as JSON.

Run directly inside the staging namespace (the baseline) and under mirrord from the host.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time


def keepalive(host: str, port: int, count: int) -> list[float]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", "/bench")
        conn.getresponse().read()
        samples.append(time.perf_counter() - started)
    conn.close()
    return samples


def new_connections(host: str, port: int, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/bench", headers={"Connection": "close"})
        conn.getresponse().read()
        conn.close()
        samples.append(time.perf_counter() - started)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[int(len(ordered) * 0.9)] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    keepalive(args.host, args.port, 50)  # warm-up
    result = {
        "keepalive": summary(keepalive(args.host, args.port, args.requests)),
        "new_connection": summary(new_connections(args.host, args.port, args.connections)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
