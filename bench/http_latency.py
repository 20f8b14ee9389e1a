"""Benchmark: HTTP to the staging backend through mirrord vs directly from inside staging.

    python3 bench/http_latency.py [--rounds 3]      (as root: it builds the lab)

Both clients run in the same lab in the same run, alternating, so the ratio holds even
when the machine's speed drifts. Targets (issue 2): keep-alive request <= 1.5x direct,
<= 2 ms added per new connection.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from mirrord.lab import create_lab

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "http_client.py"


def run(command: list[str], cwd: Path) -> dict:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark client failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    with create_lab() as lab:
        client_args = [
            str(CLIENT),
            "--host",
            lab.backend_addr,
            "--requests",
            str(args.requests),
            "--connections",
            str(args.connections),
        ]
        direct_cmd = ["ip", "netns", "exec", lab.staging_ns, sys.executable, *client_args]
        mirrord_cmd = [
            sys.executable,
            "-m",
            "mirrord",
            "-t",
            f"netns/{lab.staging_ns}",
            *client_args,
        ]
        rounds = []
        for _ in range(args.rounds):
            direct = run(direct_cmd, HERE.parent)
            through = run(mirrord_cmd, HERE.parent)
            rounds.append(
                {
                    "direct": direct,
                    "mirrord": through,
                    "keepalive_ratio": through["keepalive"]["median_ms"]
                    / direct["keepalive"]["median_ms"],
                    "new_connection_added_ms": through["new_connection"]["median_ms"]
                    - direct["new_connection"]["median_ms"],
                }
            )
    ratio = statistics.median(r["keepalive_ratio"] for r in rounds)
    added = statistics.median(r["new_connection_added_ms"] for r in rounds)
    last = rounds[-1]
    print(
        f"keep-alive GET median: direct {last['direct']['keepalive']['median_ms']:.3f} ms, "
        f"mirrord {last['mirrord']['keepalive']['median_ms']:.3f} ms"
    )
    print(
        f"new connection median: direct {last['direct']['new_connection']['median_ms']:.3f} ms, "
        f"mirrord {last['mirrord']['new_connection']['median_ms']:.3f} ms"
    )
    print(f"keep-alive ratio (median of {len(rounds)} rounds): {ratio:.2f}x  (target <= 1.5x)")
    print(f"added per new connection (median of rounds): {added:.2f} ms  (target <= 2 ms)")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "http_latency.json").write_text(
        json.dumps(
            {"rounds": rounds, "keepalive_ratio": ratio, "new_connection_added_ms": added}, indent=2
        )
    )


if __name__ == "__main__":
    main()
