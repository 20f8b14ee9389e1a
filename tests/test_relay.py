"""The relay path, the only one a remote agent has: every byte arrives, nothing leaks, a
peer that misbehaves costs its own request only. Real apps under mirrord, the lab."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, last_json, mirrord, run_app

from mirrord.lab import Lab

GREETING_PORT = 7070

# A server-first service (as MySQL, SMTP, SSH greet): a greeting, then an echo until EOF.
GREETER = """
    import asyncio
    async def handle(reader, writer):
        writer.write(b"HELLO\\n")
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
    async def main():
        server = await asyncio.start_server(handle, "0.0.0.0", PORT, backlog=4096)
        print("ready", flush=True)
        await server.serve_forever()
    asyncio.run(main())
""".replace("PORT", str(GREETING_PORT))


def target(lab: Lab) -> str:
    return f"netns/{lab.staging_ns}"


@pytest.fixture
def greeter(lab: Lab) -> Iterator[None]:
    proc = lab.popen_in(
        lab.backend_ns,
        [sys.executable, "-c", textwrap.dedent(GREETER)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield
    proc.kill()
    proc.wait()


@pytest.mark.usefixtures("greeter")
def test_a_thousand_connections_carry_every_byte_both_ways(
    lab: Lab, tmp_path: Path, transport: str
) -> None:
    code = f"""
        import asyncio, hashlib, json, os, resource, socket
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        address = socket.gethostbyname("backend.staging.svc")
        async def one(i):
            payload = os.urandom(8192 + 13 * i)
            reader, writer = await asyncio.open_connection(address, {GREETING_PORT})
            greeting = await reader.readexactly(6)  # the server speaks first
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            echoed = await reader.read()  # to EOF
            writer.close()
            return greeting == b"HELLO\\n", hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        async def main():
            results = await asyncio.gather(*(one(i) for i in range(1000)))
            print(json.dumps({{"greeted": sum(g for g, _ in results),
                              "intact": sum(e for _, e in results)}}))
        asyncio.run(main())
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path, timeout=120))
    assert seen == {"greeted": 1000, "intact": 1000}


def test_threads_do_not_leak_channels_to_the_intproxy(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, os, socket, threading
        def lookup():
            socket.gethostbyname("backend.staging.svc")
        def open_fds():
            return len(os.listdir("/proc/self/fd"))
        lookup()
        before = open_fds()
        for _ in range(100):  # 1,000 short-lived threads, ten at a time
            threads = [threading.Thread(target=lookup) for _ in range(10)]
            for t in threads: t.start()
            for t in threads: t.join()
        print(json.dumps({"before": before, "after": open_fds()}))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path, timeout=120))
    # a handful of pooled channels at most, however many threads came and went
    assert seen["after"] <= seen["before"] + 4, seen


def test_a_nonblocking_connect_does_not_freeze_the_app(
    lab: Lab, tmp_path: Path, transport: str
) -> None:
    # a port of the backend that never answers (its SYNs are dropped) and one that refuses
    lab.run_in(lab.backend_ns, ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9998", "-j", "DROP"])  # fmt: skip
    code = """
        import asyncio, json
        async def ticker(count):
            while True:
                await asyncio.sleep(0.01)
                count[0] += 1
        async def main():
            count = [0]
            tick = asyncio.create_task(ticker(count))
            # a remote that does not answer: as with mirrord, the app may get its relayed
            # connection before the remote has answered (then it is reset if the remote
            # never does); either way the loop must not wait for it
            loop = asyncio.get_running_loop()
            start = loop.time()
            try:
                await asyncio.wait_for(asyncio.open_connection("backend.staging.svc", 9998), 1.5)
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(max(0, start + 1.5 - loop.time()))
            ticks_per_second = count[0] / (loop.time() - start)
            try:
                await asyncio.open_connection("backend.staging.svc", 9997)
                refused = "connected?"
            except ConnectionRefusedError:
                refused = "refused"
            tick.cancel()
            print(json.dumps({"ticks_per_second": ticks_per_second, "refused": refused}))
        asyncio.run(main())
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path, timeout=60))
    # the event loop kept running while the connect waited (~100 ticks a second; a loop
    # frozen in connect() until the agent gives up ticks about once in 30 s)
    assert seen["ticks_per_second"] >= 30, seen
    # a remote that answers at once is reported as a local connect would be
    assert seen["refused"] == "refused"


def test_a_layer_that_cannot_start_leaves_the_app_alone(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('local ok')"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "sitecustomize_hook"),
        "MIRRORD_INTPROXY_SOCKET": str(tmp_path / "no-intproxy.sock"),
        "MIRRORD_PROXY_TOKEN": "x",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    server.close()
    # one line says so, and the app's own connections are its own again
    assert proc.stdout.strip() == "local ok", proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("mirrord: layer not loaded")


def test_a_request_out_of_place_gets_an_error_and_the_session_goes_on(
    lab: Lab, tmp_path: Path
) -> None:
    code = """
        import json, os, socket
        from mirrord.client.proxy import ProxyClient
        from mirrord.protocol import Connected, RequestFailed, Resolve, Resolved
        client = ProxyClient(os.environ["MIRRORD_INTPROXY_SOCKET"], os.environ["MIRRORD_PROXY_TOKEN"])
        # a reply sent as if it were a request: not the intproxy's to take
        wrong = client.request(Connected(req=0, conn=1, local_host="x", local_port=1,
                                         remote_host="y", remote_port=2))
        right = client.request(Resolve(req=0, host="backend.staging.svc", port=80,
                                       family=socket.AF_INET, type=0, proto=0, flags=0))
        print(json.dumps({"wrong": type(wrong).__name__, "message": getattr(wrong, "message", ""),
                          "right": type(right).__name__,
                          "resolved": socket.gethostbyname("backend.staging.svc")}))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    assert seen["wrong"] == "RequestFailed" and "does not take connected" in seen["message"]
    assert seen["right"] == "Resolved"
    assert seen["resolved"] == lab.backend_addr


def test_an_environment_too_large_for_a_frame_is_a_clear_error(tmp_path: Path) -> None:
    # a target whose environment is over a frame's size (1 MiB)
    big = {f"BIG_{i}": "x" * 120_000 for i in range(10)}
    sleeper = subprocess.Popen(["sleep", "60"], env={**big, "PATH": "/usr/bin:/bin"})
    try:
        (tmp_path / "app.py").write_text("print('ran')")
        proc = mirrord("-t", f"pid/{sleeper.pid}", str(tmp_path / "app.py"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "environment" in proc.stderr and "over the limit" in proc.stderr, proc.stderr
    assert "ran" not in proc.stdout
