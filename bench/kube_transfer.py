"""Benchmark: a cluster session's transport against a plain port-forward to the same
service: keep-alive GET latency and a 100 MB download, as ratios in one run.

    python3 bench/kube_transfer.py [--rounds 3] [--megabytes 100]
                                   (as root: it builds both labs; needs scripts/kube-binaries)

The service is the staging pod's own (the lab's staging service on :8080, and a bulk
server beside it on :9100), in the Kubernetes lab. "plain" is what `kubectl
port-forward` gives: the official client's port-forward to the pod's ports. "mirrord" is
the same client code under `python -m mirrord -t deployment/staging`, connecting to the
service's address: app -> intproxy -> port-forward to the agent -> agent -> service. Both
forwards reach into the pod the same way (kwok runs nsenter + socat, as a kubelet's CRI
does), so the ratio is what mirrord adds to the transport. Runs alternate.
Targets (issue 10): <= 1.3x latency, >= 70% throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirrord.lab import create_lab
from mirrord.lab.kube import KubeLab, workloads
from mirrord.lab.kube.container_runner import forward_command
from mirrord.lab.kube.runtime import Runtime
from mirrord.lab.kube.staging import deploy_staging

HERE = Path(__file__).resolve().parent
PEER = HERE / "transfer_peer.py"
NAMESPACE = "bench"
BULK_PORT = 9100


def run(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=900, env=env, cwd=HERE.parent
    )
    if proc.returncode != 0:
        raise SystemExit(f"measurement failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"plain": [], "mirrord": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        KubeLab.start(Path(tmp)) as kube,
        create_lab() as lab,
    ):
        kube.add_played_node("played-1")
        workloads.create_namespace(kube.api_client(), NAMESPACE)
        bulk = lab.popen_in(
            "staging",
            [
                sys.executable,
                str(PEER),
                "serve",
                "--host",
                lab.staging_addr,
                "--port",
                str(BULK_PORT),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        assert bulk.stdout is not None and bulk.stdout.readline().strip() == "ready"
        env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
        with Runtime(kube, Path(tmp) / "runtime") as runtime:
            pod = deploy_staging(kube, runtime, lab, NAMESPACE)
            ports = {
                p: forward_command(lab.staging_ns, p, lab.staging_addr) for p in (8080, BULK_PORT)
            }
            kube.set_port_forward(pod, NAMESPACE, ports)
            measure = [str(PEER), "measure", "--megabytes", str(args.megabytes)]
            measure += ["--requests", str(args.requests), "--bulk-port", str(BULK_PORT)]
            plain = [sys.executable, *measure, "--pod", pod, "--namespace", NAMESPACE]
            through = [sys.executable, "-m", "mirrord", "-t", "deployment/staging", "-n", NAMESPACE]
            through += [*measure, "--host", lab.staging_addr]
            for _ in range(args.rounds):
                results["plain"].append(run(plain, env))
                results["mirrord"].append(run(through, env))
                time.sleep(0.5)
        bulk.kill()
    latency = [
        m["keepalive_median_ms"] / p["keepalive_median_ms"]
        for p, m in zip(results["plain"], results["mirrord"], strict=True)
    ]
    rate = [
        m["download_mb_s"] / p["download_mb_s"]
        for p, m in zip(results["plain"], results["mirrord"], strict=True)
    ]
    print(
        f"{'':10}{'keep-alive GET':>16}{f'{args.megabytes} MB download':>20}   (medians of {args.rounds} rounds)"
    )
    for name in ("plain", "mirrord"):
        ka = statistics.median(r["keepalive_median_ms"] for r in results[name])
        mb = statistics.median(r["download_mb_s"] for r in results[name])
        print(f"{name:10}{ka:13.3f} ms{mb:15.1f} MB/s")
    lat, thr = statistics.median(latency), statistics.median(rate)
    print(
        f"mirrord / plain port-forward: latency {lat:.2f}x (target <= 1.3x), "
        f"throughput {thr:.0%} (target >= 70%)"
    )
    print(json.dumps({"latency_ratio": lat, "throughput_ratio": thr, "rounds": results}))


if __name__ == "__main__":
    main()
