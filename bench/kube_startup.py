"""Benchmark: from `python -m mirrord -t deployment/staging app.py` to the app running
and its first request through the target done, split by phase.

    python3 bench/kube_startup.py [--rounds 5]   (as root: it builds both labs;
                                                  needs scripts/kube-binaries)

The cluster is the Kubernetes lab (a real control plane on 127.0.0.1, kwok nodes, the
harness playing the runtime); the target is the network lab's staging service as a
deployment. Each round starts a fresh agent (the previous one's Job is gone first).
Phases come from the CLI's progress lines, timed as they arrive on its stderr, and from
the app, which prints `time.monotonic()` (one clock for every process on this host):

    resolve       CLI start -> "creating agent" (interpreter, client, kubeconfig, lookup)
    create        -> "waiting for agent job" (Secret, Job, its pod)
    agent ready   -> "port-forward" (the agent's pod runs and says it is ready)
    port-forward  -> "connected" (the intproxy's forward and handshake)
    app start     -> the app's first line (exec, interpreter, mirrord's layer)
    first request -> the app's GET to the staging backend answered
Target (issue 10): <= 3 s in all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from kubernetes import client

from mirrord.lab import create_lab
from mirrord.lab.kube import KubeLab, workloads
from mirrord.lab.kube.runtime import Runtime
from mirrord.lab.kube.staging import deploy_staging

HERE = Path(__file__).resolve().parent
NAMESPACE = "bench"
APP = """
    import json, time, urllib.request
    started = time.monotonic()
    urllib.request.urlopen("http://backend.staging.svc:8080/").read()
    print(json.dumps({"started": started, "answered": time.monotonic()}))
"""
MARKS = (
    ("resolve", "mirrord: creating agent"),
    ("create", "mirrord: waiting for agent job"),
    ("agent ready", "mirrord: port-forward to the agent"),
    ("port-forward", "mirrord: connected to"),
)


def one_session(kubeconfig: Path, script: Path) -> dict[str, float]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirrord", "-t", "deployment/staging", "-n", NAMESPACE, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=HERE.parent,
    )
    seen: dict[str, float] = {}
    lines: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            for _, prefix in MARKS:
                if line.startswith(prefix) and prefix not in seen:
                    seen[prefix] = time.monotonic()

    reader = threading.Thread(target=read_stderr)
    reader.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait(120)
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"session failed:\n{''.join(lines)[-3000:]}")
    if os.environ.get("BENCH_DEBUG"):
        print("".join(lines), file=sys.stderr)
    app = json.loads(out.strip().splitlines()[-1])
    phases, last = {}, t0
    for name, prefix in MARKS:
        phases[name] = seen[prefix] - last
        last = seen[prefix]
    phases["app start"] = app["started"] - last
    phases["first request"] = app["answered"] - app["started"]
    phases["total"] = app["answered"] - t0
    return phases


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        KubeLab.start(Path(tmp)) as kube,
        create_lab() as lab,
    ):
        kube.add_played_node("played-1")
        api = kube.api_client()
        workloads.create_namespace(api, NAMESPACE)
        script = Path(tmp) / "app.py"
        script.write_text(textwrap.dedent(APP))
        batch = client.BatchV1Api(api)
        with Runtime(kube, Path(tmp) / "runtime") as runtime:
            deploy_staging(kube, runtime, lab, NAMESPACE)
            for _ in range(args.rounds):
                deadline = time.monotonic() + 60
                while batch.list_namespaced_job(NAMESPACE).items:  # a fresh agent each round
                    if time.monotonic() > deadline:
                        raise SystemExit("the previous agent's Job did not go")
                    time.sleep(0.2)
                rounds.append(one_session(kube.kubeconfig, script))
    names = [name for name, _ in MARKS] + ["app start", "first request", "total"]
    print(f"{'phase':16}{'median':>10}{'min':>10}{'max':>10}   ({len(rounds)} sessions)")
    summary = {}
    for name in names:
        values = [r[name] for r in rounds]
        summary[name] = statistics.median(values)
        print(f"{name:16}{statistics.median(values):9.2f}s{min(values):9.2f}s{max(values):9.2f}s")
    verdict = "ok" if summary["total"] <= 3.0 else "over"
    print(f"total median {summary['total']:.2f}s (target <= 3 s: {verdict})")
    print(json.dumps({"median_s": summary}))


if __name__ == "__main__":
    main()
