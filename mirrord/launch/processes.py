"""Starting the session's helper processes and waiting for their "ready" line."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any

from mirrord.errors import MirrordError


def last_lines(path: Path, count: int = 8) -> str:
    try:
        with path.open(errors="replace") as f:
            lines = deque((line.rstrip() for line in f if line.strip()), maxlen=count)
    except OSError:
        return ""
    return "\n".join(f"  | {line}" for line in lines)


def spawn(
    argv: list[str],
    env: dict[str, str],
    log: Path,
    pass_fds: tuple[int, ...] = (),
    stdin_pipe: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a detached helper whose stderr is its log (`pass_fds` stay open in it under
    the same numbers; `stdin_pipe`: we tell it more later, on its stdin)."""
    with log.open("ab") as log_file:
        return subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,  # Ctrl-C in the terminal is for the app, not for us
            pass_fds=pass_fds,
        )


def wait_ready(
    what: str, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> dict[str, Any]:
    """Wait for the helper's JSON ready line on stdout."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            proc.wait()
            raise MirrordError(f"the {what} did not start within {timeout:.0f}s\n{last_lines(log)}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                proc.wait()
                raise MirrordError(
                    f"the {what} failed to start (exit status {proc.returncode}); its log "
                    f"{log} ends with:\n{last_lines(log)}"
                )
            line += chunk
    proc.stdout.close()
    try:
        info = json.loads(line)
    except ValueError:
        proc.kill()
        raise MirrordError(f"the {what} said something unexpected: {line[:200]!r}") from None
    return dict(info)


def spawn_ready(
    what: str,
    argv: list[str],
    env: dict[str, str],
    log: Path,
    timeout: float,
    pass_fds: tuple[int, ...] = (),
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a detached helper and wait for its JSON ready line on stdout."""
    proc = spawn(argv, env, log, pass_fds)
    return proc, wait_ready(what, proc, log, timeout)


def stop(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM a helper of ours (the intproxy) and reap it; SIGKILL if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Is our child `pid` still running (reaping it if it is not)?"""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        return False
