"""`mirrord demo`: the local staging lab, example apps run in it, what they saw."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mirrord.errors import MirrordError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# soft_wrap: long lines stay whole, for terminals and for anyone who greps the output
console = Console(stderr=True, soft_wrap=True)


def run_demo(keep: bool = False) -> int:
    from mirrord.lab import LabError, create_lab

    if os.geteuid() != 0:
        raise MirrordError("the demo builds network namespaces and needs root: run it with sudo")
    if not (EXAMPLES / "fetch_backend.py").is_file():
        raise MirrordError(f"the example apps are missing: {EXAMPLES}")
    try:
        with console.status("building the local staging lab (network namespaces, DNS, services)"):
            lab = create_lab()
    except LabError as exc:
        raise MirrordError(f"cannot build the lab: {exc}") from None
    try:
        target = f"netns/{lab.staging_ns}"
        console.print(
            f"[bold]lab up[/]: staging namespace [cyan]{lab.staging_ns}[/] runs a service on "
            f"{lab.staging_addr}:8080; backend {lab.backend_addr} is reachable only from staging; "
            "its DNS answers only inside staging"
        )
        outgoing(target)
        url = f"http://{lab.staging_addr}:8080/orders"
        mirror(target, url)
        steal(target, url)
        if keep:
            console.print(
                f"lab kept up: try `sudo python -m mirrord -t {target} your_app.py`; Ctrl-C ends it"
            )
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        with console.status("tearing the lab down"):
            lab.close()


def mirrord_command(target: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "mirrord", "-t", target, *args]


def outgoing(target: str) -> None:
    console.rule("1. outgoing traffic, DNS and environment come from staging")
    console.print(f"[bold]$[/] python -m mirrord -t {target} examples/fetch_backend.py")
    proc = subprocess.run(
        mirrord_command(target, str(EXAMPLES / "fetch_backend.py")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.strip().splitlines()
    for line in lines[:-1]:
        console.print(f"  [green]app>[/] {line}")
    if proc.returncode != 0 or not lines:
        console.print(proc.stderr)
        raise MirrordError(f"the example app failed (exit status {proc.returncode})")
    seen = json.loads(lines[-1])
    table = Table(title="what the app saw, running on this host under mirrord")
    table.add_column("check")
    table.add_column("result")
    table.add_column("why it proves it")
    table.add_row("remote DNS", seen["address"], "the name exists only in staging's DNS server")
    table.add_row(
        "outgoing TCP",
        f"client {seen['backend']['client']}",
        "the backend saw staging's address, not this host's",
    )
    table.add_row(
        "target's loopback", seen["sidecar"], "127.0.0.1:9090 listens only inside staging"
    )
    table.add_row(
        "environment", f"STAGING_GREETING={seen['greeting']}", "set only in the staging process"
    )
    Console().print(table)


@contextmanager
def local_server(target: str, *flags: str) -> Iterator[subprocess.Popen[str]]:
    """examples/local_server.py under mirrord, until the block ends."""
    proc = subprocess.Popen(
        mirrord_command(target, *flags, str(EXAMPLES / "local_server.py")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise MirrordError(
                f"the local server did not start: {proc.stderr.read() if proc.stderr else ''}"
            )
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def request(url: str, body: str, headers: dict[str, str] | None = None) -> str:
    req = urllib.request.Request(url, data=body.encode(), headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as reply:
        return str(reply.read().decode())


def app_lines(proc: subprocess.Popen[str], count: int) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 10
    while len(lines) < count and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
    return lines


def mirror(target: str, url: str) -> None:
    console.rule("2. mirror: the local app gets a copy of staging's incoming requests")
    console.print(f"[bold]$[/] python -m mirrord -t {target} examples/local_server.py")
    with local_server(target) as proc:
        for i in range(3):
            answer = request(url, f"order-{i}")
            console.print(f"  [cyan]a staging user>[/] POST {url} -> {answer!r} (staging answered)")
        for line in app_lines(proc, 3):
            console.print(f"  [green]local app got>[/] {line}")


def steal(target: str, url: str) -> None:
    console.rule("3. steal with a header filter: only your requests come to your laptop")
    console.print(
        f"[bold]$[/] python -m mirrord -t {target} -f examples/steal_header.json "
        "examples/local_server.py"
    )
    with local_server(target, "-f", str(EXAMPLES / "steal_header.json")):
        mine = request(url, "mine", {"x-mirrord-user": "me"})
        theirs = request(url, "theirs")
        console.print(f"  [cyan]you, with x-mirrord-user: me>[/] -> {mine!r}")
        console.print(f"  [cyan]a colleague, without it>[/] -> {theirs!r}")
