"""Running the real CLI the way a user does, and checking what it leaves behind."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrord.lab import Lab

REPO = Path(__file__).resolve().parents[1]


def mirrord(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m mirrord ARGS...` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mirrord", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        input=input,
    )


def run_app(
    target: str, code: str, *flags: str, tmp_path: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Write `code` as app.py and run it with `python -m mirrord -t TARGET FLAGS app.py`."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(code))
    return mirrord("-t", target, *flags, str(script), timeout=timeout)


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    """The app prints its findings as one JSON line at the end."""
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_gone(text: str, timeout: float = 10.0) -> list[int]:
    """Wait until no process mentions `text`; returns the ones still there."""
    deadline = time.monotonic() + timeout
    while (left := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def agent_pids(target: str) -> list[int]:
    """The local agent serving `target` (one per target, shared by its sessions)."""
    return [
        pid
        for pid in processes_mentioning(f"--target {target} ")
        if b"mirrord.agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def nat_rules(lab: Lab) -> str:
    """The staging namespace's nat table, as iptables-save prints it."""
    return lab.run_in(lab.staging_ns, ["iptables-save", "-t", "nat"]).stdout


def modules_loaded(statement: str, names: tuple[str, ...]) -> list[str]:
    """Which of `names` a fresh interpreter has in sys.modules after running `statement`
    (what an import drags into the user's app)."""
    code = f"import sys, json; {statement}; print(json.dumps([m for m in {names!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout))


def stop_process(proc: subprocess.Popen, sig: int, timeout: float = 10) -> None:
    """Send `sig` and wait; kill if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def event_loops() -> list[Any]:
    """anyio backends for the wire's tests: asyncio, and uvloop where it is installed (the
    agent and the intproxy run on it then)."""
    loops: list[Any] = [pytest.param(("asyncio", {}), id="asyncio")]
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return loops
    return [*loops, pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]


@contextlib.contextmanager
def loopback_http_server(
    answer: Callable[[http.server.BaseHTTPRequestHandler], str],
) -> Iterator[int]:
    """An HTTP server on this host's 127.0.0.1 (its port), answering each GET with
    `answer(request)`; it stops when the block ends."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answer(self).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
