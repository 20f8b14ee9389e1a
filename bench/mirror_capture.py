"""How many small HTTP requests/s mirror mode's capture keeps up with, losing none.

Needs root: builds a lab (``mirrord.lab.create_lab()``), runs the ``Sniffer`` inside the
staging namespace (subscribed to the staging service's port, on its own event loop in
a thread of this process), and drives the unmodified staging service from the host
namespace with client processes at a fixed request rate, step by step. Every request
carries a unique id in its path; a request counts as captured when its complete
header block came out of the reassembled client→server stream.

    sudo python3 bench/mirror_capture.py [--rates 1000,2000,4000] [--seconds 3]
                                         [--mode keepalive|new] [--json OUT]

The issue's target: at least 2,000 small requests/s with no request lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_RATE = 2000
_REQUEST_ID = re.compile(rb"^GET /m/(\d+)-(\d+)-(\d+) HTTP/1\.1\r\n")


# ---------------------------------------------------------------- the load (a child process)


def request_bytes(proc: int, conn: int, i: int, close: bool) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return b"GET /m/%d-%d-%d HTTP/1.1\r\nHost: staging\r\nUser-Agent: bench\r\n%s\r\n" % (
        proc,
        conn,
        i,
        extra,
    )


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    return await reader.readexactly(int(match[1]) if match else 0)


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    """``connections`` connections sharing ``rate`` requests/s, paced (open loop) so that
    the offered load is the rate asked for, for ``seconds``."""
    interval = args.connections / args.rate
    sent = [0] * args.connections
    bad = 0
    started = time.monotonic() + 0.05
    stop = started + args.seconds

    async def one(conn: int) -> None:
        nonlocal bad
        due = started + interval * conn / args.connections
        reader = writer = None
        while due < stop:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if writer is None:
                reader, writer = await asyncio.open_connection(args.host, args.port)
            assert reader is not None
            writer.write(request_bytes(args.proc, conn, sent[conn], args.mode == "new"))
            sent[conn] += 1
            if await _read_response(reader) != b"staging-service":
                bad += 1
            if args.mode == "new":
                writer.close()
                await writer.wait_closed()
                reader = writer = None
            due += interval
        if writer is not None:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(one(c) for c in range(args.connections)))
    return {"sent": sent, "bad": bad, "elapsed": time.monotonic() - started}


# ---------------------------------------------------------------- the capture


class Counter:
    """Consumes the sniffer's events in a thread; records every request id it sees."""

    def __init__(self, sniffer: Any) -> None:
        self.sniffer = sniffer
        self.seen: set[tuple[int, int, int]] = set()
        self.duplicates = 0
        self.garbled = 0
        self._buffers: dict[Any, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sniffer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import anyio

        from mirrord.agent.reassembly import StreamClosed, StreamData

        async def consume() -> None:
            async def stopper() -> None:
                while not self._stop.is_set():
                    await anyio.sleep(0.05)
                await self.sniffer.aclose()

            async with anyio.create_task_group() as tg:
                tg.start_soon(stopper)
                async for event in self.sniffer:
                    if isinstance(event, StreamData):
                        self._feed(event.flow, event.data)
                    elif isinstance(event, StreamClosed):
                        self._buffers.pop(event.flow, None)

        anyio.run(consume)

    def _feed(self, flow: Any, data: bytes) -> None:
        buf = self._buffers.get(flow, b"") + data
        *requests, rest = buf.split(b"\r\n\r\n")
        self._buffers[flow] = rest
        for head in requests:
            match = _REQUEST_ID.match(head + b"\r\n")
            if match is None:
                self.garbled += 1
                continue
            key = (int(match[1]), int(match[2]), int(match[3]))
            if key in self.seen:
                self.duplicates += 1
            self.seen.add(key)

    def cpu_seconds(self) -> float:
        """CPU time of the capture thread so far (sniffer, reassembly and this counter)."""
        fields = Path(f"/proc/self/task/{self._thread.native_id}/stat").read_text()
        utime, stime = fields.rsplit(")", 1)[1].split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def run_step(
    lab: Any, counter: Counter, rate: int, first_proc: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One step at ``rate`` requests/s; client processes get ids from ``first_proc``."""
    procs = []
    per_proc = rate / args.clients
    for p in range(args.clients):
        argv = [sys.executable, __file__, "--client", "--host", lab.staging_addr]
        argv += ["--port", str(lab.service_port), "--proc", str(first_proc + p)]
        argv += ["--rate", str(per_proc), "--seconds", str(args.seconds)]
        argv += ["--connections", str(max(1, args.connections // args.clients))]
        argv += ["--mode", args.mode]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
    drops0 = counter.sniffer.kernel_drops
    cpu0 = counter.cpu_seconds()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=args.seconds + 60)
        if proc.returncode:
            raise SystemExit(f"load client failed ({proc.returncode})")
        results.append(json.loads(out))
    expected = {
        (first_proc + p, c, i)
        for p, r in enumerate(results)
        for c, n in enumerate(r["sent"])
        for i in range(n)
    }
    # Give the capture a moment to drain what is still in its socket.
    deadline = time.monotonic() + 3
    while not expected <= counter.seen and time.monotonic() < deadline:
        time.sleep(0.02)
    elapsed = max(r["elapsed"] for r in results)
    sent = len(expected)
    captured = len(expected & counter.seen)
    cpu = counter.cpu_seconds() - cpu0
    return {
        "offered_rate": rate,
        "sent": sent,
        "captured": captured,
        "lost": sent - captured,
        "achieved_rate": round(sent / elapsed),
        "bad_answers": sum(r["bad"] for r in results),
        "kernel_drops": counter.sniffer.kernel_drops - drops0,
        "capture_cpu_us_per_request": round(cpu / max(1, sent) * 1e6, 1),
        "capture_busy_percent": round(cpu / elapsed * 100),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--proc", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--rates", default="1000,2000,3000,4000", help="requests/s steps")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each step")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--clients", type=int, default=2, help="load client processes")
    parser.add_argument("--mode", choices=["keepalive", "new"], default="keepalive")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(_client(args))))
        return
    if os.geteuid() != 0:
        raise SystemExit("needs root (it builds network namespaces)")

    from mirrord.agent.sniffer import Sniffer
    from mirrord.lab import create_lab

    lab = create_lab()
    try:
        sniffer = lab.call_in(lab.staging_ns, Sniffer, [lab.service_port])
        counter = Counter(sniffer)
        steps = []
        for n, rate in enumerate(int(r) for r in args.rates.split(",")):
            step = run_step(lab, counter, rate, n * args.clients, args)
            steps.append(step)
            print(
                f"{args.mode:9} offered {rate:6}/s  achieved {step['achieved_rate']:6}/s  "
                f"sent {step['sent']:6}  captured {step['captured']:6}  lost {step['lost']:4}  "
                f"kernel drops {step['kernel_drops']:3}  capture CPU "
                f"{step['capture_cpu_us_per_request']:5} us/request "
                f"({step['capture_busy_percent']:3}% of a core)",
                flush=True,
            )
        counter.stop()
        if counter.garbled or counter.duplicates:
            print(f"garbled requests: {counter.garbled}, duplicates: {counter.duplicates}")
        clean = [s for s in steps if s["lost"] == 0 and s["bad_answers"] == 0]
        best = max((s["achieved_rate"] for s in clean), default=0)
        lossy = any(s["lost"] for s in steps)
        if best >= TARGET_RATE:
            verdict = "PASS"
        elif lossy:
            verdict = "FAIL"
        else:  # the clients and the service, not the capture, set the ceiling
            verdict = "INCONCLUSIVE (no request lost, but the load fell short)"
        print(f"{verdict}: highest rate with no lost request: {best}/s (target {TARGET_RATE}/s)")
        if args.json:
            Path(args.json).write_text(
                json.dumps({"mode": args.mode, "steps": steps, "best_clean_rate": best}, indent=2)
            )
    finally:
        lab.close()
    if verdict == "FAIL":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
