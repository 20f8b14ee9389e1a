"""`mirrord demo`: the local staging lab, an example app run in it, what the app saw."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mirrord.cli.errors import CliError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fetch_backend.py"


def run_demo(keep: bool = False) -> int:
    from mirrord.lab import LabError, create_lab

    console = Console(stderr=True)
    if os.geteuid() != 0:
        raise CliError("the demo builds network namespaces and needs root: run it with sudo")
    if not EXAMPLE.is_file():
        raise CliError(f"the example app is missing: {EXAMPLE}")
    try:
        with console.status("building the local staging lab (network namespaces, DNS, services)"):
            lab = create_lab()
    except LabError as exc:
        raise CliError(f"cannot build the lab: {exc}") from None
    try:
        target = f"netns/{lab.staging_ns}"
        console.print(
            f"[bold]lab up[/]: staging namespace [cyan]{lab.staging_ns}[/] ({lab.staging_addr}), "
            f"backend {lab.backend_addr} reachable only from staging, DNS only inside staging"
        )
        command = [sys.executable, "-m", "mirrord", "-t", target, str(EXAMPLE)]
        console.print(f"[bold]running[/]: python -m mirrord -t {target} {EXAMPLE.name}\n")
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        lines = proc.stdout.strip().splitlines()
        for line in lines[:-1]:
            console.print(f"  [green]app>[/] {line}")
        if proc.returncode != 0 or not lines:
            console.print(proc.stderr)
            raise CliError(f"the example app failed (exit status {proc.returncode})")
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
        if keep:
            console.print(
                f"lab kept up: try `sudo python -m mirrord -t {target} your_app.py`; Ctrl-C to end"
            )
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        with console.status("tearing the lab down"):
            lab.close()
