"""Benchmark: HTTP to the staging backend through mirrord vs directly from inside staging.

    python3 bench/http_latency.py [--rounds 3]      (as root: it builds the lab)

The same client runs directly inside staging (the baseline) and under mirrord from this
host, with both transports of a local agent: handing over sockets (the default) and
relaying bytes (what a remote agent does). Runs alternate within one lab so the ratios
hold when the machine's speed drifts. Targets: a keep-alive request <= 1.5x direct; per
new connection <= 2 ms added with hand-over (issue 2), <= 1 ms relayed (issue 8).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from mirrord.lab import create_lab

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "http_client.py"


def run(command: list[str], env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE.parent,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark client failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: the added cost per new connection each transport should stay within (ms)
NEW_CONNECTION_TARGET_MS = {"fd-passing": 2, "relay": 1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {"fd-passing": [], "relay": []}
    added: dict[str, list[float]] = {"fd-passing": [], "relay": []}
    rounds = []
    with create_lab() as lab:
        client = [str(CLIENT), "--host", lab.backend_addr]
        client += ["--requests", str(args.requests), "--connections", str(args.connections)]
        direct_cmd = ["ip", "netns", "exec", lab.staging_ns, sys.executable, *client]
        mirrord_cmd = [sys.executable, "-m", "mirrord", "-t", f"netns/{lab.staging_ns}", *client]
        for _ in range(args.rounds):
            result = {"direct": run(direct_cmd)}
            result["fd-passing"] = run(mirrord_cmd)
            result["relay"] = run(mirrord_cmd, {"MIRRORD_NO_FD_PASSING": "1"})
            direct = result["direct"]
            for mode in ratios:
                ratios[mode].append(
                    result[mode]["keepalive"]["median_ms"] / direct["keepalive"]["median_ms"]
                )
                added[mode].append(
                    result[mode]["new_connection"]["median_ms"]
                    - direct["new_connection"]["median_ms"]
                )
            rounds.append(result)
    last = rounds[-1]
    print(f"{'':24}{'keep-alive GET':>16}{'new connection':>16}   (medians, last round)")
    for name in ("direct", "fd-passing", "relay"):
        ka, nc = last[name]["keepalive"]["median_ms"], last[name]["new_connection"]["median_ms"]
        print(f"{name:24}{ka:13.3f} ms{nc:13.3f} ms")
    summary = {}
    for mode in ratios:
        ratio, extra = statistics.median(ratios[mode]), statistics.median(added[mode])
        summary[mode] = {"keepalive_ratio": ratio, "new_connection_added_ms": extra}
        print(
            f"mirrord {mode:11}: keep-alive {ratio:.2f}x direct (target <= 1.5x), "
            f"+{extra:.2f} ms per new connection (target <= {NEW_CONNECTION_TARGET_MS[mode]} ms);"
            f" median of {len(rounds)} rounds"
        )
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "http_latency.json").write_text(
        json.dumps({"rounds": rounds, "summary": summary}, indent=2)
    )


if __name__ == "__main__":
    main()
