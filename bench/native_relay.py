"""Benchmark: what the native relay costs a program, and curl through it vs Python.

    python3 bench/native_relay.py overhead [--rounds 5]   (no lab: a targetless session)
    python3 bench/native_relay.py curl [--rounds 3]       (as root: it builds the lab)

`overhead`: a small C program times each `connect()` of a TCP socket to a local listener
and each `close()` (of a dup'ed descriptor), run plainly and under `mirrord exec` with
`ignore_localhost` (so the connect is decided local: the relay's fast path), alternating
rounds; the difference of the medians is the relay's cost. Targets (issue 11): <= 5 us
per unintercepted connect to a local address, <= 1 us per close.

`curl`: the same GET of the staging backend by name, a new connection each time, each
the first request of a fresh process (curl is one), timed inside the process: curl's own
`time_total` under `mirrord exec` (the relay), and a Python client (urllib, timed around
the request) under `python -m mirrord` with the relay switched off (the Python layer
alone). Target: curl's request time <= 1.2x the Python client's.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROGRAM = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, n, sizeof *v, by_value);
    return v[n / 2];
}

int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    double *connects = malloc(n * sizeof *connects), *closes = malloc(n * sizeof *closes);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    bind(listener, (struct sockaddr *)&addr, sizeof addr);
    listen(listener, 4096);
    getsockname(listener, (struct sockaddr *)&addr, &len);
    /* each call timed alone; the median leaves the scheduler's hiccups out */
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        double t0 = now();
        if (connect(s, (struct sockaddr *)&addr, sizeof addr)) { perror("connect"); return 1; }
        double t1 = now();
        connects[i] = t1 - t0;
        close(s);
        close(accept(listener, NULL, NULL));
        int d = dup(listener);
        t0 = now();
        close(d);
        closes[i] = now() - t0;
    }
    /* the relay's own word that it is loaded and on (mirrord_relay_state() == 1) */
    int (*state)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "mirrord_relay_state");
    printf("{\"relay\": %s, \"connect_us\": %.4f, \"close_us\": %.4f}\n",
           state && state() == 1 ? "true" : "false", median(connects, n) * 1e6, median(closes, n) * 1e6);
    return 0;
}
"""


def run(command: list[str], env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=HERE.parent,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed: {proc.stdout[-1000:]}{proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def save(name: str, report: dict) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / name).write_text(text + "\n")


def overhead(rounds: int, iterations: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="mirrord-bench-"))
    source, program = folder / "connect.c", folder / "connect"
    source.write_text(PROGRAM)
    subprocess.run(["cc", "-O2", "-o", str(program), str(source), "-ldl"], check=True)
    config = folder / "mirrord.json"
    config.write_text(
        json.dumps({"feature": {"network": {"outgoing": {"ignore_localhost": True}}}})
    )
    plain_cmd = [str(program), str(iterations)]
    relay_cmd = [sys.executable, "-m", "mirrord", "exec", "-t", "targetless", "-f", str(config)]
    relay_cmd += ["--", *plain_cmd]
    plain, relayed = [], []
    for _ in range(rounds):
        plain.append(run(plain_cmd))
        relayed.append(run(relay_cmd))
    assert all(r["relay"] for r in relayed) and not any(r["relay"] for r in plain)
    summary = {}
    for key, target in (("connect_us", 5.0), ("close_us", 1.0)):
        base = statistics.median(r[key] for r in plain)
        with_relay = statistics.median(r[key] for r in relayed)
        summary[key] = {
            "plain": round(base, 3),
            "relay": round(with_relay, 3),
            "added_us": round(with_relay - base, 3),
            "target_us": target,
        }
    save("native_overhead.json", {"rounds": rounds, "iterations": iterations, "results": summary})
    for key, what in (("connect_us", "connect to a local address"), ("close_us", "close")):
        added, target = summary[key]["added_us"], summary[key]["target_us"]
        verdict = "OK" if added <= target else "OVER TARGET"
        print(f"relay adds {added:.3f} us to an unintercepted {what}: {verdict}")


CURL_LOOP = """for i in $(seq {n}); do curl -s -o /dev/null -w '%{{time_total}}\\n' {url}; done"""
PYTHON_CLIENT = """
    import json, time, urllib.request
    started = time.perf_counter()
    urllib.request.urlopen("{url}").read()
    print(json.dumps({{"ms": (time.perf_counter() - started) * 1e3}}))
"""


def curl_vs_python(rounds: int, requests: int) -> None:
    from mirrord.lab import create_lab

    url = "http://backend.staging.svc:8080/bench"
    folder = Path(tempfile.mkdtemp(prefix="mirrord-bench-"))
    client = folder / "client.py"
    client.write_text(textwrap.dedent(PYTHON_CLIENT.format(url=url)))
    results = []
    with create_lab() as lab:
        target = ["-t", f"netns/{lab.staging_ns}"]
        curl_cmd = [sys.executable, "-m", "mirrord", "exec", *target, "--", "sh", "-c"]
        curl_cmd.append(CURL_LOOP.format(n=requests, url=url))
        python_cmd = [sys.executable, "-m", "mirrord", *target, str(client)]
        for _ in range(rounds):
            proc = subprocess.run(
                curl_cmd, capture_output=True, text=True, timeout=600, cwd=HERE.parent
            )
            if proc.returncode:
                raise SystemExit(f"curl failed: {proc.stderr[-2000:]}")
            curl_ms = statistics.median(float(x) for x in proc.stdout.split()) * 1e3
            python_ms = statistics.median(
                run(python_cmd, {"MIRRORD_RELAY_LIBRARY": "none"})["ms"] for _ in range(requests)
            )
            results.append({"curl_ms": round(curl_ms, 3), "python_ms": round(python_ms, 3)})
    ratio = statistics.median(r["curl_ms"] / r["python_ms"] for r in results)
    save(
        "native_curl.json",
        {"rounds": rounds, "requests": requests, "results": results, "ratio": round(ratio, 3)},
    )
    verdict = "OK" if ratio <= 1.2 else "OVER TARGET"
    print(
        f"curl through the relay: {ratio:.3f}x a Python client through the Python layer: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["overhead", "curl"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    if args.what == "overhead":
        overhead(args.rounds, args.iterations)
    else:
        curl_vs_python(args.rounds, args.requests)


if __name__ == "__main__":
    main()
